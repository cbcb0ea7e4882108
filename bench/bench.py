"""The store's figures beside their baselines, all measured in one run: ``make bench``.

On an in-memory SQLite database, an SQLite file and PostgreSQL (skipped when unreachable), with
snapshots of about 300 bytes:

- sequential ``save`` and ``load``: the store's p50 against SQLAlchemy Core running the store's
  own statements (its conditional, lease-fenced write with the same RETURNING, its reads) on the
  store's own engine (``store.engine``): the store's own overhead, target <= 1.15x; and against
  the raw driver (``aiosqlite``, execute then commit; ``asyncpg`` with prepared statements)
  running a hand-written conditional upsert with RETURNING, without the fence: reported;
- 64 tasks saving at once, each its own key: the rate against the store's sequential save rate
  and against the raw driver (``aiosqlite`` sharing one connection, ``asyncpg`` with a pool of
  15), and the p99 latency;
- 64 tasks each loading its own key at once (a boot), against the sequential load rate;
- ``save_many`` and ``load_many`` of 1,000 keys, and a write-behind burst through
  ``BufferedStore`` against write-through saves on an SQLite file;
- on an SQLite file and PostgreSQL, a sequential save through ``SyncStore`` (called from plain
  code, run on the sync store's own loop thread) against the async store's, p50 against p50,
  target <= 1.5x;
- the cost of the ``otel`` extra: a save's and a load's p50 with the OpenTelemetry API and no SDK,
  and with the SDK and a ``BatchSpanProcessor``, against the p50 without the extra (targets
  <= 1.02x and <= 1.10x; ``--otel-only`` runs this part alone; see ``otel_cost.py``).

Every implementation writes its own keys in the same table, and they take turns call by call
(or round by round), so the machine's noise falls on all alike. Ratios of rates compare median
stretches (64 calls one after another, or 64 tasks at once), which a stall caused by another job
moves less than a mean over the whole run. The filesystem of the database files and its fsync
floor are printed first, since the SQLite figures depend on what an fsync costs there. Nothing
here fails on a figure: each line says whether its target was met.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import secrets
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiosqlite
import asyncpg
from sqlalchemy import case, event, exists, literal, select, true

from rustrade_store import (
    BufferedStore,
    InMemoryStore,
    SqlStore,
    SyncStore,
    resolve_url,
    upgrade,
)

try:  # the cost of the otel extra needs it and the SDK (the dev extra)
    import otel_cost
except ImportError as exc:
    OTEL_MISSING: str | None = f"{type(exc).__name__}: {exc}"
else:
    OTEL_MISSING = None

try:  # the Core baseline builds the store's own statements with the package's internals
    from rustrade_store._backends import backend_for
    from rustrade_store._fencing import Fencing
    from rustrade_store._statements import IGNORE_LEASES, snapshots
    from rustrade_store._statements import upsert as store_upsert
    from rustrade_store._statements import value as store_value
    from rustrade_store._statements import values as store_values
except ImportError as exc:  # moved since this bench was written: its Core lines say so
    CORE_MISSING: str | None = f"{type(exc).__name__}: {exc}"
else:
    CORE_MISSING = None

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence

    from sqlalchemy import URL
    from sqlalchemy.ext.asyncio import AsyncEngine

    from rustrade_store import JSONValue, StateStore

POSTGRES_ADMIN_URL = os.environ.get(
    "RUSTRADE_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
TASKS = 64
RAW_POOL = 15
BATCH = 1000
OVERHEAD_TARGET = 1.15
SAVERS_TARGET = {"sqlite file": 10.0, "postgresql": 5.0}
"""The rate of 64 concurrent savers, as a multiple of the store's sequential save rate."""
BOOT_TARGET = 10.0
LOAD_MANY_TARGET = {"postgresql": 50.0}
"""``load_many`` of 1,000 keys against 1,000 sequential loads (the earlier bench's target)."""
BURST_TARGET = 20.0
SYNC_TARGET = 1.5
"""A ``SyncStore`` save's p50 against the async store's, on the same database."""

# The raw drivers' SQL: the store's reads, and its condition on the save time written as a plain
# upsert (what a hand-written program would send), without the store's lease fence.
SQLITE_DDL = (
    "CREATE TABLE IF NOT EXISTS snapshots (key VARCHAR(255) PRIMARY KEY, "
    "value TEXT NOT NULL CONSTRAINT ck_snapshots_value_json CHECK (json_valid(value)), "
    "updated_at DATETIME NOT NULL)"
)
UPSERT = (
    "INSERT INTO snapshots (key, value, updated_at) VALUES {values} ON CONFLICT (key) "
    "DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at "
    "WHERE snapshots.updated_at < excluded.updated_at RETURNING key, updated_at"
)
SQLITE_SAVE = UPSERT.format(values="(?, ?, ?)")
SQLITE_LOAD = "SELECT value FROM snapshots WHERE key = ?"
SQLITE_LOAD_MANY = "SELECT key, value FROM snapshots WHERE key IN (SELECT value FROM json_each(?))"
PG_SAVE = UPSERT.format(values="($1, $2::json, $3)")
PG_LOAD = "SELECT CAST(value AS TEXT) FROM snapshots WHERE key = $1"
PG_LOAD_MANY = "SELECT key, CAST(value AS TEXT) FROM snapshots WHERE key = ANY($1::varchar[])"


@dataclass(frozen=True, slots=True)
class Sizes:
    sequential: int
    warmup: int
    batches: int
    rounds: int
    """Saves per task in the concurrent savers, in turns of ``chunk``."""
    chunk: int
    boots: int
    burst: int


FULL = Sizes(sequential=2000, warmup=200, batches=20, rounds=60, chunk=4, boots=150, burst=10_000)
QUICK = Sizes(sequential=300, warmup=50, batches=3, rounds=12, chunk=4, boots=20, burst=2000)


def keys_for(prefix: str, count: int) -> list[str]:
    symbols = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT", "ADAUSDT", "DOGEUSDT"]
    return [f"{prefix}/bot{i // len(symbols)}/{symbols[i % len(symbols)]}" for i in range(count)]


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


def dumps(value: JSONValue) -> str:
    """The text the store's codec writes, by the standard library, as a hand-written program."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def sqlite_time(when: datetime) -> str:
    """A UTC time as SQLAlchemy writes it to SQLite."""
    return when.strftime("%Y-%m-%d %H:%M:%S.%f")


def applied(rows: Sequence[Any], count: int) -> None:
    """Every baseline write must apply, as the store's do: RETURNING gives one row for each."""
    if len(rows) != count:
        raise RuntimeError(f"{count} rows written, {len(rows)} applied: the baseline is broken")


# -- measurement ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Timing:
    """The latency of each call (ns), and each stretch timed as ``(items handled, ns)``:
    ``TASKS`` single calls one after another, one batch call, or one turn of ``TASKS`` tasks
    running at once."""

    latencies: list[int]
    spans: list[tuple[int, int]]

    @property
    def rate(self) -> float:
        """Items a second over the whole run (mean)."""
        return sum(items for items, _ in self.spans) / (sum(ns for _, ns in self.spans) / 1e9)

    @property
    def median_rate(self) -> float:
        """Items a second in the median stretch: what the ratios use, since the median stays
        put when another job on the machine stalls a few stretches."""
        rates = sorted(items / ns for items, ns in self.spans)
        return rates[len(rates) // 2] * 1e9

    def quantile_us(self, fraction: float) -> float:
        ordered = sorted(self.latencies)
        index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
        return ordered[index] / 1000

    @property
    def p50(self) -> float:
        return self.quantile_us(0.50)

    @property
    def p99(self) -> float:
        return self.quantile_us(0.99)


def merge(first: Timing | None, second: Timing) -> Timing:
    if first is None:
        return second
    return Timing(first.latencies + second.latencies, first.spans + second.spans)


async def interleaved(
    impls: list[Impl], call: Callable[[Impl, int], Awaitable[object]], count: int, items: int
) -> dict[str, Timing]:
    """Run ``call`` ``count`` times on each implementation in turn, one call each round. Single
    calls are timed in stretches of ``TASKS`` (their latencies summed), to compare with
    ``TASKS`` calls at once; batch calls one by one."""
    latencies: dict[str, list[int]] = {impl.name: [] for impl in impls}
    clock = time.perf_counter_ns
    for index in range(count):
        for impl in impls:
            before = clock()
            await call(impl, index)
            latencies[impl.name].append(clock() - before)
    step = TASKS if items == 1 else 1
    return {
        name: Timing(
            spent, [(items * step, sum(spent[i : i + step])) for i in range(0, len(spent), step)]
        )
        for name, spent in latencies.items()
    }


async def at_once(call: Callable[[int, int], Awaitable[object]], rounds: int) -> Timing:
    """``TASKS`` tasks started together, each making ``rounds`` calls one after another."""
    latencies: list[int] = []
    clock = time.perf_counter_ns

    async def worker(task: int) -> None:
        for round_ in range(rounds):
            before = clock()
            await call(task, round_)
            latencies.append(clock() - before)

    start = clock()
    await asyncio.gather(*(worker(task) for task in range(TASKS)))
    return Timing(latencies, [(len(latencies), clock() - start)])


# -- the implementations ----------------------------------------------------------------------


class Impl:
    """One way of running the operations, on keys of its own."""

    name = ""

    def __init__(self) -> None:
        self.keys = keys_for(self.name, BATCH)
        self.own_database = False
        """True when it runs on a database of its own, not the store's."""

    async def save(self, key: str, value: JSONValue) -> None:
        raise NotImplementedError

    async def load(self, key: str) -> JSONValue:
        raise NotImplementedError

    async def save_many(self, values: Mapping[str, JSONValue]) -> None:
        raise NotImplementedError

    async def load_many(self, keys: list[str]) -> dict[str, JSONValue]:
        raise NotImplementedError

    async def save_at_once(self, key: str, value: JSONValue) -> None:
        """A save among ``TASKS`` concurrent ones."""
        await self.save(key, value)

    async def load_at_once(self, key: str) -> JSONValue:
        """A load among ``TASKS`` concurrent ones."""
        return await self.load(key)

    async def close(self) -> None:
        pass


class StoreImpl(Impl):
    name = "store"

    def __init__(self, store: SqlStore) -> None:
        super().__init__()
        self.store = store
        self.statements = 0
        event.listen(store.engine.sync_engine, "before_cursor_execute", self._count)

    def _count(self, *_: object) -> None:
        self.statements += 1

    async def save(self, key: str, value: JSONValue) -> None:
        await self.store.save(key, value)

    async def load(self, key: str) -> JSONValue:
        return await self.store.load(key)

    async def save_many(self, values: Mapping[str, JSONValue]) -> None:
        await self.store.save_many(values)

    async def load_many(self, keys: list[str]) -> dict[str, JSONValue]:
        return await self.store.load_many(keys)

    async def close(self) -> None:
        await self.store.aclose()


class CoreImpl(Impl):
    """SQLAlchemy Core on the store's engine, running the statements the store builds: its one
    write (the conditional upsert of rows bound as one JSON array, fenced by leases, with its
    RETURNING) and its reads, with the parameters the store makes for a writer holding no
    lease, and JSON from the standard library. The store's engine autocommits, so a single
    statement is its own transaction here as in the store; ``save_many`` opens one as the
    store does."""

    name = "Core"

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__()
        self.engine = engine
        backend = backend_for(engine.url)
        self.upsert = store_upsert(backend)
        self.fencing = Fencing(backend, ignore_leases=False)
        self.select_value = store_value(backend)
        self.select_values = store_values(backend)
        self.keys_param = backend.keys_param
        self.isolation = backend.transaction_isolation

    async def save(self, key: str, value: JSONValue) -> None:
        params = self.params([{"key": key, "value": dumps(value), "updated_at": datetime.now(UTC)}])
        async with self.engine.connect() as connection:
            applied((await connection.execute(self.upsert, params)).all(), 1)

    async def load(self, key: str) -> JSONValue:
        async with self.engine.connect() as connection:
            text = (await connection.execute(self.select_value, {"key": key})).scalar()
        return None if text is None else json.loads(text)

    async def save_many(self, values: Mapping[str, JSONValue]) -> None:
        now = datetime.now(UTC)
        rows = [{"key": k, "value": dumps(v), "updated_at": now} for k, v in sorted(values.items())]
        async with self.engine.connect() as connection:
            await connection.execution_options(isolation_level=self.isolation)
            async with connection.begin():
                result = await connection.execute(self.upsert, self.params(rows))
                applied(result.all(), len(rows))

    async def load_many(self, keys: list[str]) -> dict[str, JSONValue]:
        params = {"keys": self.keys_param(keys)}
        async with self.engine.connect() as connection:
            found: dict[str, str] = dict(
                (await connection.execute(self.select_values, params)).all()
            )
        return {key: json.loads(found[key]) if key in found else None for key in keys}

    def params(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        return self.fencing.rows([self.fencing.write("save", row) for row in rows])


class OldFenceCoreImpl(CoreImpl):
    """:class:`CoreImpl` with the fence of the store before issue 17, which share-locked the
    lease row only while it was live: the difference is what serialising a write with a
    take-over costs a save on its fast path."""

    name = "Core, old fence"

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine)
        backend = backend_for(engine.url)
        lease = snapshots.alias("lease")
        rows = backend.rows()
        live = select(literal(1)).where(
            lease.c.key == rows.lease_key, lease.c.updated_at > backend.server_now()
        )
        held = select(literal(1)).where(
            lease.c.key == rows.lease_key, backend.json_text(lease.c.value) == rows.mine
        )
        fence = case(
            (rows.mine == IGNORE_LEASES, true()),
            (rows.mine.is_(None), ~exists(live.with_for_update(read=True))),
            else_=exists(held.with_for_update(read=True)),
        )
        chosen = select(rows.key, rows.value, rows.updated_at).select_from(rows.table)
        self.upsert = backend.upsert(snapshots, chosen.where(fence), None)


def core(engine: AsyncEngine) -> list[Impl]:
    """The Core baselines on ``engine``, if the package still has what they are built from."""
    return [] if CORE_MISSING else [CoreImpl(engine), OldFenceCoreImpl(engine)]


class AiosqliteImpl(Impl):
    """``aiosqlite`` as its documentation shows it: execute, then commit; one connection, which
    the concurrent savers share."""

    name = "aiosqlite"

    def __init__(self, db: aiosqlite.Connection) -> None:
        super().__init__()
        self.db = db

    @classmethod
    async def open(cls, path: str) -> AiosqliteImpl:
        db = await aiosqlite.connect(path)
        await db.execute("PRAGMA busy_timeout = 10000")
        await db.execute("PRAGMA journal_mode = WAL")
        await db.execute("PRAGMA synchronous = FULL")
        await db.execute(SQLITE_DDL)
        await db.commit()
        return cls(db)

    async def save(self, key: str, value: JSONValue) -> None:
        params = (key, dumps(value), sqlite_time(datetime.now(UTC)))
        applied(list(await self.db.execute_fetchall(SQLITE_SAVE, params)), 1)
        await self.db.commit()

    async def load(self, key: str) -> JSONValue:
        rows = list(await self.db.execute_fetchall(SQLITE_LOAD, (key,)))
        return json.loads(rows[0][0]) if rows else None

    async def save_many(self, values: Mapping[str, JSONValue]) -> None:
        now = sqlite_time(datetime.now(UTC))
        params = [p for k, v in sorted(values.items()) for p in (k, dumps(v), now)]
        sql = UPSERT.format(values=", ".join(["(?, ?, ?)"] * len(values)))
        applied(list(await self.db.execute_fetchall(sql, params)), len(values))
        await self.db.commit()

    async def load_many(self, keys: list[str]) -> dict[str, JSONValue]:
        rows = await self.db.execute_fetchall(SQLITE_LOAD_MANY, (json.dumps(keys),))
        found: dict[str, str] = {row[0]: row[1] for row in rows}
        return {key: json.loads(found[key]) if key in found else None for key in keys}

    async def close(self) -> None:
        await self.db.close()


class AsyncpgImpl(Impl):
    """``asyncpg``: prepared statements on one connection; a pool of 15 for concurrent calls."""

    name = "asyncpg"

    def __init__(self, connection: Any, pool: Any, prepared: dict[str, Any]) -> None:
        super().__init__()
        self.connection = connection
        self.pool = pool
        self.prepared = prepared

    @classmethod
    async def open(cls, url: URL) -> AsyncpgImpl:
        options = connect_options(url)
        connection = await asyncpg.connect(**options)
        pool = await asyncpg.create_pool(min_size=RAW_POOL, max_size=RAW_POOL, **options)
        prepared = {
            "save": await connection.prepare(PG_SAVE),
            "load": await connection.prepare(PG_LOAD),
            "load_many": await connection.prepare(PG_LOAD_MANY),
        }
        return cls(connection, pool, prepared)

    async def save(self, key: str, value: JSONValue) -> None:
        applied(await self.prepared["save"].fetch(key, dumps(value), datetime.now(UTC)), 1)

    async def load(self, key: str) -> JSONValue:
        text = await self.prepared["load"].fetchval(key)
        return None if text is None else json.loads(text)

    async def save_many(self, values: Mapping[str, JSONValue]) -> None:
        now = datetime.now(UTC)
        params = [p for k, v in sorted(values.items()) for p in (k, dumps(v), now)]
        marks = ", ".join(f"(${i}, ${i + 1}::json, ${i + 2})" for i in range(1, len(params), 3))
        rows = await self.connection.fetch(UPSERT.format(values=marks), *params)
        applied(rows, len(values))

    async def load_many(self, keys: list[str]) -> dict[str, JSONValue]:
        found = dict(await self.prepared["load_many"].fetch(keys))
        return {key: json.loads(found[key]) if key in found else None for key in keys}

    async def save_at_once(self, key: str, value: JSONValue) -> None:
        applied(await self.pool.fetch(PG_SAVE, key, dumps(value), datetime.now(UTC)), 1)

    async def load_at_once(self, key: str) -> JSONValue:
        text = await self.pool.fetchval(PG_LOAD, key)
        return None if text is None else json.loads(text)

    async def close(self) -> None:
        await self.pool.close()
        await self.connection.close()


# -- the runs ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Results:
    """Every timing of one backend, by operation then implementation, with notes."""

    backend: str
    timings: dict[str, dict[str, Timing]]
    notes: dict[str, str]


async def run_backend(backend: str, impls: list[Impl], sizes: Sizes) -> Results:
    """Time every operation on every implementation of one backend, on one table."""
    timings: dict[str, dict[str, Timing]] = {}
    notes: dict[str, str] = {}
    values = {impl.name: {key: snapshot(i) for i, key in enumerate(impl.keys)} for impl in impls}
    store = next(impl for impl in impls if isinstance(impl, StoreImpl))
    for impl in impls:
        if isinstance(impl, CoreImpl):  # the store makes a prefix's lease row at its first write
            await store.store.save(f"{impl.name}/setup", 0)

    async def save_many(impl: Impl, _: int) -> None:
        await impl.save_many(values[impl.name])

    async def load_many(impl: Impl, _: int) -> None:
        await impl.load_many(impl.keys)

    async def save(impl: Impl, index: int) -> None:
        await impl.save(impl.keys[index % BATCH], snapshot(index))

    async def load(impl: Impl, index: int) -> None:
        await impl.load(impl.keys[index % BATCH])

    for operation, call, count, items in (
        ("save_many", save_many, sizes.batches, BATCH),
        ("load_many", load_many, sizes.batches, BATCH),
        ("save", save, sizes.sequential, 1),
        ("load", load, sizes.sequential, 1),
    ):
        await interleaved(impls, call, sizes.warmup if items == 1 else 2, items)
        timings[operation] = await interleaved(impls, call, count, items)
        before = store.statements  # counted on the store alone: Core shares its engine
        for index in range(3):
            await call(store, index)
        notes[operation] = f"{(store.statements - before) / 3:g} statement(s) a call"

    # Concurrent savers, then boots: each implementation in turn, a few rounds a turn; the
    # first turn warms up. The store's statements are counted in its own turns only.
    racing = [impl for impl in impls if not isinstance(impl, CoreImpl)]
    saves: dict[str, Timing] = {}
    statements = 0
    for turn in range(-1, max(1, sizes.rounds // sizes.chunk)):
        for impl in racing:

            async def save_at_once(task: int, round_: int, impl: Impl = impl) -> None:
                await impl.save_at_once(impl.keys[task], snapshot(round_))

            before = store.statements
            timing = await at_once(save_at_once, min(sizes.chunk, sizes.rounds))
            if turn >= 0:
                saves[impl.name] = merge(saves.get(impl.name), timing)
                if impl is store:
                    statements += store.statements - before
    timings[f"{TASKS} savers"] = saves
    count = len(saves["store"].latencies)
    notes[f"{TASKS} savers"] = f"{count / max(1, statements):.1f} saves a statement"

    boots: dict[str, Timing] = {}
    statements = 0
    for turn in range(-2, sizes.boots):
        for impl in racing:

            async def load_at_once(task: int, _: int, impl: Impl = impl) -> None:
                await impl.load_at_once(impl.keys[task])

            before = store.statements
            timing = await at_once(load_at_once, 1)
            if turn >= 0:
                boots[impl.name] = merge(boots.get(impl.name), timing)
                if impl is store:
                    statements += store.statements - before
    timings["boot"] = boots
    count = len(boots["store"].latencies)
    notes["boot"] = f"{count / max(1, statements):.1f} loads a statement"

    # Every implementation's writes are there, seen through the store: the baselines did the
    # work they were timed for (and committed it).
    for impl in impls:
        reader = impl if impl.own_database else store
        found = await reader.load_many(impl.keys)
        if any(value is None for value in found.values()):
            raise RuntimeError(f"{backend}: {impl.name} left keys unwritten")
    return Results(backend, timings, notes)


async def buffered_burst(path: Path, sizes: Sizes) -> tuple[dict[str, Timing], bool]:
    """``sizes.burst`` saves over 50 keys through ``BufferedStore``, then a check that every key
    holds its last value; against write-through saves, of which a fifth as many give the rate
    (each is a commit: the whole burst would take the longest part of the run)."""
    url = resolve_url(f"sqlite:///{path}")
    await upgrade(url)
    keys = [f"bot{i // 10}/SYM{i % 10}" for i in range(50)]
    last: dict[str, JSONValue] = {}

    async def burst(store: StateStore, count: int) -> Timing:
        clock = time.perf_counter_ns
        latencies = []
        start = clock()
        for index in range(count):
            key = keys[index % len(keys)]
            value: JSONValue = {"seq": index, "pnl": index * 0.5, "key": key}
            last[key] = value
            before = clock()
            await store.save(key, value)
            latencies.append(clock() - before)
        await store.flush()
        return Timing(latencies, [(count, clock() - start)])

    timings = {}
    async with SqlStore.from_url(url) as through:
        timings["store"] = await burst(through, sizes.burst // 5)
    async with SqlStore.from_url(url) as inner:
        async with BufferedStore(inner) as buffered:
            timings["BufferedStore"] = await burst(buffered, sizes.burst)
        async with SqlStore.from_url(url) as check:
            stored = await check.load_many(keys)
    return timings, stored == last


async def sync_against_async(backend: str, url: URL, sizes: Sizes) -> Line:
    """Sequential saves through a ``SyncStore`` and through the async store on this loop,
    taking turns call by call, each on keys of its own; the sync call blocks this loop while
    the sync store's own loop thread runs it, as it blocks a plain bot."""
    clock = time.perf_counter_ns
    spent: dict[str, list[int]] = {"SyncStore": [], "store": []}
    sync_keys, async_keys = keys_for("sync", BATCH), keys_for("async", BATCH)
    with SyncStore.from_url(url) as sync:
        async with SqlStore.from_url(url) as store:
            for index in range(sizes.warmup + sizes.sequential):
                value = snapshot(index)
                before = clock()
                sync.save(sync_keys[index % BATCH], value)
                middle = clock()
                await store.save(async_keys[index % BATCH], value)
                after = clock()
                if index >= sizes.warmup:
                    spent["SyncStore"].append(middle - before)
                    spent["store"].append(after - middle)
    mine, theirs = (Timing(spent[name], [(1, ns) for ns in spent[name]]) for name in spent)
    return Line(
        backend,
        "SyncStore save p50",
        us(mine.p50),
        f"async store save {us(theirs.p50)}",
        mine.p50 / theirs.p50,
        ("<=", SYNC_TARGET),
    )


# -- PostgreSQL -------------------------------------------------------------------------------


def connect_options(url: URL) -> dict[str, Any]:
    return {
        "user": url.username,
        "password": url.password,
        "host": url.host,
        "port": url.port,
        "database": url.database,
    }


async def postgres_database() -> tuple[URL, URL] | str:
    """A new database (admin URL, its URL), or why PostgreSQL is skipped."""
    admin = resolve_url(POSTGRES_ADMIN_URL)
    name = f"rustrade_bench_{os.getpid()}_{secrets.token_hex(4)}"
    try:
        connection = await asyncpg.connect(**connect_options(admin), timeout=5)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc}"
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return admin, admin.set(database=name)


async def drop_database(admin: URL, url: URL) -> None:
    connection = await asyncpg.connect(**connect_options(admin), timeout=5)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)')
    finally:
        await connection.close()


async def postgres_facts(connection: Any) -> str:
    facts = [f"PostgreSQL {await connection.fetchval('SHOW server_version')}"]
    for setting in ("fsync", "synchronous_commit"):
        facts.append(f"{setting}={await connection.fetchval(f'SHOW {setting}')}")
    with contextlib.suppress(asyncpg.PostgresError):  # data_directory needs a privileged role
        facts.append(
            f"data on {filesystem(Path(await connection.fetchval('SHOW data_directory')))}"
        )
    return ", ".join(facts)


# -- the machine ------------------------------------------------------------------------------


def filesystem(directory: Path) -> str:
    """The type of the filesystem ``directory`` is on, its device and mount point."""
    target = os.path.realpath(directory)
    best = ("", "unknown", "")
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            left, _, right = line.partition(" - ")
            mount = re.sub(r"\\(\d{3})", lambda m: chr(int(m[1], 8)), left.split()[4])
            fstype, source = [*right.split(), "", ""][:2]
            inside = target == mount or target.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) >= len(best[0]):
                best = (mount, fstype, source)
    mount, fstype, source = best
    return f"{fstype} ({source} on {mount})" if mount else fstype


def fsync_floor(directory: Path, count: int = 30) -> Timing:
    """``count`` fsyncs of a 4 KiB block rewritten in a file in ``directory``."""
    path = directory / "fsync-probe"
    latencies = []
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for _ in range(count):
            os.pwrite(descriptor, os.urandom(4096), 0)
            before = time.perf_counter_ns()
            os.fsync(descriptor)
            latencies.append(time.perf_counter_ns() - before)
    finally:
        os.close(descriptor)
        path.unlink()
    return Timing(latencies, [(1, ns) for ns in latencies])


def load_average() -> str:
    """The 1-minute load average: other jobs on the machine move every figure."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "unknown"


def machine_facts(directory: Path, fsync: Timing, postgres: str, load: str) -> list[str]:
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    packages = ", ".join(
        f"{name} {version(name)}"
        for name in ("rustrade-store", "SQLAlchemy", "aiosqlite", "asyncpg")
    )
    return [
        f"machine: {cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
        f"load average {load} (1 min; at the start, then the end of the run)",
        f"software: Python {platform.python_version()}, {packages}, "
        f"SQLite {sqlite3.sqlite_version}",
        f"database files: {directory} on {filesystem(directory)}; fsync floor there: "
        f"p50 {fsync.p50:,.0f} µs, max {max(fsync.latencies) / 1000:,.0f} µs "
        f"({len(fsync.latencies)} fsyncs of a 4 KiB block)",
        f"postgresql: {postgres}",
    ]


# -- the report -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Line:
    """One figure of the store beside its baseline; ``target`` is ``(">=" or "<=", bound)``."""

    backend: str
    figure: str
    value: str
    baseline: str
    ratio: float
    target: tuple[str, float] | None = None

    @property
    def met(self) -> bool | None:
        """None: reported, without a target."""
        if self.target is None:
            return None
        sign, bound = self.target
        return self.ratio >= bound if sign == ">=" else self.ratio <= bound

    @property
    def target_text(self) -> str:
        return "" if self.target is None else f"{self.target[0]} {self.target[1]:g}x"


def us(figure: float) -> str:
    return f"{figure:,.0f} µs"


def per_s(figure: float) -> str:
    return f"{figure:,.0f}/s"


def compare(results: Results) -> list[Line]:
    """The lines of one backend: each figure beside its baseline."""
    backend, timings = results.backend, results.timings
    raw = "asyncpg" if backend == "postgresql" else "aiosqlite"
    shared = f"{raw}, pool of {RAW_POOL}" if raw == "asyncpg" else f"{raw}, one connection"
    lines = []

    def add(
        figure: str,
        value: str,
        baseline: str,
        ratio: float,
        target: tuple[str, float] | None = None,
    ) -> None:
        lines.append(Line(backend, figure, value, baseline, ratio, target))

    for operation in ("save", "load"):
        mine, driver = timings[operation]["store"], timings[operation][raw]
        figure, text = f"{operation} p50", us(mine.p50)
        if "Core" in timings[operation]:
            core_p50 = timings[operation]["Core"].p50
            add(
                figure,
                text,
                f"Core, same statement {us(core_p50)}",
                mine.p50 / core_p50,
                ("<=", OVERHEAD_TARGET),
            )
        add(figure, text, f"{raw} {us(driver.p50)}", mine.p50 / driver.p50)
    if "Core, old fence" in timings["save"]:
        new, old = timings["save"]["Core"].p50, timings["save"]["Core, old fence"].p50
        add(
            "fence: Core save p50", us(new), f"Core, the fence before issue 17 {us(old)}", new / old
        )
    for operation in ("save_many", "load_many"):
        mine = timings[operation]["store"]
        for name in ("Core", raw):
            if name not in timings[operation]:
                continue
            other = timings[operation][name]
            add(
                f"{operation} {BATCH:,} p50",
                us(mine.p50),
                f"{name} {us(other.p50)}",
                mine.p50 / other.p50,
            )
    many, sequential = timings["load_many"]["store"], timings["load"]["store"]
    bound = LOAD_MANY_TARGET.get(backend)
    add(
        f"load_many {BATCH:,}: keys/s",
        per_s(many.median_rate),
        f"store sequential loads {per_s(sequential.median_rate)}",
        many.median_rate / sequential.median_rate,
        None if bound is None else (">=", bound),
    )

    def crowd(
        operation: str, single: str, label: str, against_sequential: float | None, *, vs_raw: bool
    ) -> None:
        """The rate of a crowd of calls against one caller alone and against the raw driver,
        then its p99 against the driver's."""
        mine, sequential, driver = (
            timings[operation]["store"],
            timings[single]["store"],
            timings[operation][raw],
        )
        value = per_s(mine.median_rate)
        add(
            f"{label}: rate",
            value,
            f"store sequential {per_s(sequential.median_rate)}",
            mine.median_rate / sequential.median_rate,
            None if against_sequential is None else (">=", against_sequential),
        )
        add(
            f"{label}: rate",
            value,
            f"{shared} {per_s(driver.median_rate)}",
            mine.median_rate / driver.median_rate,
            (">=", 1.0) if vs_raw else None,
        )
        add(f"{label}: p99", us(mine.p99), f"{shared} {us(driver.p99)}", mine.p99 / driver.p99)

    savers_target = SAVERS_TARGET.get(backend)
    crowd(
        f"{TASKS} savers",
        "save",
        f"{TASKS} savers",
        savers_target,
        vs_raw=savers_target is not None,
    )
    crowd("boot", "load", f"boot, {TASKS} loads", BOOT_TARGET, vs_raw=False)
    return lines


def print_timings(all_results: list[Results], burst: dict[str, Timing]) -> None:
    header = (
        f"{'backend':<12} {'operation':<11} {'impl':<14} {'mean/s':>9} {'median/s':>9} "
        f"{'p50 µs':>9} {'p99 µs':>9}  note"
    )
    print(header)
    print("-" * len(header))
    rows = [
        (results.backend, operation, name, timing, results.notes.get(operation, ""))
        for results in all_results
        for operation, by_impl in results.timings.items()
        for name, timing in by_impl.items()
    ]
    rows += [("sqlite file", "burst", name, timing, "") for name, timing in burst.items()]
    for backend, operation, name, timing, note in rows:
        row = f"{backend:<12} {operation:<11} {name:<14} {timing.rate:>9,.0f} "
        row += f"{timing.median_rate:>9,.0f} "
        row += f"{timing.p50:>9,.0f} {timing.p99:>9,.0f}  {note if name == 'store' else ''}"
        print(row.rstrip())


def ratio(figure: float) -> str:
    """Three decimals where a target's edge is (1.15x), one where ratios run to hundreds."""
    return f"{figure:.3f}" if figure < 10 else f"{figure:.1f}"


def print_lines(lines: list[Line]) -> None:
    header = (
        f"{'backend':<12} {'figure':<22} {'store':>11}  {'baseline':<38} {'ratio':>8} "
        f"{'target':>8}  result"
    )
    print(header)
    print("-" * len(header))
    for line in lines:
        result = "reported" if line.met is None else "met" if line.met else "NOT MET"
        print(
            f"{line.backend:<12} {line.figure:<22} {line.value:>11}  {line.baseline:<38} "
            f"{ratio(line.ratio):>7}x {line.target_text:>8}  {result}"
        )


def otel_lines(backend: str, found: dict[str, dict[str, list[int]]]) -> list[Line]:
    """The p50 of a save and a load with the API alone and with the SDK, against without."""
    lines = []
    for operation, by_variant in found.items():
        p50 = {variant: Timing(spent, []).p50 for variant, spent in by_variant.items()}
        without = p50[otel_cost.NONE]
        for variant, bound in otel_cost.TARGETS.items():
            lines.append(
                Line(
                    backend,
                    f"{operation} p50, {variant.split(',')[0]}",
                    us(p50[variant]),
                    f"without the extra {us(without)}",
                    p50[variant] / without,
                    ("<=", bound),
                )
            )
    return lines


async def measure_otel(store: SqlStore, sizes: Sizes) -> dict[str, dict[str, list[int]]]:
    """The otel extra's cost on ``store``; nothing when the SDK is not installed."""
    if OTEL_MISSING:
        return {}
    return await otel_cost.measure(store, sizes.sequential, sizes.warmup)


async def otel_only(sizes: Sizes, directory: Path | None) -> None:
    """The cost of the otel extra alone, on each backend."""
    if OTEL_MISSING:
        print(f"otel cost not measured: {OTEL_MISSING}")
        return
    lines = []
    with tempfile.TemporaryDirectory(prefix="rustrade-bench-", dir=directory) as tmp:
        memory = InMemoryStore()
        lines += otel_lines("memory", await measure_otel(memory, sizes))
        await memory.aclose()
        url = resolve_url(f"sqlite:///{Path(tmp) / 'otel.db'}")
        await upgrade(url)
        async with SqlStore.from_url(url) as store:
            lines += otel_lines("sqlite file", await measure_otel(store, sizes))
        databases = await postgres_database()
        if isinstance(databases, str):
            print(f"postgresql: skipped, unreachable ({databases})")
        else:
            admin, pg_url = databases
            try:
                await upgrade(pg_url)
                async with SqlStore.from_url(pg_url) as store:
                    lines += otel_lines("postgresql", await measure_otel(store, sizes))
            finally:
                await drop_database(admin, pg_url)
    print(f"load average {load_average()}; {sizes.sequential} calls of each, in turn\n")
    print_lines(lines)


async def main(sizes: Sizes, directory: Path | None) -> None:
    started = time.perf_counter()
    load = load_average()
    all_results: list[Results] = []
    postgres = "not run"
    with tempfile.TemporaryDirectory(prefix="rustrade-bench-", dir=directory) as tmp:
        files = Path(tmp)
        fsync = fsync_floor(files)

        memory = StoreImpl(InMemoryStore())
        await memory.load("warm")  # the in-memory store makes its schema at first use
        raw_memory = await AiosqliteImpl.open(":memory:")
        raw_memory.own_database = True
        impls: list[Impl] = [memory, *core(memory.store.engine), raw_memory]
        all_results.append(await run_backend("memory", impls, sizes))
        otel = {"memory": await measure_otel(memory.store, sizes)}
        for impl in impls:
            await impl.close()

        # One file for all three: each implementation writes its own keys, one at a time.
        url = resolve_url(f"sqlite:///{files / 'bench.db'}")
        await upgrade(url)
        store = StoreImpl(SqlStore.from_url(url))
        impls = [
            store,
            *core(store.store.engine),
            await AiosqliteImpl.open(str(files / "bench.db")),
        ]
        all_results.append(await run_backend("sqlite file", impls, sizes))
        otel["sqlite file"] = await measure_otel(store.store, sizes)
        for impl in impls:
            await impl.close()
        sync_lines = [await sync_against_async("sqlite file", url, sizes)]

        databases = await postgres_database()
        if isinstance(databases, str):
            postgres = f"skipped, unreachable ({databases})"
        else:
            admin, pg_url = databases
            try:
                await upgrade(pg_url)
                raw = await AsyncpgImpl.open(pg_url)
                postgres = await postgres_facts(raw.connection)
                store = StoreImpl(SqlStore.from_url(pg_url))
                impls = [store, *core(store.store.engine), raw]
                all_results.append(await run_backend("postgresql", impls, sizes))
                otel["postgresql"] = await measure_otel(store.store, sizes)
                for impl in impls:
                    await impl.close()
                sync_lines.append(await sync_against_async("postgresql", pg_url, sizes))
            finally:
                await drop_database(admin, pg_url)

        burst, burst_ok = await buffered_burst(files / "burst.db", sizes)
        facts = machine_facts(files, fsync, postgres, f"{load}, {load_average()}")

    print("\n".join(facts))
    print(
        f"sizes: {sizes.sequential} sequential calls per implementation; {TASKS} tasks x "
        f"{sizes.rounds} saves; {sizes.boots} boots of {TASKS} loads; {sizes.batches} batches of "
        f"{BATCH:,}; a burst of {sizes.burst:,} saves over 50 keys ({sizes.burst // 5:,} written "
        "through). Rates count keys, latencies "
        "are per call.\n"
    )
    print_timings(all_results, burst)
    print()
    lines = [line for results in all_results for line in compare(results)]
    buffered, through = burst["BufferedStore"], burst["store"]
    lines.append(
        Line(
            "sqlite file",
            "BufferedStore burst",
            per_s(buffered.rate),
            f"store write-through {per_s(through.rate)}",
            buffered.rate / through.rate,
            (">=", BURST_TARGET),
        )
    )
    lines += sync_lines
    lines += [line for backend, found in otel.items() for line in otel_lines(backend, found)]
    print_lines(lines)
    if OTEL_MISSING:
        print(f"otel extra's cost not measured, so no otel lines ({OTEL_MISSING})")
    if "postgresql" not in {results.backend for results in all_results}:
        print(f"postgresql: no lines, {postgres}")
    if CORE_MISSING:
        print(f"Core baseline not built, so no overhead lines ({CORE_MISSING})")
    print(f"\nBufferedStore burst: every key holds its last value after flush(): {burst_ok}")
    targets = [line for line in lines if line.met is not None]
    missed = [
        f"{line.backend} {line.figure} {ratio(line.ratio)}x (target {line.target_text})"
        for line in targets
        if not line.met
    ]
    print(f"targets met: {len(targets) - len(missed)} of {len(targets)}")
    for miss in missed:
        print(f"  not met: {miss}")
    print(f"run time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument(
        "--dir", type=Path, default=None, help="where the database files go (default: the TMPDIR)"
    )
    parser.add_argument(
        "--otel-only", action="store_true", help="only the cost of the otel extra (otel_cost.py)"
    )
    arguments = parser.parse_args()
    sizes = QUICK if arguments.quick else FULL
    asyncio.run((otel_only if arguments.otel_only else main)(sizes, arguments.dir))
    sys.exit(0)
