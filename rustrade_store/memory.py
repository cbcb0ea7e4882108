"""The non-durable store: SQLite ``:memory:`` through the same code path as every other."""

from __future__ import annotations

from .engine import create_engine, resolve_url, store_engine_options
from .sql import SqlStore

__all__ = ["InMemoryStore"]


class InMemoryStore(SqlStore):
    """A store that lives as long as the instance: for tests and as an explicit default.

    It is the SQL store over one private SQLite ``:memory:`` connection, its schema made by the
    package's own migration at first use. Two instances are isolated; every task holding the
    same instance sees the same data. Operations run one at a time, so one task's rollback can
    never discard another task's write.
    """

    __slots__ = ()

    def __init__(self) -> None:
        url = resolve_url("sqlite+aiosqlite://")
        super().__init__(create_engine(url, **store_engine_options(url)), owns_engine=True)
