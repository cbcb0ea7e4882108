"""What differs between databases in the store's statements and errors, decided once per URL.

The upsert, how a list of keys is bound and matched, how the JSON column is read as text, and
what a driver's error means: :func:`facts_for` returns them as one :class:`DialectFacts`, and the
rest of the package uses what it gets.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    DateTime,
    Text,
    and_,
    any_,
    bindparam,
    cast,
    column,
    func,
    literal_column,
    select,
    text,
)
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.types import String

from .engine import MYSQL_BACKENDS, is_memory_url
from .schema import UtcTimestamp

if TYPE_CHECKING:
    from collections.abc import Callable

    from sqlalchemy import URL, ColumnElement, FromClause, Select, Table
    from sqlalchemy.sql.dml import Insert

__all__ = ["DialectFacts", "RowSource", "facts_for"]


@dataclass(frozen=True, slots=True)
class RowSource:
    """Rows to write, bound as one JSON array ``rows`` of objects with ``key``, ``value`` (the
    JSON text), ``updated_at`` (see :attr:`DialectFacts.time_text`), ``lease_key`` and ``mine``
    (the text of this store's lease on the key's prefix, or null), read as a table."""

    table: FromClause
    key: ColumnElement[Any]
    value: ColumnElement[Any]
    updated_at: ColumnElement[Any]
    lease_key: ColumnElement[Any]
    mine: ColumnElement[Any]


def _postgres_rows() -> RowSource:
    rows = (
        func.json_to_recordset(cast(bindparam("rows", type_=Text), postgresql.JSON))
        .table_valued(
            column("key", Text),
            column("value", Text),
            column("updated_at", DateTime(timezone=True)),
            column("lease_key", Text),
            column("mine", Text),
        )
        .render_derived(name="v", with_types=True)
    )
    c = rows.c
    return RowSource(rows, c.key, cast(c.value, postgresql.JSON), c.updated_at, c.lease_key, c.mine)


def _sqlite_rows() -> RowSource:
    rows = func.json_each(bindparam("rows", type_=Text)).table_valued("value").alias("v")

    def field(name: str) -> ColumnElement[Any]:
        return func.json_extract(rows.c.value, f"$.{name}")

    return RowSource(
        rows, field("key"), field("value"), field("updated_at"), field("lease_key"), field("mine")
    )


_MYSQL_KEY = "VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin"
_MYSQL_TEXT = "LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"


def _mysql_rows() -> RowSource:
    # MariaDB's JSON_TABLE has no SQLAlchemy construct; its columns take the table's collations.
    rows = text(
        f"JSON_TABLE(:rows, '$[*]' COLUMNS (k {_MYSQL_KEY} PATH '$.key', "
        f"val {_MYSQL_TEXT} PATH '$.value', t DATETIME(6) PATH '$.updated_at', "
        f"lk {_MYSQL_KEY} PATH '$.lease_key', mine {_MYSQL_TEXT} PATH '$.mine')) AS v"
    )
    c = literal_column
    return RowSource(rows, c("v.k"), c("v.val"), c("v.t"), c("v.lk"), c("v.mine"))  # type: ignore[arg-type]


def _on_conflict_upsert(
    insert: Callable[[Table], postgresql.Insert | sqlite.Insert],
) -> Callable[[Table, Select[Any], ColumnElement[bool] | None], Insert]:
    """PostgreSQL's and SQLite's ``ON CONFLICT``: the update applies only to an older row (and
    one that meets ``guard``), and RETURNING names the rows applied."""

    def upsert(table: Table, rows: Select[Any], guard: ColumnElement[bool] | None) -> Insert:
        stmt = insert(table).from_select(["key", "value", "updated_at"], rows)
        new = stmt.excluded
        applies = table.c.updated_at < new.updated_at
        return stmt.on_conflict_do_update(
            index_elements=[table.c.key],
            set_={"value": new.value, "updated_at": new.updated_at},
            where=applies if guard is None else and_(applies, guard),
        ).returning(table.c.key, table.c.updated_at)

    return upsert


def _mysql_upsert(table: Table, rows: Select[Any], guard: ColumnElement[bool] | None) -> Insert:
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


def _on_conflict_insert(
    insert: Callable[[Table], postgresql.Insert | sqlite.Insert],
) -> Callable[[Table], Insert]:
    def insert_new(table: Table) -> Insert:
        return insert(table).on_conflict_do_nothing().returning(table.c.key, table.c.updated_at)

    return insert_new


def _mysql_insert(table: Table) -> Insert:
    # Not INSERT IGNORE, whose duplicate-key warning the driver prints: a no-op update, after
    # which RETURNING gives the row that stands (inserted if its time is the one sent).
    stmt = mysql.insert(table)
    return stmt.on_duplicate_key_update(updated_at=table.c.updated_at).returning(
        table.c.key, table.c.updated_at
    )


def _iso_time(when: datetime) -> str:
    return when.isoformat()


def _utc_text_time(when: datetime) -> str:
    # The text SQLAlchemy stores on SQLite (the year in four digits), and MariaDB's DATETIME(6)
    # literal.
    return when.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def _no_hint(writing: bool, cause: BaseException) -> str:
    return ""


# ER_NET_PACKET_TOO_LARGE, WARN_ALLOWED_PACKET_OVERFLOWED, and what the client sees when the
# server drops a connection whose packet is too large: CR_SERVER_GONE_ERROR, CR_SERVER_LOST.
_MYSQL_PACKET_ERRORS = frozenset({1153, 1301, 2006, 2013})


def _mysql_hint(writing: bool, cause: BaseException) -> str:
    code = cause.args[0] if cause.args else None
    # asyncmy also reports a packet cut off by the server as a wrong sequence number.
    cut_off = "Packet sequence number wrong" in str(cause)
    if code in _MYSQL_CONFLICTS:
        return (
            "(a conflict with another write to the same rows, through another Galera node or "
            "in a deadlock: this attempt wrote nothing)"
        )
    if not writing or _mysql_timeout(cause) or (code not in _MYSQL_PACKET_ERRORS and not cut_off):
        return ""
    return (
        "(the server also closes the connection on a statement larger than its "
        "max_allowed_packet, 16 MiB by default; values travel as escaped JSON text, in which "
        "quotes and backslashes count twice: if this write is that large, raise "
        "max_allowed_packet on the server or save smaller values)"
    )


def _in_expanded_list(column: ColumnElement[str]) -> ColumnElement[bool]:
    return column.in_(bindparam("keys", expanding=True))


def _in_json_array(column: ColumnElement[str]) -> ColumnElement[bool]:
    # One parameter whatever the number of keys (SQLite allows 32,766 parameters a statement).
    keys = func.json_each(bindparam("keys", type_=Text)).table_valued("value")
    return column.in_(select(keys.c.value))


def _as_list(keys: list[str]) -> list[str]:
    return keys


def _as_json_array(keys: list[str]) -> str:
    return json.dumps(keys)


def _never(cause: BaseException) -> bool:
    return False


def _host_now() -> ColumnElement[datetime]:
    return bindparam("now", type_=UtcTimestamp())


def _postgres_now() -> ColumnElement[datetime]:
    # clock_timestamp(), not now(): now() is the start of the transaction.
    return func.clock_timestamp()


def _mysql_now() -> ColumnElement[datetime]:
    # UTC_TIMESTAMP(6), not NOW(): NOW() has no fraction and follows the session's time zone.
    return literal_column("UTC_TIMESTAMP(6)", type_=UtcTimestamp())


def _postgres_read_only(cause: BaseException) -> bool:
    # read_only_sql_transaction: a standby, or a primary demoted by a failover.
    return getattr(cause, "sqlstate", None) == "25006"


_POSTGRES_GOING_AWAY = frozenset({"57P01", "57P02", "57P03"})
"""admin_shutdown, crash_shutdown, cannot_connect_now (starting up or shutting down)."""


def _postgres_unreachable(cause: BaseException) -> bool:
    # Connection exceptions (class 08), a server going down or not up yet, and asyncpg finding
    # no host of a multi-host URL read-write (a failover under way; it has no SQLSTATE).
    sqlstate = str(getattr(cause, "sqlstate", None) or "")
    driver = type(cause.__cause__).__name__ if cause.__cause__ is not None else ""
    return (
        sqlstate.startswith("08")
        or sqlstate in _POSTGRES_GOING_AWAY
        or driver == "TargetServerAttributeNotMatched"
    )


_POSTGRES_ABORTS = frozenset({"40001", "40P01"})
"""serialization_failure, deadlock_detected."""


def _postgres_aborted(cause: BaseException) -> bool:
    return getattr(cause, "sqlstate", None) in _POSTGRES_ABORTS


def _mysql_aborted(cause: BaseException) -> bool:
    return bool(cause.args) and cause.args[0] in _MYSQL_CONFLICTS


def _mysql_read_only(cause: BaseException) -> bool:
    # ER_OPTION_PREVENTS_STATEMENT for --read-only; ER_READ_ONLY_MODE for a read-only engine.
    return bool(cause.args) and cause.args[0] in (1290, 1836)


def _mysql_timeout(cause: BaseException) -> bool:
    # asyncmy reports its read timeout as CR_SERVER_LOST with this text; 1205 is
    # ER_LOCK_WAIT_TIMEOUT, a row lock held longer than innodb_lock_wait_timeout.
    code = cause.args[0] if cause.args else None
    return (code == 2013 and "read timeout" in str(cause)) or code == 1205


def _mysql_unreachable(cause: BaseException) -> bool:
    # CR_CONNECTION_ERROR, CR_CONN_HOST_ERROR: no server there (a restart, a failover); or a
    # Galera node that cannot serve (see _GALERA_NOT_READY).
    code = cause.args[0] if cause.args else None
    return code in (2002, 2003) or code in _GALERA_NOT_READY


_MYSQL_CONFLICTS = frozenset({1213})
"""ER_LOCK_DEADLOCK: InnoDB chose this transaction as a deadlock's victim, or (on Galera) a write
through another node certified first; either way it was rolled back, nothing committed."""


_GALERA_NOT_READY = frozenset({1047})
"""ER_UNKNOWN_COM_ERROR, what a Galera node outside the primary component (isolated, joining,
or not yet synced) answers every statement with ("WSREP has not yet prepared node for
application use")."""


def _sqlite_timeout(cause: BaseException) -> bool:
    # Another process held the write lock past the busy timeout.
    return "database is locked" in str(cause)


def _in_array(column: ColumnElement[str]) -> ColumnElement[bool]:
    # One array parameter, not one parameter per key: the statement text stays the same for any
    # number of keys, so it is rendered and prepared once.
    return column == any_(bindparam("keys", type_=postgresql.ARRAY(String(255))))


def _as_is(column: ColumnElement[str]) -> ColumnElement[str]:
    return column


def _as_text(column: ColumnElement[str]) -> ColumnElement[str]:
    # asyncpg would otherwise parse json with the engine's deserializer, not the strict codec.
    return cast(column, Text)


@dataclass(frozen=True, slots=True)
class DialectFacts:
    """What the store needs to know about one database."""

    name: str
    one_writer: bool
    """Operations run one at a time on one connection (SQLite: one writer, and ``:memory:``
    lives on a single connection whose transactions must not interleave)."""
    in_memory: bool
    """The database lives and dies with its connection, so the store migrates it itself."""
    transaction_isolation: str
    """The isolation level of a transaction the store opens for a write of several rows."""
    snapshot_isolation: str
    """The isolation level of a read of several statements that must see one snapshot."""
    finish_when_cancelled: bool
    """A cancelled operation runs to its end before the cancellation is raised. SQLite:
    SQLAlchemy discards a connection cancelled mid-transaction, which loses an in-memory database
    and leaves aiosqlite's thread holding the write lock. MySQL: asyncmy leaves a connection
    cancelled mid-statement unusable ("Cancelled during execution") without flagging it dead.
    PostgreSQL's server aborts the transaction of a dropped connection itself, so there
    cancellation is immediate."""
    rows: Callable[[], RowSource]
    """The rows of a write, from one bound JSON array."""
    upsert: Callable[[Table, Select[Any], ColumnElement[bool] | None], Insert]
    """The conditional upsert of ``rows`` (a SELECT over :attr:`rows`): a row applies over a
    stored one only if older (and ``guard``, a condition on the stored row, holds); RETURNING
    gives key and final time of each row applied."""
    insert_new: Callable[[Table], Insert]
    """Insert a row unless its key exists; RETURNING gives key and time of the row inserted (or,
    on MariaDB, of the row that stands: inserted if its time is the one sent)."""
    time_text: Callable[[datetime], str]
    """A time as :attr:`rows` takes it."""
    server_now: Callable[[], ColumnElement[datetime]]
    """The database server's clock (SQLite has none: the host's, bound as ``now``)."""
    host_clock: bool
    """Whether :attr:`server_now` is the host's clock, bound as ``now``."""
    json_text: Callable[[ColumnElement[str]], ColumnElement[str]]
    key_in: Callable[[ColumnElement[str]], ColumnElement[bool]]
    """``column`` is one of the list bound as ``keys`` (see :attr:`keys_param`)."""
    max_statement_bytes: int | None
    """The most JSON text one write statement may carry (one row at least; the statement must
    fit the server's packet), or ``None`` for no limit."""
    max_keys_per_query: int | None
    """The most keys one query may name (the statement must fit the server's packet), or
    ``None`` for no limit."""
    keys_param: Callable[[list[str]], Any]
    """The value to bind as ``keys`` for :attr:`key_in`."""
    failure_hint: Callable[[bool, BaseException], str] = _no_hint
    """What to add to the message of a failed operation (writing or not), given the driver's
    error: what the database's own message leaves out."""
    is_timeout: Callable[[BaseException], bool] = _never
    """Whether the driver's error is a timeout (of a read, of a lock wait) that it does not
    raise as :class:`TimeoutError`: not retried, and worded as a timeout."""
    is_unreachable: Callable[[BaseException], bool] = _never
    """Whether the driver's error says no server is there to take the call (refused, going
    down, not yet promoted): a lost connection, retried until the deadline."""
    is_aborted: Callable[[BaseException], bool] = _never
    """Whether the driver's error says the database rolled the transaction back to resolve a
    conflict (a deadlock, a serialisation or certification failure): nothing of it took effect,
    and it is retried until the deadline."""
    is_read_only: Callable[[BaseException], bool] = _never
    """Whether the driver's error says the server takes no writes (a standby): the store then
    treats the connection as lost, so that it and the rest of the pool are replaced."""


def facts_for(url: URL) -> DialectFacts:
    """Return the facts for the database ``url`` names, or raise for an unsupported one."""
    backend = url.get_backend_name()
    if backend == "sqlite":
        return DialectFacts(
            name="sqlite",
            one_writer=True,
            in_memory=is_memory_url(url),
            transaction_isolation="SERIALIZABLE",
            snapshot_isolation="SERIALIZABLE",
            finish_when_cancelled=True,
            is_timeout=_sqlite_timeout,
            rows=_sqlite_rows,
            upsert=_on_conflict_upsert(sqlite.insert),
            insert_new=_on_conflict_insert(sqlite.insert),
            time_text=_utc_text_time,
            server_now=_host_now,
            host_clock=True,
            json_text=_as_is,
            key_in=_in_json_array,
            max_keys_per_query=None,
            max_statement_bytes=None,
            keys_param=_as_json_array,
        )
    if backend == "postgresql":
        return DialectFacts(
            name="postgresql",
            one_writer=False,
            in_memory=False,
            transaction_isolation="READ COMMITTED",
            snapshot_isolation="REPEATABLE READ",
            finish_when_cancelled=False,
            rows=_postgres_rows,
            upsert=_on_conflict_upsert(postgresql.insert),
            insert_new=_on_conflict_insert(postgresql.insert),
            time_text=_iso_time,
            server_now=_postgres_now,
            host_clock=False,
            json_text=_as_text,
            key_in=_in_array,
            max_keys_per_query=None,
            max_statement_bytes=None,
            keys_param=_as_list,
            is_aborted=_postgres_aborted,
            is_read_only=_postgres_read_only,
            is_unreachable=_postgres_unreachable,
        )
    if backend in MYSQL_BACKENDS:
        return DialectFacts(
            name=backend,
            one_writer=False,
            in_memory=False,
            transaction_isolation="READ COMMITTED",
            snapshot_isolation="REPEATABLE READ",
            finish_when_cancelled=True,
            rows=_mysql_rows,
            upsert=_mysql_upsert,
            insert_new=_mysql_insert,
            time_text=_utc_text_time,
            server_now=_mysql_now,
            host_clock=False,
            json_text=_as_is,
            key_in=_in_expanded_list,
            # The driver inlines parameters into the statement text, which must fit the
            # server's max_allowed_packet (16 MiB by default): 10,000 keys of up to 1,020
            # bytes each (255 four-byte characters) stay near 10 MiB.
            max_keys_per_query=10_000,
            # asyncmy inlines the values, escaped (quotes and backslashes count twice), into
            # text that must fit max_allowed_packet, 16 MiB by default.
            max_statement_bytes=4 * 1024 * 1024,
            keys_param=_as_list,
            failure_hint=_mysql_hint,
            is_timeout=_mysql_timeout,
            is_unreachable=_mysql_unreachable,
            is_aborted=_mysql_aborted,
            is_read_only=_mysql_read_only,
        )
    raise ValueError(f"unsupported database {backend!r}: use sqlite://, postgresql:// or mysql://")
