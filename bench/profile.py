"""Where a store call spends its time: driver hand-offs counted, and a pyinstrument profile.

``python bench/profile.py [sqlite|postgresql] [--profile]`` counts, per ``save``, ``load``,
``save_many`` and ``load_many`` of 1,000 keys, the aiosqlite thread hand-offs (every call queued
to aiosqlite's thread) or the asyncpg round trips (BEGIN, statement, COMMIT, ROLLBACK, PREPARE,
pipelined executemany, a statement of the store's direct path); times one load through each
layer (the raw driver; SQLAlchemy's pool, then the raw driver; an ``AsyncConnection``, then the
raw driver; SQLAlchemy Core's least path, all in one greenlet; the store); then with
``--profile`` prints pyinstrument's profile of 2,000 saves and 2,000 loads. Needs the ``bench``
extra.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiosqlite.core
import asyncpg
import asyncpg.prepared_stmt
import asyncpg.transaction
from sqlalchemy import select
from sqlalchemy.util import greenlet_spawn

from rustrade_store import SqlStore, upgrade
from rustrade_store.engine import resolve_url
from rustrade_store.schema import snapshots

PG_LOAD = "SELECT value::text FROM snapshots WHERE key = $1"
SQLITE_LOAD = "SELECT value FROM snapshots WHERE key = ?"

if TYPE_CHECKING:
    from collections.abc import Callable

    from sqlalchemy import URL

    from rustrade_store import JSONValue

CALLS: Counter[str] = Counter()


def count(owner: Any, name: str, label: Callable[[tuple[Any, ...]], str] | None = None) -> None:
    original = getattr(owner, name)

    async def counted(*args: Any, **kwargs: Any) -> Any:
        CALLS[label(args) if label else name] += 1
        return await original(*args, **kwargs)

    setattr(owner, name, counted)


def install_counters() -> None:
    # Every aiosqlite call that runs on its thread goes through Connection._execute.
    count(aiosqlite.core.Connection, "_execute", lambda args: f"aiosqlite {args[1].__name__}")
    # asyncpg: one round trip per transaction step, statement run, or statement prepared.
    count(asyncpg.transaction.Transaction, "start", lambda _: "asyncpg BEGIN")
    count(asyncpg.transaction.Transaction, "commit", lambda _: "asyncpg COMMIT")
    count(asyncpg.transaction.Transaction, "rollback", lambda _: "asyncpg ROLLBACK")
    count(asyncpg.prepared_stmt.PreparedStatement, "fetch", lambda _: "asyncpg execute")
    count(asyncpg.Connection, "prepare", lambda _: "asyncpg prepare")
    count(asyncpg.Connection, "_executemany", lambda _: "asyncpg executemany (one flight)")
    # The store's direct path: a statement run by the connection itself (prepared and cached).
    count(asyncpg.Connection, "_execute", lambda _: "asyncpg execute (direct)")


async def per_call(store: SqlStore, what: str, runs: int = 50) -> dict[str, float]:
    value: JSONValue = {"position": {"qty": 0.125, "avg_price": 64250.5}, "trades": 42}
    batch: dict[str, JSONValue] = {f"bot{index}/BTCUSDT": value for index in range(1000)}
    await store.save_many(batch)
    await store.load_many(batch)
    CALLS.clear()
    for _ in range(runs):
        if what == "save":
            await store.save("bot1/BTCUSDT", value)
        elif what == "load":
            await store.load("bot1/BTCUSDT")
        elif what == "save_many 1000":
            await store.save_many(batch)
        else:
            await store.load_many(batch)
    return {name: calls / runs for name, calls in sorted(CALLS.items())}


async def layers(store: SqlStore, runs: int = 2000) -> None:
    """p50 of one load through each layer, interleaved so that machine noise hits all alike."""
    key = "bot1/BTCUSDT"
    engine = store.engine
    postgres = engine.dialect.name == "postgresql"
    sql = PG_LOAD if postgres else SQLITE_LOAD
    statement = select(snapshots.c.value).where(snapshots.c.key == key)
    pool = engine.sync_engine.pool

    async def driver_call(driver: Any) -> object:
        if postgres:
            return await driver.fetchval(sql, key)
        return await driver.execute_fetchall(sql, (key,))

    async def pool_and_driver() -> object:
        fairy = await greenlet_spawn(pool.connect)
        try:
            return await driver_call(fairy.driver_connection)
        finally:
            await greenlet_spawn(fairy.close)

    async def connection_and_driver() -> object:
        async with engine.connect() as connection:
            raw_connection = await connection.get_raw_connection()
            return await driver_call(raw_connection.driver_connection)

    def core_sync() -> object:
        with engine.sync_engine.connect() as connection:
            return connection.execute(statement).scalar()

    async def core() -> object:
        return await greenlet_spawn(core_sync)

    async def through_store() -> object:
        return await store.load(key)

    async with engine.connect() as held:
        raw_connection = await held.get_raw_connection()
        driver = raw_connection.driver_connection
        # The raw driver on a connection of its own, so the pool is not in the way.
        if postgres:
            options = engine.url.translate_connect_args(database="database", username="user")
            own: Any = await asyncpg.connect(**options)
        else:
            own = await aiosqlite.connect(engine.url.database or ":memory:")
    del driver
    try:

        async def raw() -> object:
            return await driver_call(own)

        paths = {
            "raw driver": raw,
            "SQLAlchemy pool + raw driver": pool_and_driver,
            "AsyncConnection + raw driver": connection_and_driver,
            "SQLAlchemy Core, one greenlet": core,
            "store.load": through_store,
        }
        timings: dict[str, list[int]] = {name: [] for name in paths}
        for _ in range(runs):
            for name, path in paths.items():
                before = time.perf_counter_ns()
                await path()
                timings[name].append(time.perf_counter_ns() - before)
        for name, spent in timings.items():
            spent.sort()
            print(f"  load through {name:<32} p50 {spent[len(spent) // 2] / 1000:7.0f} µs")
    finally:
        await own.close()


async def run(url: URL, profile: bool) -> None:
    async with SqlStore.from_url(url) as store:
        for what in ("save", "load", "save_many 1000", "load_many 1000"):
            calls = await per_call(store, what, 50 if what in ("save", "load") else 5)
            total = sum(calls.values())
            detail = ", ".join(f"{name} {n:g}" for name, n in calls.items())
            print(f"{url.get_backend_name()} {what}: {total:g} hand-offs/round trips ({detail})")
        await layers(store)
        if profile:
            from pyinstrument import Profiler

            profiler = Profiler(interval=0.0001, async_mode="enabled")
            value: JSONValue = {"position": {"qty": 0.125, "avg_price": 64250.5}, "trades": 42}
            with profiler:
                for index in range(2000):
                    await store.save(f"bot{index % 20}/BTCUSDT", value)
                for index in range(2000):
                    await store.load(f"bot{index % 20}/BTCUSDT")
            print(profiler.output_text(unicode=False, color=False, show_all=False))


async def main(backend: str, profile: bool) -> None:
    install_counters()
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            url = resolve_url(f"sqlite:///{Path(tmp) / 'profile.db'}")
            await upgrade(url)
            await run(url, profile)
        return
    admin = resolve_url(
        os.environ.get("RUSTRADE_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    )
    name = f"rustrade_profile_{os.getpid()}_{secrets.token_hex(4)}"
    options = {"user": admin.username, "host": admin.host, "port": admin.port}
    connection = await asyncpg.connect(database=admin.database, password=admin.password, **options)
    await connection.execute(f'CREATE DATABASE "{name}"')
    try:
        url = admin.set(database=name)
        await upgrade(url)
        await run(url, profile)
    finally:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await connection.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("backend", choices=["sqlite", "postgresql"])
    parser.add_argument("--profile", action="store_true", help="print pyinstrument's profile")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.backend, arguments.profile))
    sys.exit(0)
