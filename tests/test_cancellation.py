"""Tasks cancelled in the middle of save, save_many and load: old value or new, never partial,
and the pool gets every connection back (its own counters say so)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import event

from rustrade_store import InMemoryStore, SqlStore, StorageError

from .helpers import asyncpg_connection, checked_out

if TYPE_CHECKING:
    import asyncpg
    import asyncpg.transaction
    from sqlalchemy import URL

    from rustrade_store.codec import JSONValue

HANG_GUARD = 120.0
"""Seconds after which a program or a call counts as hung, far above any timeout here."""

ROUNDS = 150
KEYS = [f"cancel/{index:02d}" for index in range(20)]


def generation(value: JSONValue) -> int:
    assert isinstance(value, dict), value
    gen = value["gen"]
    assert isinstance(gen, int)
    assert value["pad"] == "x" * 2000, "a value came back partial"
    return gen


async def typical_duration(store: SqlStore) -> float:
    """The median time of a save_many of every key here: timings differ from machine to machine."""
    times = []
    for _ in range(7):
        started = time.perf_counter()
        await store.save_many({key: {"gen": 0, "pad": "x" * 2000} for key in KEYS})
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


async def test_cancelled_operations_leave_old_or_new_and_leak_nothing(store: SqlStore) -> None:
    rng = random.Random(4)
    await store.save_many({key: {"gen": 0, "pad": "x" * 2000} for key in KEYS})
    state = dict.fromkeys(KEYS, 0)
    typical = await typical_duration(store)
    outcomes = {"cancelled": 0, "completed": 0}
    for gen in range(1, ROUNDS + 1):
        kind = rng.choice(["save", "save_many", "load"])
        key = rng.choice(KEYS)
        new: JSONValue = {"gen": gen, "pad": "x" * 2000}
        task: asyncio.Task[object]
        if kind == "save":
            task = asyncio.create_task(store.save(key, new))
        elif kind == "save_many":
            task = asyncio.create_task(store.save_many(dict.fromkeys(KEYS, new)))
        else:
            task = asyncio.create_task(store.load(key))
        # Cancel anywhere from before the first await to after the commit: a few event loop
        # turns, or a while as long as up to twice a typical operation on this machine.
        if rng.random() < 0.3:
            for _ in range(rng.randrange(0, 12)):
                await asyncio.sleep(0)
        else:
            await asyncio.sleep(rng.uniform(0, 2 * typical))
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            outcomes["cancelled"] += 1
        else:
            outcomes["completed"] += 1

        loaded = await store.load_many(KEYS)
        gens = {name: generation(value) for name, value in loaded.items()}
        if kind == "save":
            assert gens[key] in (state[key], gen), f"round {gen}: {key} is {gens[key]}"
            changed = {name for name in KEYS if gens[name] != state[name]}
            assert changed <= {key}, f"round {gen}: {changed} changed by a save of {key}"
        elif kind == "save_many":
            if gens != state:
                assert set(gens.values()) == {gen}, f"round {gen}: save_many applied in part"
        else:
            assert gens == state, f"round {gen}: a cancelled load changed {gens}"
        state = gens
        assert checked_out(store) == 0, f"round {gen}: a connection was not returned"
    # Both sides of the race were exercised, and the store still works.
    print(outcomes)
    assert outcomes["cancelled"] >= 10, outcomes
    assert outcomes["completed"] >= 10, outcomes
    await store.save("after", {"ok": True})
    assert await store.load("after") == {"ok": True}
    assert checked_out(store) == 0


@pytest.mark.parametrize("limit", [0.0002, 0.0005, 0.002])
async def test_wait_for_timeouts_never_break_the_store(store: SqlStore, limit: float) -> None:
    """``asyncio.wait_for`` with tiny timeouts, many tasks at once: the callers' way to cancel."""
    await store.save_many({key: {"gen": 0, "pad": "x" * 2000} for key in KEYS})

    async def attempt(index: int) -> None:
        new: JSONValue = {"gen": index, "pad": "x" * 2000}
        work = (
            store.save(KEYS[index % len(KEYS)], new)
            if index % 3 == 0
            else store.save_many({KEYS[index % len(KEYS)]: new, KEYS[0]: new})
            if index % 3 == 1
            else store.load(KEYS[index % len(KEYS)])
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(work, limit)

    await asyncio.gather(*(attempt(index) for index in range(1, 61)))
    loaded = await store.load_many(KEYS)
    for value in loaded.values():
        generation(value)
    assert checked_out(store) == 0
    await store.save("after", 1)
    assert await store.load("after") == 1


async def _blocked_on_a_lock(observer: asyncpg.Connection) -> None:
    """Wait until some session of this database waits for a row lock."""
    for _ in range(1000):
        waiting = await observer.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        if waiting:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the save never reached the row lock")


async def _lock_row(session: asyncpg.Connection, key: str) -> asyncpg.transaction.Transaction:
    """Take ``key``'s row lock in a transaction of ``session``; roll it back to release it."""
    holder = session.transaction()
    await holder.start()
    await session.execute("UPDATE snapshots SET value = value WHERE key = $1", key)
    return holder


@pytest.mark.postgres
@pytest.mark.parametrize("ending", ["cancelled", "timed out"])
async def test_a_save_that_ended_in_failure_is_never_written_later(
    postgres_url: URL, ending: str
) -> None:
    """A save blocked on another session's row lock, then cancelled or timed out: when the caller
    gets its CancelledError (once its statement has ended, within the store's timeout) or
    StorageError, the statement is dead on the server too, so the lock's release cannot let it
    write a value the caller was told was not saved."""
    store = SqlStore.from_url(postgres_url, timeout=0.3 if ending == "timed out" else 1)
    other = await asyncpg_connection(postgres_url)
    try:
        for attempt in range(3):
            await store.save("ghost/k", attempt)
            holder = await _lock_row(other, "ghost/k")
            save = asyncio.create_task(store.save("ghost/k", "must never land"))
            await _blocked_on_a_lock(other)
            if ending == "cancelled":
                save.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await save
            else:
                with pytest.raises(StorageError, match="timed out"):
                    await save
            await holder.rollback()
            await asyncio.sleep(0.3)  # a statement still alive would take the lock and commit
            assert await store.load("ghost/k") == attempt, f"attempt {attempt}: written late"
        assert store.engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    finally:
        await other.close()
        await store.aclose()


async def _blocked_save(
    url: URL, key: str
) -> tuple[SqlStore, asyncpg.Connection, asyncpg.transaction.Transaction]:
    """A store whose one connection will block on ``key``'s row lock, held by another session."""
    store = SqlStore.from_url(url, pool_size=1, max_overflow=0, timeout=2)
    await store.save(key, "before")
    other = await asyncpg_connection(url)
    return store, other, await _lock_row(other, key)


@pytest.mark.postgres
async def test_a_cancellation_with_the_connection_lost_stays_a_cancellation(
    postgres_url: URL, postgres_admin_url: URL
) -> None:
    """The connection dies and the task is cancelled in the same turn (a deploy restarts the
    server while a timeout fires): CancelledError, not a retry that writes the value."""
    store, other, holder = await _blocked_save(postgres_url, "lost/k")
    admin = await asyncpg_connection(postgres_admin_url)
    try:
        pooled = await store.engine.raw_connection()
        driver = pooled.driver_connection
        assert driver is not None
        pid = driver.get_server_pid()
        save: asyncio.Task[None] | None = None

        def cancel_the_save(_: object) -> None:
            assert save is not None
            save.cancel()

        driver.add_termination_listener(cancel_the_save)
        pooled.close()
        save = asyncio.create_task(store.save("lost/k", "must never land"))
        await _blocked_on_a_lock(other)
        await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
        with pytest.raises(asyncio.CancelledError):
            await save
        await holder.rollback()
        await asyncio.sleep(0.3)
        assert await store.load("lost/k") == "before"
    finally:
        await admin.close()
        await other.close()
        await store.aclose()


@pytest.mark.postgres
async def test_a_save_closed_mid_call_leaves_a_working_store(postgres_url: URL) -> None:
    """The coroutine of a blocked save is closed (GeneratorExit, as when an async generator
    holding it is collected): the busy connection is replaced, and the next call works."""
    store, other, holder = await _blocked_save(postgres_url, "closed/k")
    try:
        save = store.save("closed/k", "must never land")
        save.send(None)  # runs until the statement waits for the row lock
        save.close()
        assert await store.load("closed/k") == "before"
        await holder.rollback()
        await asyncio.sleep(0.3)
        assert await store.load("closed/k") == "before"
        assert store.engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    finally:
        await other.close()
        await store.aclose()


SHUTDOWN_CHILD = """
import asyncio, sys
from rustrade_store import InMemoryStore, SqlStore

async def main() -> None:
    url = sys.argv[1]
    store = InMemoryStore() if url == "memory" else SqlStore.from_url(url)
    await store.save("warm", 0)
    loop = asyncio.get_running_loop()
    for index in range(50):
        loop.create_task(store.save(f"k{index}", index))
        loop.create_task(store.load(f"k{index}"))
    loop.create_task(store.save_many({f"many/{index}": index for index in range(50)}))
    for _ in range(int(sys.argv[2])):  # main returns while saves are in flight
        await asyncio.sleep(0)

asyncio.run(main())
print("exited")
"""


@pytest.mark.parametrize("steps", [1, 4, 16])
def test_a_program_ends_while_saves_are_in_flight(backend: str, store_url: URL, steps: int) -> None:
    """asyncio.run cancels the tasks left at the end, the store's batch tasks among them: no
    caller may be left waiting on a batch that will never answer (that hung the program), and
    the program ends quietly: a save_many cut off before its first write under a prefix logged
    "unhandled exception during asyncio.run() shutdown" for an error only its caller needed."""
    url = "memory" if backend == "memory" else store_url.render_as_string(hide_password=False)
    ended = subprocess.run(
        [sys.executable, "-c", SHUTDOWN_CHILD, url, str(steps)],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        check=False,
    )
    assert ended.returncode == 0, ended.stderr
    assert ended.stdout.strip() == "exited"
    assert "unhandled exception" not in ended.stderr, ended.stderr


def test_a_store_serves_the_next_event_loop(backend: str, store_url: URL) -> None:
    """A store used by concurrent calls in one asyncio.run and then in another (a sync wrapper,
    function-scoped test loops): the second run's calls are answered."""
    store = InMemoryStore() if backend == "memory" else SqlStore.from_url(store_url)

    async def first() -> None:
        await asyncio.gather(store.save("k", 1), store.load("k"), store.save("j", 2))

    async def second() -> tuple[object, object]:
        return await asyncio.wait_for(asyncio.gather(store.load("k"), store.load("j")), HANG_GUARD)

    asyncio.run(first())
    assert list(asyncio.run(second())) == [1, 2]
    asyncio.run(store.aclose())


def test_a_loop_ending_mid_statement_leaves_the_store_whole(backend: str, store_url: URL) -> None:
    """``asyncio.run`` cancels every task left when its main coroutine returns, the store's own
    among them, at whatever step of each: the next loop finds every earlier snapshot (an
    in-memory database kept), each cut-off save stored whole or not at all, and the store
    writing (no write lock left held)."""
    store = InMemoryStore() if backend == "memory" else SqlStore.from_url(store_url)
    value = {"pad": "x" * 20_000}

    async def cut_off(steps: int) -> None:
        loop = asyncio.get_running_loop()
        left = [loop.create_task(store.save(f"cut/{i}", value | {"i": i})) for i in range(20)]
        left.append(loop.create_task(store.save_many({f"cut/many/{i}": value for i in range(200)})))
        for _ in range(steps):
            await asyncio.sleep(0)

    async def check(round_: int) -> None:
        await store.save(f"round/{round_}", round_)
        for earlier in range(round_ + 1):
            assert await store.load(f"round/{earlier}") == earlier
        for index in range(20):
            assert await store.load(f"cut/{index}") in (None, value | {"i": index})
        many = await store.load_many([f"cut/many/{i}" for i in range(200)])
        assert len(many) in (0, 200), "a save_many was stored in part"

    try:
        for round_ in range(12):
            asyncio.run(asyncio.wait_for(check(round_), HANG_GUARD))
            asyncio.run(cut_off(round_ * 3))
        asyncio.run(asyncio.wait_for(check(12), HANG_GUARD))
    finally:
        asyncio.run(store.aclose())


def test_a_loop_ending_while_a_connection_closes_keeps_an_in_memory_database() -> None:
    """The loop ends just as a write's connection goes back to the pool. SQLAlchemy's context
    manager closed it in a task of its own, which ``asyncio.run``'s sweep cut: the one
    connection of an in-memory database was discarded, and every snapshot with it."""
    store = InMemoryStore()
    asyncio.run(store.save("kept", 1))

    async def ends_as_a_connection_closes() -> None:
        loop = asyncio.get_running_loop()
        closing = loop.create_future()

        def returning(*_: object) -> None:
            if not closing.done():
                closing.set_result(None)

        pool = store.engine.sync_engine.pool
        event.listen(pool, "reset", returning)
        try:
            writing = loop.create_task(store.save_many({"a": 1, "b": 2}))
            await closing
        finally:
            event.remove(pool, "reset", returning)
        assert not writing.done()

    try:
        asyncio.run(ends_as_a_connection_closes())
        assert asyncio.run(store.load("kept")) == 1
        assert asyncio.run(store.load_many(["a", "b"])) in (
            {"a": 1, "b": 2},
            {"a": None, "b": None},
        )
    finally:
        asyncio.run(store.aclose())
