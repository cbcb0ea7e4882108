"""Everything that differs between databases, decided once, in this one place.

The rest of the package is dialect-free: it asks :func:`facts_for` and uses what it gets.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from uuid import uuid4

from sqlalchemy import Text, cast, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.pool import StaticPool
from sqlalchemy.types import DateTime, String, TypeDecorator

if TYPE_CHECKING:
    from collections.abc import Callable

    from sqlalchemy import URL, ColumnElement, Table
    from sqlalchemy.engine import Dialect
    from sqlalchemy.ext.asyncio import AsyncEngine
    from sqlalchemy.sql.dml import Insert
    from sqlalchemy.types import TypeEngine

__all__ = [
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
]

SQLITE_SYNCHRONOUS = "FULL"
"""The default: in WAL mode, a commit that returned survives a power cut or an OS crash."""
SQLITE_SYNCHRONOUS_MODES = ("FULL", "NORMAL")
"""``NORMAL`` skips the fsync at each commit: still safe against a process crash, but the last
commits before a power cut or an OS crash can be lost (the database stays consistent)."""


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
    """

    impl = Text
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return _PostgresJsonText()
        return dialect.type_descriptor(Text())


class SnapshotKey(TypeDecorator[str]):
    """``VARCHAR(255)`` compared code point by code point, so key order is the same everywhere."""

    impl = String(255)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(String(255, collation="C"))
        return dialect.type_descriptor(String(255))


class UtcTimestamp(TypeDecorator[datetime]):
    """A UTC timestamp with microseconds; databases that store it without a zone store UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"timestamp {value.isoformat()} has no time zone")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def _sqlite_upsert(table: Table) -> Insert:
    stmt = sqlite.insert(table)
    return stmt.on_conflict_do_update(
        index_elements=[table.c.key],
        set_={"value": stmt.excluded.value, "updated_at": stmt.excluded.updated_at},
    )


def _postgres_upsert(table: Table) -> Insert:
    stmt = postgresql.insert(table)
    return stmt.on_conflict_do_update(
        index_elements=[table.c.key],
        set_={"value": stmt.excluded.value, "updated_at": stmt.excluded.updated_at},
    )


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
    finish_when_cancelled: bool
    """A cancelled operation runs to its end before the cancellation is raised: SQLAlchemy
    discards a connection cancelled mid-transaction, which loses an in-memory database and
    leaves aiosqlite's thread holding the write lock. PostgreSQL's server aborts the
    transaction of a dropped connection itself, so there cancellation is immediate."""
    upsert: Callable[[Table], Insert]
    json_text: Callable[[ColumnElement[str]], ColumnElement[str]]
    max_bind_params: int


def facts_for(url: URL) -> DialectFacts:
    """Return the facts for the database ``url`` names, or raise for an unsupported one."""
    backend = url.get_backend_name()
    if backend == "sqlite":
        return DialectFacts(
            name="sqlite",
            one_writer=True,
            in_memory=is_memory_url(url),
            finish_when_cancelled=True,
            upsert=_sqlite_upsert,
            json_text=_as_is,
            max_bind_params=32_766,
        )
    if backend == "postgresql":
        return DialectFacts(
            name="postgresql",
            one_writer=False,
            in_memory=False,
            finish_when_cancelled=False,
            upsert=_postgres_upsert,
            json_text=_as_text,
            max_bind_params=32_767,
        )
    raise ValueError(f"unsupported database {backend!r}: use sqlite:// or postgresql://")


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
    return {}


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
