"""The in-memory store: SQLite :memory: through the same code path, schema from the migration."""

from __future__ import annotations

import asyncio

from sqlalchemy import text

from rustrade_store import InMemoryStore, head_revision
from rustrade_store._schema import VERSION_TABLE


async def test_instances_are_isolated() -> None:
    async with InMemoryStore() as first, InMemoryStore() as second:
        await first.save("k", 1)
        assert await second.load("k") is None
        assert await first.count() == 1
        assert await second.is_empty()


async def test_schema_comes_from_the_migration() -> None:
    async with InMemoryStore() as store:
        assert await store.is_empty()
        async with store.engine.connect() as connection:
            version = await connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))
            assert version.scalar() == head_revision()


async def test_every_task_sees_the_same_data() -> None:
    async with InMemoryStore() as store:
        await asyncio.gather(*(store.save(f"k{index}", index) for index in range(20)))
        loads = await asyncio.gather(*(store.load(f"k{index}") for index in range(20)))
        assert loads == list(range(20))
        assert await store.count() == 20


async def test_closing_forgets_everything() -> None:
    store = InMemoryStore()
    await store.save("k", 1)
    await store.aclose()
    async with InMemoryStore() as again:
        assert await again.load("k") is None
