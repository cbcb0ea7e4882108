"""Everything that differs between databases, decided once, in this one place.

The rest of the package is dialect-free: it asks :func:`facts_for` and uses what it gets.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from uuid import uuid4

from sqlalchemy import Text, any_, bindparam, cast, event, func, select
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.pool import StaticPool
from sqlalchemy.types import DateTime, String, TypeDecorator

if TYPE_CHECKING:
    from collections.abc import Callable

    from sqlalchemy import URL, ColumnElement, Connection, Table
    from sqlalchemy.engine import Dialect
    from sqlalchemy.ext.asyncio import AsyncEngine
    from sqlalchemy.schema import SchemaItem
    from sqlalchemy.sql.compiler import DDLCompiler
    from sqlalchemy.sql.ddl import BaseDDLElement
    from sqlalchemy.sql.dml import Insert
    from sqlalchemy.types import TypeEngine

__all__ = [
    "JSON_CHECK_DIALECTS",
    "MYSQL_BACKENDS",
    "SQLITE_SYNCHRONOUS",
    "SQLITE_SYNCHRONOUS_MODES",
    "DialectFacts",
    "JsonDocument",
    "SnapshotKey",
    "UtcTimestamp",
    "check_synchronous",
    "engine_options",
    "facts_for",
    "install_connection_setup",
    "is_memory_url",
    "json_check_applies",
    "read_settings",
    "store_engine_options",
]

SQLITE_SYNCHRONOUS = "FULL"
"""The default: in WAL mode, a commit that returned survives a power cut or an OS crash."""
SQLITE_SYNCHRONOUS_MODES = ("FULL", "NORMAL")
"""``NORMAL`` skips the fsync at each commit: still safe against a process crash, but the last
commits before a power cut or an OS crash can be lost (the database stays consistent)."""

MYSQL_BACKENDS = frozenset({"mysql", "mariadb"})
"""Backend names of the MySQL family; SQLAlchemy calls MariaDB either, by the URL used."""

JSON_CHECK_DIALECTS = ("sqlite", "mysql", "mariadb")
"""Where the value column is text that a ``CHECK (json_valid(value))`` keeps JSON."""


def json_check_applies(
    ddl: BaseDDLElement,
    target: SchemaItem | str,
    bind: Connection | None,
    tables: list[Table] | None = None,
    state: Any | None = None,
    *,
    dialect: Dialect,
    compiler: DDLCompiler | None = None,
    checkfirst: bool = False,
) -> bool:
    """``ddl_if`` condition: whether the value column's JSON check belongs in the DDL."""
    return dialect.name in JSON_CHECK_DIALECTS


MYSQL_SQL_MODE = "STRICT_ALL_TABLES,NO_ZERO_DATE,NO_ENGINE_SUBSTITUTION"
"""Strict: a value the column cannot hold is an error, never silently truncated or coerced."""

MYSQL_POOL_RECYCLE = 3600
"""Seconds before a pooled connection is replaced, well inside the server's wait_timeout."""


def _mysql_key_collation(dialect: Dialect) -> str:
    # Binary and NO PAD: 'a' and 'a ' are two keys, and order is code point order.
    # MariaDB 10.10+ has utf8mb4_nopad_bin; in MySQL 8 every utf8mb4_0900 collation is NO PAD.
    return "utf8mb4_nopad_bin" if getattr(dialect, "is_mariadb", False) else "utf8mb4_0900_bin"


_SETTINGS = {
    "sqlite": ("PRAGMA journal_mode", "PRAGMA synchronous"),
    "postgresql": ("SHOW synchronous_commit", "SHOW fsync"),
    "mysql": ("SELECT @@innodb_flush_log_at_trx_commit", "SELECT @@sync_binlog"),
    "mariadb": ("SELECT @@innodb_flush_log_at_trx_commit", "SELECT @@sync_binlog"),
}
"""The statements reading each database's durability settings, for ``doctor``."""
_SQLITE_SYNCHRONOUS_NAMES = {"0": "OFF", "1": "NORMAL", "2": "FULL", "3": "EXTRA"}


class _PostgresJsonText(postgresql.JSON):
    """PostgreSQL ``json`` moved as text: rendered and bind-cast as JSON, with no Python codec."""

    render_bind_cast = True

    def bind_processor(self, dialect: Dialect) -> None:
        return None

    def result_processor(self, dialect: Dialect, coltype: object) -> None:
        return None


class JsonDocument(TypeDecorator[str]):
    """The exact text of a JSON document; the codec, not the driver, encodes and decodes it.

    PostgreSQL: ``json``, which keeps the text as written (``jsonb`` rejects ``\\u0000`` and
    prints ``1e300`` back as a 301-digit integer). SQLite: ``TEXT`` with a ``json_valid`` check,
    since a column declared ``JSON`` gets numeric affinity and turns the text ``1.0`` into 1.
    MySQL and MariaDB: ``LONGTEXT`` in utf8mb4 with a ``json_valid`` check, which is what
    MariaDB's ``JSON`` is (MySQL's own ``JSON`` sorts object keys and rewrites numbers).
    """

    impl = Text
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return _PostgresJsonText()
        if dialect.name in MYSQL_BACKENDS:
            return dialect.type_descriptor(
                mysql.LONGTEXT(charset="utf8mb4", collation="utf8mb4_bin")
            )
        return dialect.type_descriptor(Text())


class SnapshotKey(TypeDecorator[str]):
    """``VARCHAR(255)`` compared code point by code point, so key order is the same everywhere."""

    impl = String(255)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(String(255, collation="C"))
        if dialect.name in MYSQL_BACKENDS:
            collation = _mysql_key_collation(dialect)
            return dialect.type_descriptor(
                mysql.VARCHAR(255, charset="utf8mb4", collation=collation)
            )
        return dialect.type_descriptor(String(255))


class UtcTimestamp(TypeDecorator[datetime]):
    """A UTC timestamp with microseconds; databases that store it without a zone store UTC.

    MySQL and MariaDB: ``DATETIME(6)``, written as naive UTC (``DATETIME`` has no zone and
    ``TIMESTAMP`` ends in 2038).
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in MYSQL_BACKENDS:
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"timestamp {value.isoformat()} has no time zone")
        utc = value.astimezone(UTC)
        return utc.replace(tzinfo=None) if dialect.name in MYSQL_BACKENDS else utc

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def _on_conflict_upsert(
    insert: Callable[[Table], postgresql.Insert | sqlite.Insert],
) -> Callable[[Table], Insert]:
    """PostgreSQL's and SQLite's ``ON CONFLICT``: the update applies only to an older row, and
    RETURNING names the rows applied."""

    def upsert(table: Table) -> Insert:
        stmt = insert(table)
        new = stmt.excluded
        return stmt.on_conflict_do_update(
            index_elements=[table.c.key],
            set_={"value": new.value, "updated_at": new.updated_at},
            where=table.c.updated_at < new.updated_at,
        ).returning(table.c.key, table.c.updated_at)

    return upsert


def _mysql_upsert(table: Table) -> Insert:
    # Assignments run left to right, so updated_at goes last: the value's condition must see
    # the stored time. VALUES(col) is the inserted row's value; RETURNING gives the final row
    # of every input, applied when its time is the one sent.
    stmt = mysql.insert(table)
    new = stmt.inserted
    newer = table.c.updated_at < new.updated_at
    return stmt.on_duplicate_key_update(
        [
            ("value", func.if_(newer, new.value, table.c.value)),
            ("updated_at", func.greatest(table.c.updated_at, new.updated_at)),
        ]
    ).returning(table.c.key, table.c.updated_at)


def _no_hint(writing: bool, cause: BaseException) -> str:
    return ""


# ER_NET_PACKET_TOO_LARGE, WARN_ALLOWED_PACKET_OVERFLOWED, and what the client sees when the
# server drops a connection whose packet is too large: CR_SERVER_GONE_ERROR, CR_SERVER_LOST.
_MYSQL_PACKET_ERRORS = frozenset({1153, 1301, 2006, 2013})


def _mysql_hint(writing: bool, cause: BaseException) -> str:
    code = cause.args[0] if cause.args else None
    if not writing or code not in _MYSQL_PACKET_ERRORS or _mysql_read_timeout(cause):
        return ""
    return (
        " (the server also closes the connection on a statement larger than its "
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


def _mysql_read_timeout(cause: BaseException) -> bool:
    # asyncmy reports its read timeout as CR_SERVER_LOST with this text.
    return bool(cause.args) and cause.args[0] == 2013 and "read timeout" in str(cause)


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
    upsert: Callable[[Table], Insert]
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
    """Whether the driver's error is a timeout it reports as a lost connection."""


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
            upsert=_on_conflict_upsert(sqlite.insert),
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
            upsert=_on_conflict_upsert(postgresql.insert),
            json_text=_as_text,
            key_in=_in_array,
            max_keys_per_query=None,
            max_statement_bytes=None,
            keys_param=_as_list,
        )
    if backend in MYSQL_BACKENDS:
        return DialectFacts(
            name=backend,
            one_writer=False,
            in_memory=False,
            transaction_isolation="READ COMMITTED",
            snapshot_isolation="REPEATABLE READ",
            finish_when_cancelled=True,
            upsert=_mysql_upsert,
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
            is_timeout=_mysql_read_timeout,
        )
    raise ValueError(f"unsupported database {backend!r}: use sqlite://, postgresql:// or mysql://")


def is_memory_url(url: URL) -> bool:
    """True for an SQLite URL whose database exists only in memory."""
    database = url.database or ""
    return database in ("", ":memory:") or url.query.get("mode") == "memory"


def engine_options(url: URL, timeout: float) -> dict[str, Any]:
    """Pool and driver settings for an engine the store creates for ``url``."""
    backend = url.get_backend_name()
    if backend == "sqlite":
        if is_memory_url(url):
            return {"poolclass": StaticPool}
        # One writer at a time is all SQLite allows; the store queues operations itself.
        return {"pool_size": 1, "max_overflow": 0, "pool_timeout": timeout}
    if backend == "postgresql":
        # timeout bounds the connection attempt, command_timeout every statement after it.
        connect_args: dict[str, Any] = {"timeout": timeout, "command_timeout": timeout}
        if url.query.get("prepared_statement_cache_size") == "0":
            # Behind PgBouncer's transaction pooling: statement names unique across clients
            # (SQLAlchemy's advice), since clients share server connections.
            connect_args["prepared_statement_name_func"] = _unique_statement_name
        return {"pool_timeout": timeout, "connect_args": connect_args}
    if backend in MYSQL_BACKENDS:
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
                    f"innodb_lock_wait_timeout = {max(1, math.ceil(timeout))}"
                ),
            },
        }
    return {}


def store_engine_options(url: URL) -> dict[str, Any]:
    """Settings for an engine only the store uses (not for migrations, which need transactions).

    Connections autocommit: a single statement is its own transaction, durable when it returns,
    with no BEGIN and COMMIT round trips (PostgreSQL) or commit hand-off (aiosqlite); and since
    every operation then ends its transaction, the pool's rollback on return is skipped while a
    connection is in autocommit. Operations of several statements switch their connection to
    :attr:`DialectFacts.transaction_isolation` for one transaction.

    Not behind PgBouncer's transaction pooling (``prepared_statement_cache_size=0``): there a
    statement prepared outside a transaction can land on one server connection and run on
    another, so every operation keeps its transaction.
    """
    if url.query.get("prepared_statement_cache_size") == "0":
        return {}
    return {"isolation_level": "AUTOCOMMIT", "skip_autocommit_rollback": True}


def _unique_statement_name() -> str:
    return f"__rustrade_{uuid4().hex}__"


def check_synchronous(mode: str) -> str:
    """Return the SQLite ``synchronous`` mode to use, or raise naming the one refused."""
    upper = mode.upper() if isinstance(mode, str) else mode
    if upper not in SQLITE_SYNCHRONOUS_MODES:
        raise ValueError(
            f"sqlite_synchronous={mode!r} is not supported: use one of {SQLITE_SYNCHRONOUS_MODES}"
        )
    return upper


def install_connection_setup(
    engine: AsyncEngine, timeout: float, synchronous: str = SQLITE_SYNCHRONOUS
) -> None:
    """Apply the durability settings to every new connection of an engine the store owns."""
    synchronous = check_synchronous(synchronous)
    if engine.dialect.name != "sqlite":
        return
    busy_ms = int(timeout * 1000)

    @event.listens_for(engine.sync_engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute(f"PRAGMA synchronous = {synchronous}")
        cursor.close()


def read_settings(connection: Connection) -> list[tuple[str, str]]:
    """The durability settings a connection runs with, as (name, value), for ``doctor``.

    SQLite: ``journal_mode`` and ``synchronous``; PostgreSQL: ``synchronous_commit`` and
    ``fsync``; MySQL and MariaDB: ``innodb_flush_log_at_trx_commit`` and ``sync_binlog``. Read
    on a connection of an engine the store made, they are what the store uses.
    """
    name = connection.dialect.name
    found = []
    for statement in _SETTINGS.get(name, ()):
        setting = statement.split()[-1].removeprefix("@@")
        value = str(connection.exec_driver_sql(statement).scalar())
        if statement == "PRAGMA synchronous":
            value = _SQLITE_SYNCHRONOUS_NAMES.get(value, value)
        found.append((setting, value))
    return found
