"""PostgreSQL's part: rows from one JSON array, keys as one array, immediate cancellation."""

from __future__ import annotations

import contextlib
import hashlib
from typing import TYPE_CHECKING, Any
from uuid import uuid4

from sqlalchemy import DateTime, Text, any_, bindparam, cast, column, func, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.types import String

from .._hints import postgres_hint
from .base import MIGRATION_LOCK, Backend, RowSource, whole_seconds

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from datetime import datetime

    from sqlalchemy import URL, ColumnElement, Table
    from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = ["PostgreSQL"]


_POSTGRES_GOING_AWAY = frozenset({"57P01", "57P02", "57P03"})
"""admin_shutdown, crash_shutdown, cannot_connect_now (starting up or shutting down)."""


_POSTGRES_ABORTS = frozenset({"40001", "40P01"})
"""serialization_failure, deadlock_detected."""


class PostgreSQL(Backend):
    """PostgreSQL through asyncpg: cancellation is immediate, keys bound as one array."""

    finish_when_cancelled = False
    durability_settings = ("SHOW synchronous_commit", "SHOW fsync")

    def __init__(self, url: URL) -> None:
        super().__init__(url)
        self._hint = postgres_hint(url)

    def engine_options(self, timeout: float) -> dict[str, Any]:
        # timeout bounds the connection attempt, command_timeout every statement after it.
        connect_args: dict[str, Any] = {"timeout": timeout, "command_timeout": timeout}
        if self._url.query.get("prepared_statement_cache_size") == "0":
            # Behind PgBouncer's transaction pooling: statement names unique across clients
            # (SQLAlchemy's advice), since clients share server connections. PgBouncer refuses
            # startup parameters it does not know, so the server's own settings apply.
            connect_args["prepared_statement_name_func"] = _unique_statement_name
        else:
            # A client frozen inside a transaction (SIGSTOP, a partition) would hold its locks,
            # a lease row's share lock among them, for ever: the server ends such a session.
            idle = f"{whole_seconds(timeout) * 1000}"
            connect_args["server_settings"] = {"idle_in_transaction_session_timeout": idle}
        return {"pool_timeout": timeout, "connect_args": connect_args}

    def rows(self) -> RowSource:
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
        return RowSource(
            rows, c.key, cast(c.value, postgresql.JSON), c.updated_at, c.lease_key, c.mine
        )

    def _insert(self, table: Table) -> postgresql.Insert:
        return postgresql.insert(table)

    def time_text(self, when: datetime) -> str:
        return when.isoformat()

    def server_now(self) -> ColumnElement[datetime]:
        # clock_timestamp(), not now(): now() is the start of the transaction.
        return func.clock_timestamp()

    def json_text(self, column: ColumnElement[str]) -> ColumnElement[str]:
        # asyncpg would otherwise parse json with the engine's deserializer, not the strict codec.
        return cast(column, Text)

    def key_in(self, column: ColumnElement[str]) -> ColumnElement[bool]:
        # One array parameter, not one per key: the statement text stays the same for any
        # number of keys, so it is rendered and prepared once.
        return column == any_(bindparam("keys", type_=postgresql.ARRAY(String(255))))

    @contextlib.asynccontextmanager
    async def migration_lock(self, connection: AsyncConnection, wait: float) -> AsyncIterator[None]:
        async with super().migration_lock(connection, wait):
            await connection.execute(_PG_LOCK)
            yield

    def is_aborted(self, cause: BaseException) -> bool:
        return getattr(cause, "sqlstate", None) in _POSTGRES_ABORTS

    def is_read_only(self, cause: BaseException) -> bool:
        # read_only_sql_transaction: a standby, or a primary demoted by a failover.
        return getattr(cause, "sqlstate", None) == "25006"

    def is_unreachable(self, cause: BaseException) -> bool:
        # Connection exceptions (class 08), a server going down or not up yet, and asyncpg
        # finding no host of a multi-host URL read-write (a failover; it has no SQLSTATE).
        from asyncpg.exceptions import TargetServerAttributeNotMatched

        sqlstate = str(getattr(cause, "sqlstate", None) or "")
        return (
            sqlstate.startswith("08")
            or sqlstate in _POSTGRES_GOING_AWAY
            or isinstance(cause.__cause__, TargetServerAttributeNotMatched)
        )


def _unique_statement_name() -> str:
    return f"__rustrade_{uuid4().hex}__"


_PG_LOCK = text("SELECT pg_advisory_xact_lock(:key)").bindparams(
    key=int.from_bytes(hashlib.sha256(MIGRATION_LOCK.encode()).digest()[:8], "big", signed=True)
)
"""PostgreSQL's migration lock: advisory locks are per database; held to the end of the
migration's transaction, safe behind PgBouncer's transaction pooling, where a session's lock
could outlive it on a shared server connection."""
