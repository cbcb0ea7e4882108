"""BufferedStore: the shared contract on every backend, plus write-behind's own promises."""

from __future__ import annotations

import asyncio
import gc
import logging
import math
from typing import TYPE_CHECKING

import pytest

from rustrade_store import (
    BufferedStore,
    InMemoryStore,
    InvalidValueError,
    SqlStore,
    StorageError,
)
from rustrade_store.testing import StateStoreContract

from .helpers import FastForwardLoop

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

    from sqlalchemy import URL

    from rustrade_store import JSONInput, JSONValue

HANG_GUARD = 30.0
"""Seconds before a wait that should end at once is declared hung (not a timing assertion)."""


class TestBufferedStoreContract(StateStoreContract):
    """The contract on each backend's store (conftest's ``store``) wrapped in a BufferedStore."""

    @pytest.fixture
    async def store(self, store: SqlStore) -> AsyncIterator[BufferedStore]:
        buffered = BufferedStore(store, delay=0.001, max_pending=8)
        yield buffered
        await buffered.aclose()


class RecordingStore(InMemoryStore):
    """A real store that records every batch it is asked to write, and can be made to fail."""

    __slots__ = ("batches", "failing", "failures", "written")

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[dict[str, JSONInput]] = []
        self.failing = False
        self.failures = 0
        self.written = asyncio.Event()

    async def save_many(self, values: Mapping[str, JSONInput]) -> None:
        if self.failing:
            self.failures += 1
            raise StorageError("the disk is full")
        await super().save_many(values)
        self.batches.append(dict(values))
        self.written.set()


async def test_saves_to_one_key_coalesce_into_one_write() -> None:
    inner = RecordingStore()
    async with BufferedStore(inner, delay=3600) as store:
        for index in range(100):
            await store.save("bot/BTC", {"n": index})
        await store.save("bot/ETH", 1)
        assert inner.batches == []
        await store.flush()
        assert inner.batches == [{"bot/BTC": {"n": 99}, "bot/ETH": 1}]
        await store.flush()  # nothing queued: nothing written
        assert len(inner.batches) == 1


async def test_loads_see_queued_values_before_they_are_written() -> None:
    inner = RecordingStore()
    async with BufferedStore(inner, delay=3600) as store:
        await inner.save("old", "stored")
        value: dict[str, JSONValue] = {"streak": 1}
        await store.save("k", value)
        value["streak"] = 99  # the queue holds the value as it was saved
        assert await store.load("k") == {"streak": 1}
        assert await inner.load("k") is None
        assert await store.load_many(["k", "old", "missing"]) == {
            "k": {"streak": 1},
            "old": "stored",
            "missing": None,
        }
        loaded = await store.load("k")
        assert isinstance(loaded, dict)
        loaded["streak"] = 7
        assert await store.load("k") == {"streak": 1}
        assert store.pending == 1
        await store.flush()
        assert store.pending == 0
        assert await inner.load("k") == {"streak": 1}


async def test_the_writer_sends_a_batch_when_max_pending_keys_are_queued() -> None:
    inner = RecordingStore()
    async with BufferedStore(inner, delay=3600, max_pending=3) as store:
        await store.save("a", 1)
        await store.save("b", 2)
        await asyncio.sleep(0)
        assert inner.batches == []
        await store.save("c", 3)
        await asyncio.wait_for(inner.written.wait(), HANG_GUARD)
        assert inner.batches == [{"a": 1, "b": 2, "c": 3}]


async def test_the_writer_sends_a_batch_after_the_delay() -> None:
    inner = RecordingStore()
    async with BufferedStore(inner, delay=0.01) as store:
        await store.save("a", 1)
        await asyncio.wait_for(inner.written.wait(), HANG_GUARD)
        assert inner.batches == [{"a": 1}]
        assert store.pending == 0


async def test_flush_raises_when_writing_fails_and_keeps_the_values_queued() -> None:
    inner = RecordingStore()
    store = BufferedStore(inner, delay=3600)
    await store.save("a", 1)
    await store.save("b", 2)
    inner.failing = True
    with pytest.raises(StorageError, match="the disk is full"):
        await store.flush()
    assert store.pending == 2
    assert await store.load_many(["a", "b"]) == {"a": 1, "b": 2}
    await store.save("a", 10)  # a newer save wins over the value put back
    with pytest.raises(StorageError):
        await store.aclose()  # aclose flushes; failing, it leaves the store open
    await store.save("c", 3)
    inner.failing = False
    await store.flush()
    assert store.pending == 0
    assert await inner.load_many(["a", "b", "c"]) == {"a": 10, "b": 2, "c": 3}
    await store.aclose()


async def test_a_failed_background_write_is_retried_and_reported_by_flush() -> None:
    inner = RecordingStore()
    inner.failing = True
    async with BufferedStore(inner, delay=0.001) as store:
        await store.save("a", 1)
        for _ in range(2000):  # let the writer try, fail and try again, in the background
            if inner.failures >= 2:
                break
            await asyncio.sleep(0.005)
        assert inner.failures >= 2, "the background writer did not try again"
        assert store.pending == 1
        with pytest.raises(StorageError, match="the disk is full"):
            await store.flush()
        inner.failing = False
        await store.flush()
        assert await inner.load("a") == 1


async def test_flush_after_a_real_database_failure(store: SqlStore) -> None:
    """The table vanishes under the store (renamed away): flush raises, and writes it all later."""
    buffered = BufferedStore(store, delay=3600)
    await buffered.save("a", {"x": 1})
    async with store.engine.begin() as connection:
        await connection.exec_driver_sql("ALTER TABLE snapshots RENAME TO snapshots_away")
    try:
        with pytest.raises(StorageError, match="snapshots"):
            await buffered.flush()
        await buffered.save("b", [2])
        assert await buffered.load("a") == {"x": 1}
    finally:
        async with store.engine.begin() as connection:
            await connection.exec_driver_sql("ALTER TABLE snapshots_away RENAME TO snapshots")
    await buffered.flush()
    assert await store.load_many(["a", "b"]) == {"a": {"x": 1}, "b": [2]}


async def test_aclose_flushes_and_closes(sqlite_url: URL) -> None:
    buffered = BufferedStore(SqlStore.from_url(sqlite_url), delay=3600)
    await buffered.save_many({"a": 1, "b": 2})
    await buffered.aclose()
    await buffered.aclose()  # closing twice is fine
    with pytest.raises(StorageError, match="closed"):
        await buffered.save("c", 3)
    async with SqlStore.from_url(sqlite_url) as reopened:
        assert await reopened.load_many(["a", "b", "c"]) == {"a": 1, "b": 2, "c": None}


async def test_bad_input_fails_at_save_time_and_queues_nothing() -> None:
    inner = RecordingStore()
    async with BufferedStore(inner, delay=3600) as store:
        with pytest.raises(InvalidValueError, match="NaN"):
            await store.save("k", [math.nan])
        with pytest.raises(InvalidValueError, match=r"key 'c'.*NaN"):
            await store.save_many({"a": 1, "c": math.nan})
        assert store.pending == 0
    assert inner.batches == []


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="delay"):
        BufferedStore(InMemoryStore(), delay=-1)
    with pytest.raises(ValueError, match="max_pending"):
        BufferedStore(InMemoryStore(), max_pending=0)


class GatedStore(RecordingStore):
    """A real store whose batch writes wait until the test opens the gate."""

    __slots__ = ("entered", "gate")

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

    async def save_many(self, values: Mapping[str, JSONInput]) -> None:
        self.entered.set()
        await self.gate.wait()
        await super().save_many(values)


async def test_flush_waits_for_the_write_in_flight_and_writes_what_came_after() -> None:
    inner = GatedStore()
    async with BufferedStore(inner, delay=0) as store:
        await store.save("a", 1)
        await asyncio.wait_for(inner.entered.wait(), HANG_GUARD)  # the writer holds batch {a}
        await store.save("b", 2)  # queued while the batch is in flight
        assert await store.load_many(["a", "b"]) == {"a": 1, "b": 2}
        flushing = asyncio.create_task(store.flush())
        for _ in range(20):
            await asyncio.sleep(0)
        assert not flushing.done()
        inner.gate.set()
        await asyncio.wait_for(flushing, HANG_GUARD)
        assert await inner.load_many(["a", "b"]) == {"a": 1, "b": 2}
        assert store.pending == 0


async def test_a_cancelled_flush_keeps_its_batch_queued() -> None:
    inner = GatedStore()
    store = BufferedStore(inner, delay=3600)
    await store.save("a", 1)
    flushing = asyncio.create_task(store.flush())
    await asyncio.wait_for(inner.entered.wait(), HANG_GUARD)
    flushing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await flushing
    assert store.pending == 1
    assert await store.load("a") == 1
    inner.gate.set()
    await store.aclose()
    assert inner.batches == [{"a": 1}]


async def test_a_save_during_the_closing_flush_is_refused_not_dropped() -> None:
    """aclose() stops taking saves before it flushes: a late save raises, it never vanishes."""
    inner = RecordingStore()
    store = BufferedStore(inner, delay=3600)
    await store.save("a", 1)
    closing = asyncio.create_task(store.aclose())
    await asyncio.sleep(0)  # aclose() is now waiting on its flush
    with pytest.raises(StorageError, match="closed"):
        await store.save("late", 2)
    await closing
    assert inner.batches == [{"a": 1}]


async def test_a_failed_closing_flush_leaves_the_store_open() -> None:
    inner = RecordingStore()
    inner.failing = True
    store = BufferedStore(inner, delay=3600)
    await store.save("a", 1)
    with pytest.raises(StorageError, match="the disk is full"):
        await store.aclose()
    await store.save("b", 2)  # still open: nothing queued was dropped
    inner.failing = False
    await store.aclose()
    assert inner.batches == [{"a": 1, "b": 2}]


def test_a_long_outage_backs_off_without_overflowing() -> None:
    """Past ~1,000 failures in a row the back-off stays capped at 5 s instead of overflowing a
    float (``2.0 ** 1024`` does): the hours of a refusing database pass on a skipping clock."""

    async def outage() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, FastForwardLoop)
        inner = RecordingStore()
        inner.failing = True
        async with BufferedStore(inner, delay=0.001) as store:
            await store.save("a", 1)
            seen_at: dict[int, float] = {}
            with loop.fast_forward():  # the refusing store does no I/O: only timers wait
                for _ in range(100_000):
                    if inner.failures > 1100:
                        break
                    seen_at.setdefault(inner.failures, loop.time())
                    await asyncio.sleep(1)
            assert inner.failures > 1100, "the background writer died"
            # From the 11th failure on, attempts come 5 s apart (plus the 1 ms delay).
            assert 5000 <= seen_at[1100] - seen_at[100] <= 5020
            inner.failing = False
        assert inner.batches == [{"a": 1}]

    with asyncio.Runner(loop_factory=FastForwardLoop) as runner:
        runner.run(outage())


async def test_a_second_aclose_waits_for_the_flush_of_the_first() -> None:
    """A shutdown hook and the main path both close: neither returns before the value is written."""
    inner = GatedStore()
    store = BufferedStore(inner, delay=3600)
    await store.save("a", 1)
    first = asyncio.create_task(store.aclose())
    await asyncio.wait_for(inner.entered.wait(), HANG_GUARD)
    second = asyncio.create_task(store.aclose())
    for _ in range(20):
        await asyncio.sleep(0)
    assert not second.done(), "the second aclose() returned while the first was still flushing"
    inner.gate.set()
    await asyncio.wait_for(asyncio.gather(first, second), HANG_GUARD)
    assert inner.batches == [{"a": 1}]
    after = store.aclose()
    with pytest.raises(StopIteration):  # closed already: it returns without waiting on anything
        after.send(None)


async def test_every_concurrent_aclose_hears_that_the_flush_failed() -> None:
    inner = GatedStore()
    inner.failing = True
    store = BufferedStore(inner, delay=3600)
    await store.save("a", 1)
    first = asyncio.create_task(store.aclose())
    await asyncio.wait_for(inner.entered.wait(), HANG_GUARD)
    second = asyncio.create_task(store.aclose())
    await asyncio.sleep(0)  # the second aclose() is now waiting on the first's flush
    inner.gate.set()
    outcomes = await asyncio.wait_for(
        asyncio.gather(first, second, return_exceptions=True), HANG_GUARD
    )
    for outcome in outcomes:
        assert isinstance(outcome, StorageError), outcome
        assert "the disk is full" in str(outcome)
    await store.save("b", 2)  # the store stayed open: nothing queued was dropped
    inner.failing = False
    await store.aclose()
    assert inner.batches == [{"a": 1, "b": 2}]


async def test_a_second_aclose_carries_the_close_on_when_the_first_is_cancelled() -> None:
    inner = GatedStore()
    store = BufferedStore(inner, delay=3600)
    await store.save("a", 1)
    first = asyncio.create_task(store.aclose())
    await asyncio.wait_for(inner.entered.wait(), HANG_GUARD)
    second = asyncio.create_task(store.aclose())
    await asyncio.sleep(0)  # the second aclose() is now waiting on the first's flush
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    for _ in range(20):
        await asyncio.sleep(0)
    assert not second.done(), "the second aclose() returned with the value still unwritten"
    inner.gate.set()
    await asyncio.wait_for(second, HANG_GUARD)
    assert inner.batches == [{"a": 1}]
    with pytest.raises(StorageError, match="closed"):
        await store.save("b", 2)


async def test_a_cancelled_aclose_leaves_the_store_open_with_its_values_queued() -> None:
    inner = GatedStore()
    store = BufferedStore(inner, delay=3600)
    await store.save("a", 1)
    closing = asyncio.create_task(store.aclose())
    await asyncio.wait_for(inner.entered.wait(), HANG_GUARD)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert store.pending == 1
    await store.save("b", 2)
    inner.gate.set()
    await store.aclose()
    assert inner.batches == [{"a": 1, "b": 2}]


def unflushed_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "rustrade_store.buffered" and record.levelno == logging.WARNING
    ]


async def test_a_store_garbage_collected_with_unflushed_values_logs_their_keys(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="rustrade_store.buffered")
    inner = GatedStore()
    store = BufferedStore(inner, delay=0)
    await store.save_many({f"bot{index:02}/BTC": index for index in range(25)})
    await asyncio.wait_for(inner.entered.wait(), HANG_GUARD)  # the writer holds all 25, unwritten
    del store, inner
    gc.collect()
    [message] = unflushed_warnings(caplog)
    assert "25" in message
    assert "'bot00/BTC'" in message
    assert "'bot19/BTC'" in message
    assert "'bot20/BTC'" not in message
    assert "and 5 more" in message


def test_an_event_loop_ending_with_unflushed_values_logs_their_keys_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="rustrade_store.buffered")

    async def main() -> None:
        store = BufferedStore(RecordingStore(), delay=3600)
        await store.save("bot1/BTCUSDT", {"halted": True})

    asyncio.run(main())
    gc.collect()  # the store is garbage by now as well
    [message] = unflushed_warnings(caplog)
    assert "'bot1/BTCUSDT'" in message
