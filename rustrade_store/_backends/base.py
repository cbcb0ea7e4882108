"""The base of the per-backend classes: what most databases share, and the rows of a write."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy import and_, bindparam

from .._hints import no_hint

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from sqlalchemy import URL, ColumnElement, Connection, FromClause, Select, Table
    from sqlalchemy.dialects import postgresql, sqlite
    from sqlalchemy.engine import Dialect
    from sqlalchemy.ext.asyncio import AsyncConnection
    from sqlalchemy.sql.dml import Insert

    from .._hints import FailureHint

__all__ = ["MIGRATION_LOCK", "Backend", "RowSource", "whole_seconds"]

MIGRATION_LOCK = "rustrade_store migrations"
"""The name of the lock migrations of one database take in turn."""


def whole_seconds(timeout: float) -> int:
    """``timeout`` for a server setting in whole seconds: rounded up, one at least."""
    return max(1, math.ceil(timeout))


@dataclass(frozen=True, slots=True)
class RowSource:
    """Rows to write, bound as one JSON array ``rows`` of objects with ``key``, ``value`` (the
    JSON text), ``updated_at`` (see :meth:`Backend.time_text`), ``lease_key`` and ``mine``
    (the text of this store's lease on the key's prefix, or null), read as a table."""

    table: FromClause
    key: ColumnElement[Any]
    value: ColumnElement[Any]
    updated_at: ColumnElement[Any]
    lease_key: ColumnElement[Any]
    mine: ColumnElement[Any]


class Backend:
    """What the store needs to know about one kind of database: capability flags, the engine's
    options, the statements and clock that differ, and what a driver's error means. The base
    class holds what most share; each subclass says what is its own."""

    one_writer: ClassVar[bool] = False
    """Operations run one at a time on one connection (SQLite: one writer, and ``:memory:``
    lives on a single connection whose transactions must not interleave)."""
    loop_bound_connections: ClassVar[bool] = True
    """A connection belongs to the event loop that opened it (its transport); aiosqlite's, run
    by a thread of its own, serve any loop."""
    finish_when_cancelled: ClassVar[bool] = True
    """A cancelled operation runs to its end before the cancellation is raised. SQLite:
    SQLAlchemy discards a connection cancelled mid-transaction, which loses an in-memory database
    and leaves aiosqlite's thread holding the write lock. MariaDB: asyncmy leaves a connection
    cancelled mid-statement unusable ("Cancelled during execution") without flagging it dead.
    PostgreSQL's server aborts the transaction of a dropped connection itself, so there
    cancellation is immediate."""
    host_clock: ClassVar[bool] = False
    """Whether :meth:`server_now` is the host's clock, bound as ``now``."""
    transaction_isolation: ClassVar[str] = "READ COMMITTED"
    """The isolation level of a transaction the store opens for a write of several rows."""
    snapshot_isolation: ClassVar[str] = "REPEATABLE READ"
    """The isolation level of a read of several statements that must see one snapshot."""
    max_statement_bytes: ClassVar[int | None] = None
    """The most JSON text one write statement may carry (one row at least; the statement must
    fit the server's packet), or ``None`` for no limit."""
    max_keys_per_query: ClassVar[int | None] = None
    """The most keys one query may name, or ``None`` for no limit."""
    may_be_galera: ClassVar[bool] = False
    """A server may be a node of a Galera cluster, where leases are refused (see
    :data:`~rustrade_store._galera.LEASE_RULE`)."""
    durability_settings: ClassVar[tuple[str, ...]] = ()
    """The statements reading the durability settings, for ``doctor``."""

    def __init__(self, url: URL) -> None:
        self.in_memory = False
        """The database lives and dies with its connection, so the store migrates it itself."""
        self._url = url
        self._hint: FailureHint = no_hint

    # -- the engine ------------------------------------------------------------------------

    def engine_options(self, timeout: float) -> dict[str, Any]:
        """Pool and driver settings for an engine the store creates."""
        return {"pool_timeout": timeout}

    def session_setup(self, timeout: float, synchronous: str) -> tuple[str, ...]:
        """Statements each new connection of an engine the store owns runs first (settings a
        URL or the driver's arguments cannot carry), given the store's timeout and SQLite's
        ``synchronous`` mode."""
        return ()

    def check_server(self, dialect: Dialect, where: str) -> None:
        """Raise :class:`~rustrade_store.ConfigurationError` for a server the store cannot use,
        as SQLAlchemy's ``dialect`` found it on connecting."""

    # -- statements that differ --------------------------------------------------------------

    def rows(self) -> RowSource:
        """The rows of a write, from one bound JSON array."""
        raise NotImplementedError

    def upsert(self, table: Table, rows: Select[Any], guard: ColumnElement[bool] | None) -> Insert:
        """The conditional upsert of ``rows`` (a SELECT over :meth:`rows`): a row applies over a
        stored one only if older (and ``guard``, a condition on the stored row, holds);
        RETURNING gives key and final time of each row applied."""
        stmt = self._insert(table).from_select(["key", "value", "updated_at"], rows)
        new = stmt.excluded
        applies = table.c.updated_at < new.updated_at
        return stmt.on_conflict_do_update(
            index_elements=[table.c.key],
            set_={"value": new.value, "updated_at": new.updated_at},
            where=applies if guard is None else and_(applies, guard),
        ).returning(table.c.key, table.c.updated_at)

    def insert_new(self, table: Table) -> Insert:
        """Insert a row unless its key exists; RETURNING gives key and time of the row inserted
        (or, on MariaDB, of the row that stands: inserted if its time is the one sent)."""
        stmt = self._insert(table).on_conflict_do_nothing()
        return stmt.returning(table.c.key, table.c.updated_at)

    def _insert(self, table: Table) -> postgresql.Insert | sqlite.Insert:
        raise NotImplementedError

    def time_text(self, when: datetime) -> str:
        """A time as :meth:`rows` takes it: SQLite's stored text (the year in four digits), and
        MariaDB's DATETIME(6) literal."""
        return when.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")

    def server_now(self) -> ColumnElement[datetime]:
        """The database server's clock (SQLite has none: the host's, bound as ``now``)."""
        raise NotImplementedError

    def json_text(self, column: ColumnElement[str]) -> ColumnElement[str]:
        """The JSON column read as its text."""
        return column

    def key_in(self, column: ColumnElement[str]) -> ColumnElement[bool]:
        """``column`` is one of the list bound as ``keys`` (see :meth:`keys_param`)."""
        return column.in_(bindparam("keys", expanding=True))

    def keys_param(self, keys: list[str]) -> Any:
        """The value to bind as ``keys`` for :meth:`key_in`."""
        return keys

    @contextlib.asynccontextmanager
    async def migration_lock(self, connection: AsyncConnection, wait: float) -> AsyncIterator[None]:
        """A transaction on ``connection`` holding the database's migration lock, waited for up
        to ``wait`` seconds, so that migrations by any number of processes run in turn."""
        await self._lock_isolation(connection)
        async with connection.begin():
            yield

    async def _lock_isolation(self, connection: AsyncConnection) -> None:
        # A lock statement's snapshot must not predate its wait (REPEATABLE READ), and a
        # transaction lock needs a transaction (an autocommit engine has none).
        await connection.execution_options(isolation_level="READ COMMITTED")

    def prepare_version_table(self, connection: Connection) -> None:
        """Run before Alembic's migrations, in their transaction: what the version table needs
        beyond what Alembic makes of it."""

    # -- what a driver's error means ---------------------------------------------------------

    def failure_hint(self, writing: bool, cause: BaseException, written: int | None = None) -> str:
        """What to add to the message of a failed operation, given the driver's error: what the
        database's own message leaves out (what kind of connection failure, what to check, the
        statement creating a missing database)."""
        return self._hint(writing, cause, written)

    def is_timeout(self, cause: BaseException) -> bool:
        """Whether the driver's error is a timeout (of a read, of a lock wait) that it does not
        raise as :class:`TimeoutError`: not retried, and worded as a timeout."""
        return False

    def is_unreachable(self, cause: BaseException) -> bool:
        """Whether the driver's error says no server is there to take the call (refused, going
        down, not yet promoted): a lost connection, retried until the deadline."""
        return False

    def is_aborted(self, cause: BaseException) -> bool:
        """Whether the driver's error says the database rolled the transaction back to resolve a
        conflict (a deadlock, a serialisation or certification failure): nothing of it took
        effect, and it is retried until the deadline."""
        return False

    def is_read_only(self, cause: BaseException) -> bool:
        """Whether the driver's error says the server takes no writes (a standby): the store
        then treats the connection as lost, so that it and the rest of the pool are replaced."""
        return False
