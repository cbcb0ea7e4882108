"""SQLite's part: one writer, the host's clock, keys bound as one JSON array."""

from __future__ import annotations

import contextlib
import json
from typing import TYPE_CHECKING, Any

from sqlalchemy import Text, bindparam, func, select
from sqlalchemy.dialects import sqlite
from sqlalchemy.pool import StaticPool

from .._schema import UtcTimestamp
from .._urls import is_memory_url
from .base import Backend, RowSource

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from datetime import datetime

    from sqlalchemy import URL, ColumnElement, Table
    from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = ["SQLite"]


_SQLITE_LOCK_CODES = frozenset({5, 6})
"""SQLITE_BUSY, SQLITE_LOCKED: the primary codes of a lock held past the busy timeout (the
error carries the extended code, whose low byte is the primary one)."""


class SQLite(Backend):
    """SQLite through aiosqlite: one writer, the host's clock, keys bound as one JSON array."""

    one_writer = True
    loop_bound_connections = False
    host_clock = True
    transaction_isolation = "SERIALIZABLE"
    snapshot_isolation = "SERIALIZABLE"
    durability_settings = ("PRAGMA journal_mode", "PRAGMA synchronous")

    def __init__(self, url: URL) -> None:
        super().__init__(url)
        self.in_memory = is_memory_url(url)

    def engine_options(self, timeout: float) -> dict[str, Any]:
        if self.in_memory:
            return {"poolclass": StaticPool}
        # One writer at a time is all SQLite allows; the store queues operations itself.
        return {"pool_size": 1, "max_overflow": 0, "pool_timeout": timeout}

    def session_setup(self, timeout: float, synchronous: str) -> tuple[str, ...]:
        # Waits for another connection's write lock, then writes ahead to a log: readers do
        # not block the writer, and a commit is one fsync (FULL) or none (NORMAL).
        return (
            f"PRAGMA busy_timeout = {int(timeout * 1000)}",
            "PRAGMA journal_mode = WAL",
            f"PRAGMA synchronous = {synchronous}",
        )

    def rows(self) -> RowSource:
        rows = func.json_each(bindparam("rows", type_=Text)).table_valued("value").alias("v")

        def field(name: str) -> ColumnElement[Any]:
            return func.json_extract(rows.c.value, f"$.{name}")

        return RowSource(
            rows,
            field("key"),
            field("value"),
            field("updated_at"),
            field("lease_key"),
            field("mine"),
        )

    def _insert(self, table: Table) -> sqlite.Insert:
        return sqlite.insert(table)

    def server_now(self) -> ColumnElement[datetime]:
        return bindparam("now", type_=UtcTimestamp())

    def key_in(self, column: ColumnElement[str]) -> ColumnElement[bool]:
        # One parameter whatever the number of keys (SQLite allows 32,766 a statement).
        keys = func.json_each(bindparam("keys", type_=Text)).table_valued("value")
        return column.in_(select(keys.c.value))

    def keys_param(self, keys: list[str]) -> str:
        return json.dumps(keys)

    @contextlib.asynccontextmanager
    async def migration_lock(self, connection: AsyncConnection, wait: float) -> AsyncIterator[None]:
        # The file's write lock, taken before the first read: pysqlite opens no transaction
        # before DDL, so Alembic's reads and CREATEs would otherwise run unlocked.
        async with connection.begin():
            await connection.exec_driver_sql("BEGIN IMMEDIATE")
            yield

    def is_timeout(self, cause: BaseException) -> bool:
        code = getattr(cause, "sqlite_errorcode", None)
        return isinstance(code, int) and code & 0xFF in _SQLITE_LOCK_CODES
