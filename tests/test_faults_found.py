"""Regression tests for the faults an outside review found in the store before its rewrite.

- ``load_many`` of more keys than one query holds was several snapshots: a ``save_many``
  committed between its queries came back half applied.
- One store used from a second event loop: after ``asyncio.run`` ended, pooled connections of
  the closed loop broke the next run; two loops at once got raw ``RuntimeError`` or hung. Also
  checked: a run that ends with calls still in flight leaves the store usable by the next.
- MariaDB: a stalled connection was retried (two timeouts) and blamed on
  ``max_allowed_packet``.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections import Counter
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import event

from rustrade_store import SqlStore, StorageError

from .helpers import open_store
from .proxy import TcpProxy

if TYPE_CHECKING:
    from collections.abc import Callable

    from sqlalchemy import URL

    from rustrade_store import JSONValue

HANG_GUARD = 120.0
"""Seconds after which a call or a thread counts as hung: far above anything here, so a slow
shared machine never fails a test, while one that would wait forever still does."""

SERVERS = [
    "sqlite",
    pytest.param("postgres", marks=pytest.mark.postgres),
    pytest.param("mariadb", marks=pytest.mark.mariadb),
]

ABOVE_OLD_QUERY_LIMIT = {"sqlite": 32_766 + 1_000, "postgres": 100_000 + 1_000, "mariadb": 25_000}
"""Keys per load_many: more than the old store's keys per query (SQLite 32,766, PostgreSQL
100,000), and more than two of MariaDB's 10,000, so that the read took several queries."""

OTHER_LOOP = "in use by another running event loop"


def unique(prefix: str) -> str:
    """A key prefix of its own: the server databases are shared by the whole run."""
    return f"{prefix}/{secrets.token_hex(4)}"


def generation(value: JSONValue) -> int:
    assert isinstance(value, dict), value
    gen = value["gen"]
    assert isinstance(gen, int), value
    return gen


class ThreadHung(Exception):
    """A thread still running after ``HANG_GUARD`` seconds."""


def in_threads(*works: Callable[[], object]) -> list[BaseException | None]:
    """Run each of ``works`` in a thread of its own, all at once, and wait for them: the error
    each raised, or None; a thread still running after ``HANG_GUARD`` is :class:`ThreadHung`."""
    raised: dict[int, BaseException] = {}

    def target(index: int, work: Callable[[], object]) -> None:
        try:
            work()
        except BaseException as exc:  # handed to the test, which fails with it
            raised[index] = exc

    threads = [
        # daemon: a hung thread cannot keep the test run from exiting
        threading.Thread(target=target, args=(index, work), daemon=True)
        for index, work in enumerate(works)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(HANG_GUARD)
    return [
        ThreadHung(f"the thread did not end within {HANG_GUARD} s")
        if thread.is_alive()
        else raised.get(index)
        for index, thread in enumerate(threads)
    ]


# -- 1. load_many is one snapshot ----------------------------------------------------------------


@pytest.mark.parametrize("backend", SERVERS)
async def test_load_many_is_one_snapshot_when_a_save_many_commits_between_its_queries(
    store: SqlStore, store_url: URL, backend: str
) -> None:
    """A ``save_many`` from another store, committed while a large ``load_many`` is between two
    of its queries (an engine event starts it before the second and waits for its commit), is
    seen whole or not at all: every key it wrote comes back from one generation.

    The keys asked for outnumber the old store's keys per query; only a spread of them is
    stored, so that the writer stays cheap and covers every one of the old chunks."""
    prefix = unique("snapshot")
    asked = [f"{prefix}/{index:06d}" for index in range(ABOVE_OLD_QUERY_LIMIT[backend])]
    stored = [*asked[::100], asked[-1]]
    await store.save_many({key: {"gen": 0} for key in stored})

    def write_generation_1() -> None:
        async def write() -> None:
            async with SqlStore.from_url(store_url) as writer:
                await writer.save_many({key: {"gen": 1} for key in stored})

        asyncio.run(write())  # a loop and a thread of its own: the reader's loop waits here

    written: list[BaseException | None] = []
    selects = 0

    def before_select(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        nonlocal selects
        if statement.lstrip().upper().startswith("SELECT"):
            selects += 1
            if selects == 2:  # the read's first query has run, its second is about to
                written.extend(in_threads(write_generation_1))

    event.listen(store.engine.sync_engine, "before_cursor_execute", before_select)
    try:
        loaded = await asyncio.wait_for(store.load_many(asked), HANG_GUARD)
    finally:
        event.remove(store.engine.sync_engine, "before_cursor_execute", before_select)
    assert written in ([], [None]), f"the writer failed: {written}"
    assert len(loaded) == len(asked)
    assert {key for key, value in loaded.items() if value is not None} == set(stored)
    seen = Counter(generation(loaded[key]) for key in stored)
    assert len(seen) == 1, f"one save_many seen half applied: {dict(seen)} keys per generation"
    if written:  # the write landed mid-read: the read kept the snapshot it started with
        assert seen == {0: len(stored)}
        after = await store.load_many(stored)
        assert {generation(value) for value in after.values()} == {1}


@pytest.mark.mariadb
async def test_load_many_never_sees_a_concurrent_save_many_half_applied(
    mariadb_url: URL,
) -> None:
    """On MariaDB, 25,000 keys (three queries): a writer on a second store flips every key to
    the next generation with one ``save_many`` at a time while a reader loads them all again
    and again; every read holds one generation."""
    keys = [f"{unique('flip')}/{index:05d}" for index in range(25_000)]
    flips = 3
    async with SqlStore.from_url(mariadb_url) as reader, SqlStore.from_url(mariadb_url) as writer:
        await writer.save_many({key: {"gen": 0} for key in keys})
        done = asyncio.Event()

        async def write() -> None:
            try:
                for gen in range(1, flips + 1):
                    await writer.save_many({key: {"gen": gen} for key in keys})
            finally:
                done.set()

        reads: list[Counter[int]] = []

        async def read() -> None:
            while not done.is_set():
                loaded = await reader.load_many(keys)
                reads.append(Counter(generation(value) for value in loaded.values()))

        await asyncio.wait_for(asyncio.gather(write(), read()), HANG_GUARD)
        final = await reader.load_many(keys)
    mixed = [dict(read) for read in reads if len(read) > 1]
    assert not mixed, f"{len(mixed)} of {len(reads)} reads mixed generations: {mixed[:3]}"
    assert {generation(value) for value in final.values()} == {flips}


# -- 2. one store, two event loops ----------------------------------------------------------------


async def use_once(store: SqlStore, prefix: str, value: int) -> dict[str, JSONValue]:
    """Save and load through every path (single calls batched together, and the many-key
    calls) and return what was read back."""
    singles = [f"{prefix}/single/{index}" for index in range(4)]
    many = {f"{prefix}/many/{index}": value for index in range(4)}
    await asyncio.gather(*(store.save(key, value) for key in singles), store.save_many(many))
    loaded = await asyncio.gather(*(store.load(key) for key in singles))
    return dict(zip(singles, loaded, strict=True)) | await store.load_many(many)


def guarded(program: Callable[[], object]) -> None:
    """Run the synchronous ``program`` in a thread of its own: a hang fails the test."""
    [error] = in_threads(program)
    if error is not None:
        raise AssertionError(f"the program raised or hung: {error!r}") from error


@pytest.mark.parametrize("backend", ["memory", *SERVERS])
def test_one_store_serves_one_asyncio_run_after_another(backend: str, store_url: URL) -> None:
    """A synchronous program calls ``asyncio.run`` once per step with the same store: each run
    is a new event loop, and the store serves it (pooled connections belong to the first)."""
    store = open_store(backend, store_url)
    prefix = unique("runs")
    reads: list[dict[str, JSONValue]] = []

    def program() -> None:
        try:
            for step in range(3):
                reads.append(asyncio.run(use_once(store, prefix, step)))
        finally:
            asyncio.run(store.aclose())

    try:
        guarded(program)
    finally:
        for step, loaded in enumerate(reads):
            assert set(loaded.values()) == {step}, f"run {step} read {loaded}"


@pytest.mark.parametrize("backend", ["memory", *SERVERS])
def test_two_event_loops_at_once_either_work_or_get_a_clear_storage_error(
    backend: str, store_url: URL
) -> None:
    """Two threads each run ``asyncio.run`` with the same store at the same time: no call hangs
    and none raises anything but a StorageError saying the store is in use by another running
    event loop; the calls that return read what they saved, and the store serves a later run."""
    store = open_store(backend, store_url)
    prefix = unique("threads")
    rounds = 100
    start, end = threading.Barrier(2), threading.Barrier(2)
    outcomes: dict[str, list[object]] = {}

    async def use(name: str) -> list[object]:
        await asyncio.to_thread(start.wait, HANG_GUARD)  # both loops run from here ...
        results: list[object] = []
        for step in range(rounds):
            try:
                loaded = await use_once(store, f"{prefix}/{name}", step)
            except Exception as exc:  # classified below: only a StorageError may come out
                results.append(exc)
            else:
                results.append(set(loaded.values()) == {step} or f"read {loaded}")
        await asyncio.to_thread(end.wait, HANG_GUARD)  # ... to here, so their calls overlap
        return results

    def run(name: str) -> Callable[[], None]:
        def target() -> None:
            try:
                outcomes[name] = asyncio.run(use(name))
            except BaseException:
                start.abort()  # the other thread stops waiting for this one
                end.abort()
                raise

        return target

    failures = dict(zip("ab", in_threads(run("a"), run("b")), strict=True))
    hung = [name for name, error in failures.items() if isinstance(error, ThreadHung)]
    # A loop stuck in a call holds the store: closing it could hang too, so it is left open.
    assert not hung, f"thread(s) {hung} hung; all: {failures}"
    later: list[dict[str, JSONValue]] = []

    def afterwards() -> None:
        try:
            later.append(asyncio.run(use_once(store, f"{prefix}/later", 99)))
        finally:
            asyncio.run(store.aclose())

    try:
        assert failures == {"a": None, "b": None}, f"asyncio.run raised: {failures}"
        wrong: list[str] = []
        for name, results in sorted(outcomes.items()):
            for step, result in enumerate(results):
                if result is True:
                    continue
                if isinstance(result, StorageError) and OTHER_LOOP in str(result):
                    continue
                wrong.append(f"thread {name}, round {step}: {result!r}")
        assert not wrong, "\n".join(wrong)
        assert any(result is True for results in outcomes.values() for result in results)
    finally:
        guarded(afterwards)
    assert set(later[0].values()) == {99}


@pytest.mark.parametrize("backend", ["memory", *SERVERS])
def test_asyncio_run_returns_with_calls_still_in_flight(backend: str, store_url: URL) -> None:
    """A main coroutine that returns while saves and loads it started are still running:
    ``asyncio.run`` cancels them and returns (no call waits for ever on a batch that its
    cancelled task will never finish), and the store serves the next run."""
    store = open_store(backend, store_url)
    prefix = unique("in-flight")

    async def leave_calls_running() -> None:
        await store.save(f"{prefix}/warm", 0)
        pool = store.engine.sync_engine.pool
        taken = asyncio.Event()

        def checkout(*_: object) -> None:
            taken.set()

        event.listen(pool, "checkout", checkout)
        try:
            # Held here: the event loop keeps only weak references to its tasks.
            tasks: dict[str, list[asyncio.Task[Any]]] = {
                "save": [asyncio.create_task(store.save(f"{prefix}/{n}", n)) for n in range(8)],
                "load": [asyncio.create_task(store.load(f"{prefix}/{n}")) for n in range(8)],
            }
            await taken.wait()  # a call has taken its connection: main returns now
        finally:
            event.remove(pool, "checkout", checkout)
        assert not all(task.done() for task in tasks["save"]), "no save was in flight"

    async def next_run() -> tuple[JSONValue, dict[str, JSONValue]]:
        return await store.load(f"{prefix}/warm"), await use_once(store, prefix, 1)

    reads: list[tuple[JSONValue, dict[str, JSONValue]]] = []

    def program() -> None:
        try:
            asyncio.run(leave_calls_running())
            reads.append(asyncio.run(next_run()))
        finally:
            asyncio.run(store.aclose())

    guarded(program)
    warm, loaded = reads[0]
    assert warm == 0, "what was saved before the interrupted run is gone"
    assert set(loaded.values()) == {1}


# -- 3. MariaDB: a stalled connection is a timeout ------------------------------------------------


@pytest.mark.mariadb
@pytest.mark.parametrize("call", ["save", "save_many"])
async def test_a_stalled_mariadb_connection_is_one_timeout_not_a_packet_limit(
    mariadb_url: URL, call: str
) -> None:
    """The server stops answering mid-write (a frozen proxy): the write raises a StorageError
    that says it timed out and does not blame max_allowed_packet, after one attempt: one
    connection taken from the pool, and no new one tried (a retry would wait a second timeout,
    on a pooled connection or a new one)."""
    async with TcpProxy(mariadb_url.host or "127.0.0.1", mariadb_url.port or 3306) as proxy:
        store = SqlStore.from_url(mariadb_url.set(port=proxy.port), timeout=1)
        key = unique("stall")
        checkouts = 0

        def checked_out(*_: object) -> None:
            nonlocal checkouts
            checkouts += 1

        event.listen(store.engine.sync_engine.pool, "checkout", checked_out)
        try:
            await store.save(key, "before")  # connected, schema checked
            checkouts = 0
            connections = proxy.mark()
            proxy.freeze()
            write = store.save(key, "stalled") if call == "save" else store.save_many({key: 1})
            with pytest.raises(StorageError) as caught:
                await asyncio.wait_for(write, HANG_GUARD)
            message = str(caught.value)
            assert "timed out" in message, message
            assert "max_allowed_packet" not in message, message
            attempts = checkouts + proxy.mark() - connections
            assert attempts == 1, (
                f"{checkouts} pooled connection(s) taken and "
                f"{proxy.mark() - connections} new one(s) tried: {message}"
            )
            await proxy.restore()
            assert await store.load(key) in ("before", "stalled", 1)
        finally:
            await proxy.restore()
            await store.aclose()
