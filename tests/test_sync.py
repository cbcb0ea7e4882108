"""``SyncStore`` through the conformance kit, and what the sync facade adds: its leases' ``on_lost``
in a thread of its own, calls from the wrong thread, closing, engines used elsewhere, its
buffered form and its iterators.

The kit runs on the sync store through a thin adapter, :class:`AsyncOverSync`: each awaited
method runs the sync method of the same name in a worker thread, so the kit's concurrent tests
call the sync store from many threads at once. Nothing else is translated, so the sync facade and
the async store answer the same tests.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import TYPE_CHECKING, Any, Self

import pytest
from sqlalchemy import event

from rustrade_store import (
    ConfigurationError,
    ConflictError,
    LeaseLostError,
    Snapshot,
    SqlStore,
    StateStore,
    StorageError,
    SyncBufferedStore,
    SyncLease,
    SyncStore,
)
from rustrade_store.testing import StateStoreContract, StateStoreLeaseContract

from .helpers import asyncpg_connection, empty
from .test_lease_processes import PATIENCE
from .test_lease_processes import empty as cleared
from .test_sync_processes import waiting_on_a_lock

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
    from datetime import datetime
    from types import TracebackType

    from sqlalchemy import URL

    from rustrade_store import JSONInput, JSONValue, LeaseInfo


class AsyncLeaseOverSync:
    """A :class:`SyncLease` as the kit's ``LeaseHandle``: each call in a worker thread."""

    def __init__(self, lease: SyncLease) -> None:
        self.sync = lease

    prefix = property(lambda self: self.sync.prefix)
    token = property(lambda self: self.sync.token)
    holder = property(lambda self: self.sync.holder)
    expires_at = property(lambda self: self.sync.expires_at)
    held = property(lambda self: self.sync.held)

    async def acquire(self, *, wait: float | None = None) -> Self:
        await asyncio.to_thread(self.sync.acquire, wait=wait)
        return self

    async def renew(self) -> None:
        await asyncio.to_thread(self.sync.renew)

    async def release(self) -> None:
        await asyncio.to_thread(self.sync.release)

    async def __aenter__(self) -> Self:
        await asyncio.to_thread(self.sync.__enter__)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.sync.__exit__, exc_type, exc, traceback)


class AsyncOverSync(StateStore):
    """A :class:`SyncStore` as the kit's store: each call in a worker thread."""

    def __init__(self, sync: SyncStore) -> None:
        self.sync = sync

    async def load(self, key: str) -> JSONValue:
        return await asyncio.to_thread(self.sync.load, key)

    async def save(self, key: str, value: JSONInput) -> None:
        await asyncio.to_thread(self.sync.save, key, value)

    async def load_many(self, keys: Iterable[str]) -> dict[str, JSONValue]:
        return await asyncio.to_thread(self.sync.load_many, keys)

    async def save_many(self, values: Mapping[str, JSONInput]) -> None:
        await asyncio.to_thread(self.sync.save_many, values)

    async def flush(self) -> None:
        await asyncio.to_thread(self.sync.flush)

    def check_writable(self, key: str) -> None:
        self.sync.check_writable(key)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.sync.close)

    def lease(
        self,
        prefix: str,
        *,
        ttl: float = 30.0,
        wait: float = 0.0,
        on_lost: Callable[[LeaseLostError], object] | None = None,
    ) -> AsyncLeaseOverSync:
        return AsyncLeaseOverSync(self.sync.lease(prefix, ttl=ttl, wait=wait, on_lost=on_lost))

    async def leases(self) -> list[LeaseInfo]:
        return await asyncio.to_thread(self.sync.leases)

    async def break_lease(self, prefix: str) -> LeaseInfo | None:
        return await asyncio.to_thread(self.sync.break_lease, prefix)


async def open_sync(backend: str, url: URL) -> SyncStore:
    """A sync store on an emptied database of ``backend`` (a private one for memory)."""
    if backend != "memory":
        async with SqlStore.from_url(url) as cleaner:
            await empty(cleaner)
    return SyncStore.from_url(url)


class TestSyncStoreContract(StateStoreContract):
    """Every backend, the sync store under the kit third parties use."""

    @pytest.fixture
    async def store(self, backend: str, store_url: URL) -> AsyncIterator[AsyncOverSync]:
        adapted = AsyncOverSync(await open_sync(backend, store_url))
        try:
            yield adapted
        finally:
            await adapted.aclose()


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ]
)
def shared(request: pytest.FixtureRequest) -> str:
    """A backend a second copy of the bot can reach (not a private in-memory database)."""
    name: str = request.param
    return name


@pytest.fixture
def shared_url(shared: str, request: pytest.FixtureRequest) -> URL:
    url: URL = request.getfixturevalue(f"{shared}_url")
    return url


class TestSyncStoreLeaseContract(StateStoreLeaseContract):
    """Leases of the sync store, under the kit's optional part."""

    @pytest.fixture
    async def store(self, shared: str, shared_url: URL) -> AsyncIterator[AsyncOverSync]:
        adapted = AsyncOverSync(await open_sync(shared, shared_url))
        try:
            yield adapted
        finally:
            await adapted.aclose()

    @pytest.fixture
    async def rival(self, shared_url: URL) -> AsyncIterator[AsyncOverSync]:
        adapted = AsyncOverSync(SyncStore.from_url(shared_url))
        try:
            yield adapted
        finally:
            await adapted.aclose()


# -- what the sync facade adds ----------------------------------------------------------------


@pytest.fixture
def sync(shared: str, shared_url: URL) -> Iterator[SyncStore]:
    store = asyncio.run(open_sync(shared, shared_url))
    with store:
        yield store


def test_on_lost_runs_in_its_own_thread_and_may_call_the_store(
    sync: SyncStore, shared_url: URL
) -> None:
    """A lease broken by an operator: the holder's next save raises LeaseLostError only once
    ``on_lost`` has run, in a thread that is neither the caller's nor the store's loop, and
    that callback's own calls to the store are answered (a save elsewhere, a load)."""
    heard: list[tuple[str, JSONValue, str]] = []

    def on_lost(error: LeaseLostError) -> None:
        sync.save("alerts/bot1", {"lost": str(error)})
        heard.append((threading.current_thread().name, sync.load("alerts/bot1"), str(error)))

    with sync.lease("bot1/", ttl=30, on_lost=on_lost):
        sync.save("bot1/breaker", {"halted": True})
        with SyncStore.from_url(shared_url) as operator:
            assert operator.break_lease("bot1/") is not None
        with pytest.raises(LeaseLostError):
            sync.save("bot1/breaker", {"halted": False})
        assert len(heard) == 1
        name, alert, message = heard[0]
        assert name.startswith("rustrade-store on_lost bot1/")
        assert alert == {"lost": message}
    assert sync.load("bot1/breaker") == {"halted": True}


def test_a_call_from_the_store_loop_thread_is_refused(sync: SyncStore) -> None:
    """Code the store runs on its own loop (here a SQLAlchemy event) that calls the sync store
    gets a StorageError saying so at once, and the call it interrupted goes on."""
    refused: list[StorageError] = []

    def listener(*_: Any) -> None:
        try:
            sync.load("inside")
        except StorageError as exc:
            refused.append(exc)

    event.listen(sync.engine.sync_engine, "before_cursor_execute", listener)
    try:
        sync.save("outside", 1)
    finally:
        event.remove(sync.engine.sync_engine, "before_cursor_execute", listener)
    assert refused
    assert "its own event loop thread" in str(refused[0])
    assert sync.load("outside") == 1


def test_a_closed_store_refuses_every_call(shared_url: URL) -> None:
    store = SyncStore.from_url(shared_url)
    store.save("k", 1)
    store.close()
    store.close()
    for call in (lambda: store.load("k"), lambda: store.save("k", 2), lambda: list(store.keys())):
        with pytest.raises(StorageError, match="closed"):
            call()


def test_iterators_page_through_every_key(sync: SyncStore) -> None:
    """``keys()`` and ``snapshots()`` are plain iterators over more than one page; one left
    unfinished does not hold the store up."""
    keys = [f"bot1/{index:05d}" for index in range(2500)]
    sync.save_many(dict.fromkeys(keys, 1))
    sync.save("other/x", 2)
    assert list(sync.keys("bot1/")) == keys
    assert [snapshot.key for snapshot in sync.snapshots()] == [*keys, "other/x"]
    first = next(iter(sync.keys()))
    assert first == keys[0]
    assert sync.count() == len(keys) + 1


@pytest.mark.parametrize(
    "server",
    [
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ],
)
def test_a_sync_store_over_an_engine_in_use_on_another_loop_is_refused(
    server: str, request: pytest.FixtureRequest
) -> None:
    """An engine with a connection lent out on another event loop is refused; one whose
    connections are only idle in its pool is taken, those connections dropped unused. (SQLite's
    connections, aiosqlite's threads, serve any loop.)"""
    async_store = SqlStore.from_url(request.getfixturevalue(f"{server}_url"))
    holding = threading.Event()
    go_on = threading.Event()

    async def hold() -> None:
        async with async_store.engine.connect():
            holding.set()
            await asyncio.to_thread(go_on.wait)
        await async_store.count()

    runner = threading.Thread(target=asyncio.run, args=(hold(),))
    runner.start()
    try:
        holding.wait(30)
        with pytest.raises(ConfigurationError, match="in use on another event loop"):
            SyncStore(async_store.engine)
    finally:
        go_on.set()
        runner.join()
    with SyncStore(async_store.engine) as sync:
        sync.save("k", 1)
        assert sync.load("k") == 1
    asyncio.run(async_store.engine.dispose())


def test_the_buffered_form_queues_and_flushes(sync: SyncStore, shared_url: URL) -> None:
    buffered = SyncBufferedStore(sync, delay=60)
    with buffered:
        for price in (100.0, 101.5, 99.75):
            buffered.save("bot1/BTCUSDT", {"last_price": price})
        assert buffered.load("bot1/BTCUSDT") == {"last_price": 99.75}
        assert buffered.pending == 1
        buffered.flush()
        assert buffered.pending == 0
        buffered.save("bot1/ETHUSDT", 1)
    with pytest.raises(StorageError, match="closed"):
        sync.load("bot1/BTCUSDT")
    with SyncStore.from_url(shared_url) as check:
        assert check.load_many(["bot1/BTCUSDT", "bot1/ETHUSDT"]) == {
            "bot1/BTCUSDT": {"last_price": 99.75},
            "bot1/ETHUSDT": 1,
        }


def test_compare_and_set_and_snapshots(sync: SyncStore) -> None:
    sync.save("bot1/k", {"n": 1}, if_absent=True)
    snapshot = sync.load_snapshot("bot1/k")
    assert snapshot is not None
    updated_at: datetime = snapshot.updated_at
    sync.save("bot1/k", {"n": 2}, if_updated_at=updated_at)
    with pytest.raises(ConflictError):
        sync.save("bot1/k", {"n": 3}, if_updated_at=updated_at)
    assert sync.load("bot1/k") == {"n": 2}
    report = sync.restore([snapshot], overwrite=True)
    assert (report.overwritten, report.state) == (1, "committed")
    assert sync.load("bot1/k") == {"n": 1}
    assert sync.delete("bot1/k") is True
    assert sync.is_empty()
    batches = [[Snapshot("bot1/a", 1, updated_at)], [Snapshot("bot1/b", [2], updated_at)]]
    streamed = sync.restore_stream(iter(batches))
    assert (streamed.added, streamed.state) == (2, "committed")
    assert sync.load_many(["bot1/a", "bot1/b"]) == {"bot1/a": 1, "bot1/b": [2]}


# -- deadlines -------------------------------------------------------------------------------


@pytest.mark.postgres
async def test_a_call_past_the_store_timeout_raises_the_store_error(postgres_url: URL) -> None:
    """A count waiting on a locked table: the store's own deadline ends it, and its error (the
    database named, "timed out") is what the caller gets, not the facade's wait."""
    await cleared(postgres_url)
    locker = await asyncpg_connection(postgres_url)
    try:
        async with locker.transaction():
            await locker.execute("LOCK TABLE snapshots IN ACCESS EXCLUSIVE MODE")
            with SyncStore.from_url(postgres_url, timeout=1) as sync:
                with pytest.raises(StorageError) as caught:
                    await asyncio.to_thread(sync.count)
                assert "timed out" in str(caught.value)
                assert "gave no answer" not in str(caught.value)
    finally:
        await locker.close()


def test_a_call_with_no_answer_past_its_bound_is_cancelled_and_says_so(sqlite_url: URL) -> None:
    """The store's loop blocked (here by an event listener that waits for the test): past
    twice the timeout plus a second, the caller gets a StorageError saying the call was
    cancelled; once the loop runs again, the store serves the next call."""
    blocked, release = threading.Event(), threading.Event()

    def listener(*_: Any) -> None:
        if not release.is_set():
            blocked.set()
            release.wait(60)

    with SyncStore.from_url(sqlite_url, timeout=0.5) as sync:
        sync.save("k", 1)
        event.listen(sync.engine.sync_engine, "before_cursor_execute", listener)
        try:
            with pytest.raises(StorageError, match=r"no answer within 2 s.*cancelled"):
                sync.load_many(["k"])
            assert blocked.is_set()
        finally:
            release.set()
        assert sync.load("k") == 1


@pytest.mark.postgres
def test_closing_cancels_the_calls_of_other_threads(postgres_url: URL) -> None:
    """A call of another thread waiting on a locked table when the store closes ends with a
    StorageError saying the store closed, at once, not at its deadline (600 s here)."""
    asyncio.run(cleared(postgres_url))
    database = postgres_url.database
    assert database is not None

    async def connect() -> tuple[Any, Any]:
        locker = await asyncpg_connection(postgres_url)
        watcher = await asyncpg_connection(postgres_url)
        await locker.execute("BEGIN")
        await locker.execute("LOCK TABLE snapshots IN ACCESS EXCLUSIVE MODE")
        return locker, watcher

    runner = asyncio.Runner()
    # The watcher asks outside any transaction: within one, pg_stat_activity is a snapshot.
    locker, watcher = runner.run(connect())
    try:
        sync = SyncStore.from_url(postgres_url, timeout=600)
        errors: list[BaseException] = []

        def count() -> None:
            try:
                sync.count()
            except BaseException as exc:
                errors.append(exc)

        waiter = threading.Thread(target=count, daemon=True)
        waiter.start()
        for _ in range(int(PATIENCE / 0.05)):
            if runner.run(waiting_on_a_lock(watcher, database)):
                break
            assert waiter.is_alive(), f"the count ended before it waited on the lock: {errors}"
            time.sleep(0.05)
        else:
            raise AssertionError(f"the count never waited on the lock in {PATIENCE} s")
        sync.close()
        waiter.join(PATIENCE)
        assert not waiter.is_alive()
        assert len(errors) == 1
        assert isinstance(errors[0], StorageError)
        assert "closed while it ran" in str(errors[0])
    finally:
        runner.run(locker.close())
        runner.run(watcher.close())
        runner.close()
