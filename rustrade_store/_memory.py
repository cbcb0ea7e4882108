"""The non-durable store: SQLite ``:memory:`` through the same code path as every other."""

from __future__ import annotations

from ._engine import DEFAULT_TIMEOUT, create_engine, resolve_url, store_engine_options
from ._sql import SqlStore

__all__ = ["InMemoryStore"]


class InMemoryStore(SqlStore):
    """A store that lives as long as the instance: for tests and as an explicit default.

    It is the SQL store over one private SQLite ``:memory:`` connection, its schema made by the
    package's own migration at first use. Two instances are isolated; every task holding the
    same instance sees the same data. Operations run one at a time, so one task's rollback can
    never discard another task's write; ``timeout`` bounds, in seconds, a call's wait for its
    turn, as :meth:`SqlStore.from_url`'s does.

    It is the one way to ask for a store in memory: :meth:`SqlStore.from_url` refuses a URL
    that names no file (``sqlite://``), which would otherwise lose every save unannounced.
    """

    __slots__ = ()

    def __init__(self, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        url = resolve_url("sqlite+aiosqlite://")
        engine = create_engine(url, timeout=timeout, **store_engine_options(url))
        super().__init__(engine, owns_engine=True, timeout=timeout)
