"""The store against the raw drivers, in one run, on the same data: ``make bench``.

For the in-memory store, an SQLite file and PostgreSQL it times sequential save and load, 64
concurrent savers on distinct keys, ``load_many`` and ``save_many`` of 1,000 keys, and the raw
drivers running the same SQL (stdlib ``sqlite3`` and ``aiosqlite`` in WAL mode with
``synchronous=FULL``; ``asyncpg`` with prepared statements). Raw programs encode and decode JSON
with the standard library, as a hand-written program would. Then a write-behind burst: 10,000
saves over 50 keys through ``BufferedStore`` against write-through saves on an SQLite file.

Figures are ratios to read, not a test: nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import secrets
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiosqlite
import asyncpg
from sqlalchemy import event

from rustrade_store import InMemoryStore, SqlStore, upgrade
from rustrade_store.engine import resolve_url

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from sqlalchemy import URL

    from rustrade_store import JSONValue, StateStore

POSTGRES_ADMIN_URL = os.environ.get(
    "RUSTRADE_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
TASKS = 64
BATCH = 1000

SQLITE_DDL = (
    "CREATE TABLE IF NOT EXISTS snapshots (key VARCHAR(255) PRIMARY KEY, "
    "value TEXT NOT NULL CONSTRAINT ck_snapshots_value_json CHECK (json_valid(value)), "
    "updated_at DATETIME NOT NULL)"
)
SQLITE_UPSERT = (
    "INSERT INTO snapshots (key, value, updated_at) VALUES (?, ?, ?) ON CONFLICT (key) "
    "DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at"
)
SQLITE_LOAD = "SELECT value FROM snapshots WHERE key = ?"
PG_UPSERT = (
    "INSERT INTO snapshots (key, value, updated_at) VALUES ($1, $2::json, $3) ON CONFLICT (key) "
    "DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at"
)
PG_LOAD = "SELECT value::text FROM snapshots WHERE key = $1"
PG_LOAD_MANY = "SELECT key, value::text FROM snapshots WHERE key = ANY($1::varchar[])"


@dataclass(frozen=True, slots=True)
class Sizes:
    sequential: int
    per_task: int
    batches: int
    warmup: int
    burst: int


FULL = Sizes(sequential=2000, per_task=30, batches=20, warmup=200, burst=10_000)
QUICK = Sizes(sequential=300, per_task=5, batches=3, warmup=50, burst=2000)


def keys_for(count: int) -> list[str]:
    symbols = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT", "ADAUSDT", "DOGEUSDT"]
    return [f"bot{i // len(symbols)}/{symbols[i % len(symbols)]}" for i in range(count)]


def snapshot(index: int) -> JSONValue:
    """A bot's state after a trade: about 300 bytes of JSON."""
    return {
        "position": {"qty": 0.125 + index * 1e-4, "avg_price": 64250.5 + index, "side": "long"},
        "realised_pnl": 1234.5678 - index,
        "fees_paid": 3.21,
        "trades": 42 + index,
        "halted": False,
        "last_fill": {"id": f"f-{index:08d}", "px": 64301.25, "qty": 0.01, "ts": 1764150000123},
        "equity_window": [10000.0, 10012.5, 10008.25, 10020.0, 10031.75],
        "streak": {"wins": 3, "losses": 0},
    }


# -- measurement ------------------------------------------------------------------------------


@dataclass(slots=True)
class Row:
    backend: str
    operation: str
    impl: str
    ops_per_s: float
    p50_us: float
    p99_us: float
    mean_us: float
    note: str = ""
    ratio: float | None = field(default=None)


def percentile(sorted_ns: list[int], fraction: float) -> float:
    index = min(len(sorted_ns) - 1, max(0, round(fraction * len(sorted_ns)) - 1))
    return sorted_ns[index] / 1000


def summarise(
    backend: str, operation: str, impl: str, latencies: list[int], wall_ns: int, items: int
) -> Row:
    ordered = sorted(latencies)
    return Row(
        backend,
        operation,
        impl,
        ops_per_s=items / (wall_ns / 1e9),
        p50_us=percentile(ordered, 0.50),
        p99_us=percentile(ordered, 0.99),
        mean_us=sum(ordered) / len(ordered) / 1000,
    )


async def sequential(call: Callable[[int], Awaitable[object]], count: int) -> tuple[list[int], int]:
    latencies = []
    clock = time.perf_counter_ns
    start = clock()
    for index in range(count):
        before = clock()
        await call(index)
        latencies.append(clock() - before)
    return latencies, clock() - start


async def concurrent(
    call: Callable[[int, int], Awaitable[object]], tasks: int, per_task: int
) -> tuple[list[int], int]:
    latencies: list[int] = []
    clock = time.perf_counter_ns

    async def worker(task: int) -> None:
        for round_ in range(per_task):
            before = clock()
            await call(task, round_)
            latencies.append(clock() - before)

    start = clock()
    await asyncio.gather(*(worker(task) for task in range(tasks)))
    return latencies, clock() - start


# -- the implementations ----------------------------------------------------------------------


class Impl:
    """One way of doing the five operations; ``concurrent_ok`` is False for a blocking driver."""

    name = ""
    concurrent_ok = True

    async def save(self, key: str, value: JSONValue) -> None:
        raise NotImplementedError

    async def load(self, key: str) -> JSONValue:
        raise NotImplementedError

    async def load_many(self, keys: list[str]) -> dict[str, JSONValue]:
        raise NotImplementedError

    async def save_many(self, values: Mapping[str, JSONValue]) -> None:
        raise NotImplementedError

    async def clear(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class StoreImpl(Impl):
    name = "store"

    def __init__(self, store: SqlStore) -> None:
        self.store = store
        self.statements = 0
        event.listen(store.engine.sync_engine, "before_cursor_execute", self._count)

    def _count(self, *_: object) -> None:
        self.statements += 1

    async def save(self, key: str, value: JSONValue) -> None:
        await self.store.save(key, value)

    async def load(self, key: str) -> JSONValue:
        return await self.store.load(key)

    async def load_many(self, keys: list[str]) -> dict[str, JSONValue]:
        return await self.store.load_many(keys)

    async def save_many(self, values: Mapping[str, JSONValue]) -> None:
        await self.store.save_many(values)

    async def clear(self) -> None:
        async for key in self.store.keys():
            await self.store.delete(key)

    async def close(self) -> None:
        await self.store.aclose()


def _now() -> str:
    return datetime.now(UTC).isoformat(sep=" ")


class Sqlite3Impl(Impl):
    """Stdlib ``sqlite3``: blocking calls, commit after each write."""

    name = "sqlite3"
    concurrent_ok = False

    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(path)
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute("PRAGMA synchronous = FULL")
        self.db.execute(SQLITE_DDL)
        self.db.commit()

    async def save(self, key: str, value: JSONValue) -> None:
        self.db.execute(SQLITE_UPSERT, (key, json.dumps(value), _now()))
        self.db.commit()

    async def load(self, key: str) -> JSONValue:
        row = self.db.execute(SQLITE_LOAD, (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    async def load_many(self, keys: list[str]) -> dict[str, JSONValue]:
        marks = ",".join("?" * len(keys))
        sql = f"SELECT key, value FROM snapshots WHERE key IN ({marks})"
        found = dict(self.db.execute(sql, keys).fetchall())
        return {key: json.loads(found[key]) if key in found else None for key in keys}

    async def save_many(self, values: Mapping[str, JSONValue]) -> None:
        now = _now()
        self.db.executemany(SQLITE_UPSERT, [(k, json.dumps(v), now) for k, v in values.items()])
        self.db.commit()

    async def clear(self) -> None:
        self.db.execute("DELETE FROM snapshots")
        self.db.commit()

    async def close(self) -> None:
        self.db.close()


class AiosqliteImpl(Impl):
    """``aiosqlite``: execute then commit per write, one round trip to its thread per read."""

    name = "aiosqlite"

    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db

    @classmethod
    async def open(cls, path: str) -> AiosqliteImpl:
        db = await aiosqlite.connect(path)
        await db.execute("PRAGMA journal_mode = WAL")
        await db.execute("PRAGMA synchronous = FULL")
        await db.execute(SQLITE_DDL)
        await db.commit()
        return cls(db)

    async def save(self, key: str, value: JSONValue) -> None:
        await self.db.execute(SQLITE_UPSERT, (key, json.dumps(value), _now()))
        await self.db.commit()

    async def load(self, key: str) -> JSONValue:
        rows = list(await self.db.execute_fetchall(SQLITE_LOAD, (key,)))
        return json.loads(rows[0][0]) if rows else None

    async def load_many(self, keys: list[str]) -> dict[str, JSONValue]:
        marks = ",".join("?" * len(keys))
        sql = f"SELECT key, value FROM snapshots WHERE key IN ({marks})"
        found: dict[str, str] = dict(await self.db.execute_fetchall(sql, keys))  # type: ignore[arg-type]
        return {key: json.loads(found[key]) if key in found else None for key in keys}

    async def save_many(self, values: Mapping[str, JSONValue]) -> None:
        now = _now()
        await self.db.executemany(
            SQLITE_UPSERT, [(k, json.dumps(v), now) for k, v in values.items()]
        )
        await self.db.commit()

    async def clear(self) -> None:
        await self.db.execute("DELETE FROM snapshots")
        await self.db.commit()

    async def close(self) -> None:
        await self.db.close()


class AsyncpgImpl(Impl):
    """``asyncpg``: prepared statements on one connection; a pool of 15 for concurrent savers."""

    name = "asyncpg"

    def __init__(self, connection: Any, pool: Any, statements: dict[str, Any]) -> None:
        self.connection = connection
        self.pool = pool
        self.statements = statements

    @classmethod
    async def open(cls, url: URL) -> AsyncpgImpl:
        options = {
            "user": url.username,
            "password": url.password,
            "host": url.host,
            "port": url.port,
            "database": url.database,
        }
        connection = await asyncpg.connect(**options)
        pool = await asyncpg.create_pool(min_size=15, max_size=15, **options)
        statements = {
            "save": await connection.prepare(PG_UPSERT),
            "load": await connection.prepare(PG_LOAD),
            "load_many": await connection.prepare(PG_LOAD_MANY),
        }
        return cls(connection, pool, statements)

    async def save(self, key: str, value: JSONValue) -> None:
        await self.statements["save"].fetch(key, json.dumps(value), datetime.now(UTC))

    async def save_concurrently(self, key: str, value: JSONValue) -> None:
        await self.pool.execute(PG_UPSERT, key, json.dumps(value), datetime.now(UTC))

    async def load(self, key: str) -> JSONValue:
        text = await self.statements["load"].fetchval(key)
        return None if text is None else json.loads(text)

    async def load_many(self, keys: list[str]) -> dict[str, JSONValue]:
        found = dict(await self.statements["load_many"].fetch(keys))
        return {key: json.loads(found[key]) if key in found else None for key in keys}

    async def save_many(self, values: Mapping[str, JSONValue]) -> None:
        now = datetime.now(UTC)
        async with self.connection.transaction():
            await self.statements["save"].executemany(
                [(k, json.dumps(v), now) for k, v in values.items()]
            )

    async def clear(self) -> None:
        await self.connection.execute("DELETE FROM snapshots")

    async def close(self) -> None:
        await self.pool.close()
        await self.connection.close()


# -- the runs ---------------------------------------------------------------------------------


async def interleaved(
    impls: list[Impl], call: Callable[[Impl, int], Awaitable[object]], count: int
) -> dict[str, list[int]]:
    """Run ``call`` ``count`` times on each implementation in turn, one call each round, so that
    the machine's noise (other processes, disk flushes) falls on every implementation alike."""
    latencies: dict[str, list[int]] = {impl.name: [] for impl in impls}
    clock = time.perf_counter_ns
    for index in range(count):
        for impl in impls:
            before = clock()
            await call(impl, index)
            latencies[impl.name].append(clock() - before)
    return latencies


async def run_backend(backend: str, impls: list[Impl], sizes: Sizes) -> list[Row]:
    """Time the five operations on every implementation of one backend, on one table."""
    rows: list[Row] = []
    for impl in impls:
        await impl.clear()
    keys = keys_for(BATCH)
    values = {key: snapshot(index) for index, key in enumerate(keys)}

    def add(operation: str, latencies: dict[str, list[int]], items: int) -> None:
        for name, spent in latencies.items():
            rows.append(summarise(backend, operation, name, spent, sum(spent), items * len(spent)))

    async def save_many(impl: Impl, _: int) -> None:
        await impl.save_many(values)

    async def load_many(impl: Impl, _: int) -> None:
        await impl.load_many(keys)

    async def save(impl: Impl, index: int) -> None:
        await impl.save(keys[index % BATCH], snapshot(index))

    async def load(impl: Impl, index: int) -> None:
        await impl.load(keys[index % BATCH])

    for operation, call, count, items in (
        (f"save_many {BATCH}", save_many, sizes.batches, BATCH),
        (f"load_many {BATCH}", load_many, sizes.batches, BATCH),
        ("save", save, sizes.sequential, 1),
        ("load", load, sizes.sequential, 1),
    ):
        await interleaved(impls, call, sizes.warmup if items == 1 else 2)
        add(operation, await interleaved(impls, call, count), items)
    for impl in impls:
        if isinstance(impl, StoreImpl):
            before = impl.statements
            await impl.save_many(values)
            note = f"{impl.statements - before} statement(s) per call"
            for row in rows:
                if row.impl == impl.name and row.operation.startswith("save_many"):
                    row.note = note

    # Concurrent savers: each implementation in turn, a few rounds per turn.
    chunk = 5
    gathered: dict[str, tuple[list[int], int]] = {}
    for turn in range(-1, max(1, sizes.per_task // chunk)):
        for impl in impls:
            if not impl.concurrent_ok:
                continue
            saver = impl.save_concurrently if isinstance(impl, AsyncpgImpl) else impl.save

            async def save_from(task: int, round_: int, saver: Any = saver) -> None:
                await saver(keys[task], snapshot(round_))

            latencies, wall = await concurrent(save_from, TASKS, min(chunk, sizes.per_task))
            if turn >= 0:  # the first turn warms up
                spent, total = gathered.get(impl.name, ([], 0))
                gathered[impl.name] = (spent + latencies, total + wall)
    for name, (spent, total) in gathered.items():
        rows.append(summarise(backend, f"save x{TASKS} tasks", name, spent, total, len(spent)))
    return rows


async def buffered_burst(path: Path, sizes: Sizes) -> tuple[list[Row], bool]:
    """10,000 saves over 50 keys: write-through against ``BufferedStore``, then check."""
    try:
        from rustrade_store import BufferedStore
    except ImportError:
        return [], False

    url = resolve_url(f"sqlite:///{path}")
    await upgrade(url)
    keys = [f"bot{i // 10}/SYM{i % 10}" for i in range(50)]
    rows = []
    last: dict[str, JSONValue] = {}

    async def burst(store: StateStore, impl: str) -> Row:
        clock = time.perf_counter_ns
        latencies = []
        start = clock()
        for index in range(sizes.burst):
            key = keys[index % len(keys)]
            value: JSONValue = {"seq": index, "pnl": index * 0.5, "key": key}
            last[key] = value
            before = clock()
            await store.save(key, value)
            latencies.append(clock() - before)
        await store.flush()
        return summarise(
            "sqlite file",
            f"burst {sizes.burst}/50 keys",
            impl,
            latencies,
            clock() - start,
            sizes.burst,
        )

    async with SqlStore.from_url(url) as through:
        rows.append(await burst(through, "store"))
    async with SqlStore.from_url(url) as inner:
        async with BufferedStore(inner) as buffered:
            rows.append(await burst(buffered, "BufferedStore"))
        async with SqlStore.from_url(url) as check:
            stored = await check.load_many(keys)
    rows[1].note = "incl. flush()"
    return rows, stored == last


async def _admin_connection(admin: URL) -> asyncpg.Connection:
    return await asyncpg.connect(
        user=admin.username,
        password=admin.password,
        host=admin.host,
        port=admin.port,
        database=admin.database,
        timeout=5,
    )


async def postgres_database() -> tuple[URL, URL] | None:
    admin = resolve_url(POSTGRES_ADMIN_URL)
    name = f"rustrade_bench_{os.getpid()}_{secrets.token_hex(4)}"
    try:
        connection = await _admin_connection(admin)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        print(f"PostgreSQL skipped: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return admin, admin.set(database=name)


async def drop_database(admin: URL, url: URL) -> None:
    connection = await _admin_connection(admin)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)')
    finally:
        await connection.close()


def machine(pg_version: str) -> str:
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
        f"PostgreSQL {pg_version}"
    )


async def main(sizes: Sizes) -> None:
    rows: list[Row] = []
    pg_version = "not run"
    with tempfile.TemporaryDirectory(prefix="rustrade-bench-") as tmp:
        impls: list[Impl] = [
            StoreImpl(InMemoryStore()),
            Sqlite3Impl(":memory:"),
            await AiosqliteImpl.open(":memory:"),
        ]
        await impls[0].load("warm")  # the in-memory store makes its schema at first use
        rows += await run_backend("memory", impls, sizes)
        for impl in impls:
            await impl.close()

        path = Path(tmp) / "bench.db"
        url = resolve_url(f"sqlite:///{path}")
        await upgrade(url)
        impls = [
            StoreImpl(SqlStore.from_url(url)),
            # Each on a file of its own: connections taking turns on one file would wait on
            # each other's locks, which no single program would see.
            Sqlite3Impl(str(Path(tmp) / "sqlite3.db")),
            await AiosqliteImpl.open(str(Path(tmp) / "aiosqlite.db")),
        ]
        rows += await run_backend("sqlite file", impls, sizes)
        for impl in impls:
            await impl.close()

        databases = await postgres_database()
        if databases is not None:
            admin, pg_url = databases
            try:
                await upgrade(pg_url)
                raw_pg = await AsyncpgImpl.open(pg_url)
                pg_version = await raw_pg.connection.fetchval("SHOW server_version")
                impls = [StoreImpl(SqlStore.from_url(pg_url)), raw_pg]
                rows += await run_backend("postgresql", impls, sizes)
                for impl in impls:
                    await impl.close()
            finally:
                await drop_database(admin, pg_url)

        burst_rows, burst_ok = await buffered_burst(Path(tmp) / "burst.db", sizes)
        rows += burst_rows

    report(rows, sizes, burst_ok, pg_version)


def report(rows: list[Row], sizes: Sizes, burst_ok: bool, pg_version: str) -> None:
    by = {(row.backend, row.operation, row.impl): row for row in rows}
    for row in rows:
        if row.impl != "store":
            store = by.get((row.backend, row.operation, "store"))
            if store is not None:
                row.ratio = store.p50_us / row.p50_us
    burst = [row for row in rows if row.operation.startswith("burst")]
    if len(burst) == 2:
        burst[1].ratio = burst[1].ops_per_s / burst[0].ops_per_s
        burst[1].note = f"{burst[1].note}; rate x{burst[1].ratio:.1f} of write-through"
        burst[1].ratio = None

    print(f"machine: {machine(pg_version)}")
    print(
        f"sizes: {sizes.sequential} sequential ops, {TASKS} tasks x {sizes.per_task} saves, "
        f"{sizes.batches} batches of {BATCH}; batch rows count keys/s, latency per call"
    )
    header = (
        f"{'backend':<12} {'operation':<18} {'impl':<14} {'ops/s':>10} {'p50 µs':>10} "
        f"{'p99 µs':>10} {'store/raw p50':>14}  note"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        ratio = "" if row.ratio is None else f"{row.ratio:.2f}x"
        print(
            f"{row.backend:<12} {row.operation:<18} {row.impl:<14} {row.ops_per_s:>10,.0f} "
            f"{row.p50_us:>10,.0f} {row.p99_us:>10,.0f} {ratio:>14}  {row.note}".rstrip()
        )

    print("\ntargets:")
    raw_async = {"memory": "aiosqlite", "sqlite file": "aiosqlite", "postgresql": "asyncpg"}
    for backend, raw in raw_async.items():
        for operation, bound in (("save", 1.3), ("load", 2.0)):
            store = by.get((backend, operation, "store"))
            other = by.get((backend, operation, raw))
            if store and other:
                times = store.p50_us / other.p50_us
                print(f"  {backend:<12} {operation} p50 {times:.2f}x {raw} (target <= {bound}x)")
    seq = by.get(("sqlite file", "save", "store"))
    conc = by.get(("sqlite file", f"save x{TASKS} tasks", "store"))
    if seq and conc:
        print(
            f"  sqlite file  {TASKS} savers: rate {conc.ops_per_s / seq.ops_per_s:.2f}x sequential "
            f"(target >= 1), p99 {conc.p99_us / (TASKS * seq.mean_us):.2f}x of {TASKS} sequential "
            "saves (target <= 1.5)"
        )
    for backend in raw_async:
        loads = by.get((backend, "load", "store"))
        many = by.get((backend, f"load_many {BATCH}", "store"))
        if loads and many:
            speedup = BATCH * loads.mean_us / many.mean_us
            print(
                f"  {backend:<12} load_many {BATCH}: {speedup:.0f}x {BATCH} sequential loads "
                "(target >= 50 on postgresql)"
            )
    if len(burst) == 2:
        print(
            f"  sqlite file  BufferedStore burst: {burst[1].ops_per_s / burst[0].ops_per_s:.0f}x "
            f"write-through (target >= 20); every key holds its last value after flush(): "
            f"{burst_ok}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    arguments = parser.parse_args()
    asyncio.run(main(QUICK if arguments.quick else FULL))
