"""Durable by default: the settings every connection of a store gets, read back from the
database itself."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from sqlalchemy import text

from rustrade_store import SqlStore, create_engine

from .helpers import asyncpg_connection

if TYPE_CHECKING:
    import asyncpg
    from sqlalchemy import URL

SYNCHRONOUS = {"0": "OFF", "1": "NORMAL", "2": "FULL", "3": "EXTRA"}


async def sqlite_settings(store: SqlStore) -> tuple[str, str, int]:
    async with store.engine.connect() as connection:
        journal = (await connection.execute(text("PRAGMA journal_mode"))).scalar_one()
        synchronous = (await connection.execute(text("PRAGMA synchronous"))).scalar_one()
        busy = (await connection.execute(text("PRAGMA busy_timeout"))).scalar_one()
    return str(journal), SYNCHRONOUS[str(synchronous)], int(busy)


async def test_sqlite_connections_are_wal_full_with_a_busy_timeout(sqlite_url: URL) -> None:
    async with SqlStore.from_url(sqlite_url, timeout=7.5) as store:
        assert await sqlite_settings(store) == ("wal", "FULL", 7500)
        # Every new connection, not only the first: throw the pooled one away.
        await store.engine.dispose()
        await store.save("k", 1)
        assert await sqlite_settings(store) == ("wal", "FULL", 7500)


async def test_sqlite_synchronous_normal_is_an_option(sqlite_url: URL) -> None:
    async with SqlStore.from_url(sqlite_url, sqlite_synchronous="normal") as store:
        assert await sqlite_settings(store) == ("wal", "NORMAL", 10_000)
        await store.save("k", 1)
        assert await store.load("k") == 1


@pytest.mark.parametrize("mode", ["OFF", "EXTRA", "fast", ""])
def test_other_synchronous_modes_are_refused_by_name(mode: str) -> None:
    with pytest.raises(ValueError, match=f"sqlite_synchronous={mode!r} is not supported"):
        create_engine("sqlite://", sqlite_synchronous=mode)


@pytest.mark.postgres
async def test_postgres_save_returns_after_commit(postgres_url: URL) -> None:
    """Commits are synchronous, and a save is visible to another connection once it returns."""
    async with SqlStore.from_url(postgres_url) as store:
        async with store.engine.connect() as connection:
            setting = (await connection.execute(text("SHOW synchronous_commit"))).scalar_one()
        assert setting == "on"
        other: asyncpg.Connection = await asyncpg_connection(postgres_url)
        try:
            for index in range(20):
                await store.save("durable/k", {"n": index})
                stored = await other.fetchval(
                    "SELECT value::text FROM snapshots WHERE key = 'durable/k'"
                )
                assert stored == f'{{"n":{index}}}'
        finally:
            await other.close()
            await store.delete("durable/k")
