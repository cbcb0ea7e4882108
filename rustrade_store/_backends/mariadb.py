"""MariaDB's part (``mysql://`` or ``mariadb://``, through asyncmy): values inlined into the
statement text, which must fit the server's packet; session settings for Galera."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Column,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    and_,
    func,
    literal_column,
    text,
)
from sqlalchemy.dialects import mysql

from .._errors import ConfigurationError
from .._hints import MYSQL_CONFLICTS, mysql_hint, mysql_timeout
from .._schema import VERSION_TABLE, UtcTimestamp
from .base import MIGRATION_LOCK, Backend, RowSource, whole_seconds

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from datetime import datetime

    from sqlalchemy import URL, ColumnElement, Connection, Select
    from sqlalchemy.engine import Dialect
    from sqlalchemy.ext.asyncio import AsyncConnection
    from sqlalchemy.sql.dml import Insert

__all__ = ["GALERA_SYNC_WAIT", "MYSQL_POOL_RECYCLE", "MYSQL_SQL_MODE", "MariaDB"]

MYSQL_SQL_MODE = "STRICT_ALL_TABLES,NO_ZERO_DATE,NO_ENGINE_SUBSTITUTION"
"""Strict: a value the column cannot hold is an error, never silently truncated or coerced."""

GALERA_SYNC_WAIT = 7
"""``wsrep_sync_wait`` of the store's MariaDB sessions: before a read (1), an UPDATE or DELETE
(2), an INSERT or REPLACE (4), a Galera node applies every write the cluster certified before
it, so that a load sees every save acknowledged through any node (see :mod:`.._galera`)."""

MYSQL_POOL_RECYCLE = 3600
"""Seconds before a pooled connection is replaced, well inside the server's wait_timeout."""


_MYSQL_KEY = "VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin"
_MYSQL_TEXT = "LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"


_GALERA_NOT_READY = frozenset({1047})
"""ER_UNKNOWN_COM_ERROR, what a Galera node outside the primary component (isolated, joining,
or not yet synced) answers every statement with ("WSREP has not yet prepared node for
application use")."""


class MariaDB(Backend):
    """MariaDB through asyncmy (``mysql://`` or ``mariadb://``): values inlined into the
    statement text, which must fit the server's packet."""

    may_be_galera = True
    # The driver inlines parameters into the statement text, which must fit the server's
    # max_allowed_packet (16 MiB by default): 10,000 keys of up to 1,020 bytes each (255
    # four-byte characters) stay near 10 MiB; values, escaped (quotes and backslashes count
    # twice), get 4 MiB a statement.
    max_keys_per_query = 10_000
    max_statement_bytes = 4 * 1024 * 1024
    durability_settings = (
        "SELECT @@innodb_flush_log_at_trx_commit",
        "SELECT @@sync_binlog",
    )

    def __init__(self, url: URL) -> None:
        super().__init__(url)
        self._hint = mysql_hint(url)

    def engine_options(self, timeout: float) -> dict[str, Any]:
        seconds = whole_seconds(timeout)
        return {
            "pool_timeout": timeout,
            "pool_recycle": MYSQL_POOL_RECYCLE,
            # Every operation is one statement, so no snapshot is needed; InnoDB takes no gap
            # locks under READ COMMITTED, which concurrent upserts could otherwise wait on.
            "isolation_level": "READ COMMITTED",
            "connect_args": {
                # connect_timeout bounds the connection attempt, read_timeout every answer
                # after it, innodb_lock_wait_timeout the wait for another session's row lock.
                "connect_timeout": timeout,
                "read_timeout": timeout,
                "charset": "utf8mb4",
                # DATETIME(6) holds UTC; the session zone keeps NOW() and friends in UTC too.
                "init_command": (
                    f"SET time_zone = '+00:00', sql_mode = '{MYSQL_SQL_MODE}', "
                    f"innodb_lock_wait_timeout = {seconds}"
                    # MariaDB only (MySQL skips /*M! */): end a session idle in a transaction,
                    # as on PostgreSQL; on a Galera node, wait for the writes the cluster has
                    # certified before each read and write (no effect elsewhere).
                    f" /*M!, idle_transaction_timeout = {seconds}"
                    f", wsrep_sync_wait = {GALERA_SYNC_WAIT} */"
                ),
            },
        }

    def check_server(self, dialect: Dialect, where: str) -> None:
        if not getattr(dialect, "is_mariadb", False):
            raise ConfigurationError(
                f"{where} is MySQL, not MariaDB: rustrade-store writes with INSERT ... "
                "RETURNING, which MySQL lacks; use MariaDB 10.6 or later"
            )

    def rows(self) -> RowSource:
        # MariaDB's JSON_TABLE has no SQLAlchemy construct; its columns take the table's
        # collations.
        rows = text(
            f"JSON_TABLE(:rows, '$[*]' COLUMNS (k {_MYSQL_KEY} PATH '$.key', "
            f"val {_MYSQL_TEXT} PATH '$.value', t DATETIME(6) PATH '$.updated_at', "
            f"lk {_MYSQL_KEY} PATH '$.lease_key', mine {_MYSQL_TEXT} PATH '$.mine')) AS v"
        )
        c = literal_column
        return RowSource(rows, c("v.k"), c("v.val"), c("v.t"), c("v.lk"), c("v.mine"))  # type: ignore[arg-type]

    def upsert(self, table: Table, rows: Select[Any], guard: ColumnElement[bool] | None) -> Insert:
        # Assignments run left to right, so updated_at goes last: both conditions must see the
        # stored time. VALUES(col) is the inserted row's value.
        stmt = mysql.insert(table).from_select(["key", "value", "updated_at"], rows)
        new = stmt.inserted
        applies = table.c.updated_at < new.updated_at
        if guard is not None:
            applies = and_(applies, guard)
        return stmt.on_duplicate_key_update(
            [
                ("value", func.if_(applies, new.value, table.c.value)),
                ("updated_at", func.if_(applies, new.updated_at, table.c.updated_at)),
            ]
        ).returning(table.c.key, table.c.updated_at)

    def insert_new(self, table: Table) -> Insert:
        # Not INSERT IGNORE, whose duplicate-key warning the driver prints: a no-op update,
        # after which RETURNING gives the row that stands (inserted if its time is the one sent).
        stmt = mysql.insert(table)
        return stmt.on_duplicate_key_update(updated_at=table.c.updated_at).returning(
            table.c.key, table.c.updated_at
        )

    def server_now(self) -> ColumnElement[datetime]:
        # UTC_TIMESTAMP(6), not NOW(): NOW() has no fraction and follows the session's zone.
        return literal_column("UTC_TIMESTAMP(6)", type_=UtcTimestamp())

    @contextlib.asynccontextmanager
    async def migration_lock(self, connection: AsyncConnection, wait: float) -> AsyncIterator[None]:
        # A lock of the session (DDL commits implicitly, so no transaction could hold one),
        # released before the connection returns to the pool; a connection whose release
        # failed is closed instead, which releases it too. Under the driver's read timeout
        # (the engine's own), so that a wait ends with GET_LOCK's 0.
        await self._lock_isolation(connection)
        seconds = max(wait - 1.0, wait / 2)
        taken = await connection.scalar(_MYSQL_LOCK, {"wait": seconds})
        await connection.commit()
        if taken != 1:
            raise TimeoutError(
                f"another process's migration of this database held its lock for {seconds:g} s"
            )
        try:
            async with connection.begin():
                yield
        finally:
            try:
                await connection.execute(_MYSQL_UNLOCK)
                await connection.commit()
            except BaseException:
                await connection.invalidate()
                raise

    def prepare_version_table(self, connection: Connection) -> None:
        # MariaDB ignores a primary key's name, and warns about the one Alembic gives its
        # version table (<table>_pkc) on every first upgrade: create that table first, as
        # Alembic would but with the key unnamed; Alembic then finds it and uses it.
        Table(
            VERSION_TABLE,
            MetaData(),
            Column("version_num", String(32), nullable=False),
            PrimaryKeyConstraint("version_num"),
        ).create(connection, checkfirst=True)

    def is_timeout(self, cause: BaseException) -> bool:
        return mysql_timeout(cause)

    def is_aborted(self, cause: BaseException) -> bool:
        return bool(cause.args) and cause.args[0] in MYSQL_CONFLICTS

    def is_read_only(self, cause: BaseException) -> bool:
        # ER_OPTION_PREVENTS_STATEMENT for --read-only; ER_READ_ONLY_MODE for a read-only engine.
        return bool(cause.args) and cause.args[0] in (1290, 1836)

    def is_unreachable(self, cause: BaseException) -> bool:
        # CR_CONNECTION_ERROR, CR_CONN_HOST_ERROR: no server there (a restart, a failover); or
        # a Galera node that cannot serve (see _GALERA_NOT_READY).
        code = cause.args[0] if cause.args else None
        return code in (2002, 2003) or code in _GALERA_NOT_READY


_MYSQL_LOCK_NAME = "CONCAT(:name, ' ', SHA1(COALESCE(DATABASE(), '')))"
"""MariaDB's migration lock, named after the database (GET_LOCK's names are server-wide)."""
_MYSQL_LOCK = text(f"SELECT GET_LOCK({_MYSQL_LOCK_NAME}, :wait)").bindparams(name=MIGRATION_LOCK)
"""1 taken, 0 timed out."""
_MYSQL_UNLOCK = text(f"SELECT RELEASE_LOCK({_MYSQL_LOCK_NAME})").bindparams(name=MIGRATION_LOCK)
