"""Where a store call spends its time: driver hand-offs counted, and a pyinstrument profile.

``python bench/profile.py [sqlite|postgresql] [--profile]`` counts, per ``save`` and per
``load``, the aiosqlite thread hand-offs (every call queued to aiosqlite's thread) or the
asyncpg adapter's round trips (BEGIN, statement, COMMIT, ROLLBACK), then with ``--profile``
prints pyinstrument's profile of 2,000 saves and 2,000 loads. Needs the ``bench`` extra.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiosqlite.core
import asyncpg
import asyncpg.prepared_stmt
import asyncpg.transaction

from rustrade_store import SqlStore, upgrade
from rustrade_store.engine import resolve_url

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


async def per_call(store: SqlStore, what: str, runs: int = 50) -> dict[str, float]:
    value: JSONValue = {"position": {"qty": 0.125, "avg_price": 64250.5}, "trades": 42}
    await store.save("bot1/BTCUSDT", value)
    CALLS.clear()
    for _ in range(runs):
        if what == "save":
            await store.save("bot1/BTCUSDT", value)
        else:
            await store.load("bot1/BTCUSDT")
    return {name: calls / runs for name, calls in sorted(CALLS.items())}


async def run(url: URL, profile: bool) -> None:
    async with SqlStore.from_url(url) as store:
        for what in ("save", "load"):
            counts = per_call(store, what)
            calls = await counts
            total = sum(calls.values())
            detail = ", ".join(f"{name} {n:g}" for name, n in calls.items())
            print(f"{url.get_backend_name()} {what}: {total:g} hand-offs/round trips ({detail})")
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
