"""Leases: one writer per prefix, fenced in every write, on every backend."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import TYPE_CHECKING

import pytest

from rustrade_store import (
    BufferedStore,
    InMemoryStore,
    InvalidKeyError,
    LeaseHeldError,
    LeaseLostError,
    SqlStore,
)

from .helpers import BACKENDS_AND_POSTGRES_18, POSTGRES_18

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from sqlalchemy import URL


@pytest.fixture(params=BACKENDS_AND_POSTGRES_18)
def backend(request: pytest.FixtureRequest) -> str:
    """Every backend, and PostgreSQL 18."""
    name: str = request.param
    return name


@pytest.fixture
async def rival(backend: str, store: SqlStore, store_url: URL) -> AsyncIterator[SqlStore]:
    """A second store on the same database: a second copy of the bot (in memory, the same
    store, since nothing else can reach that database)."""
    if backend == "memory":
        yield store
        return
    other = SqlStore.from_url(store_url)
    try:
        yield other
    finally:
        await other.aclose()


SHARED = [
    "sqlite",
    pytest.param("postgres", marks=pytest.mark.postgres),
    pytest.param("mariadb", marks=pytest.mark.mariadb),
    POSTGRES_18,
]
"""Backends a second store can reach (an in-memory database has one store)."""


@pytest.mark.parametrize("backend", SHARED)
async def test_a_second_copy_is_refused_and_told_who_holds_the_lease(
    store: SqlStore, rival: SqlStore
) -> None:
    async with store.lease("bot1/", ttl=30) as lease:
        assert lease.token >= 1
        with pytest.raises(LeaseHeldError) as refused:
            await rival.lease("bot1/").acquire()
        assert f"pid {lease.holder['pid']}" in str(refused.value)
        assert refused.value.until == lease.expires_at
        await store.save("bot1/breaker", {"halted": True})
        with pytest.raises(LeaseHeldError):
            await rival.save("bot1/breaker", {"halted": False})  # never called lease()
        with pytest.raises(LeaseHeldError):
            await rival.save_many({"bot1/breaker": {"halted": False}, "bot2/x": 1})
        with pytest.raises(LeaseHeldError):
            await rival.delete("bot1/breaker")
        await rival.save("bot2/x", 1)  # another prefix is free
    assert await rival.load("bot1/breaker") == {"halted": True}
    async with rival.lease("bot1/") as taken:
        assert taken.token == lease.token + 1
        await rival.save("bot1/breaker", {"halted": False})


@pytest.mark.parametrize("backend", SHARED)
async def test_a_holder_that_paused_past_its_ttl_writes_nothing(
    store: SqlStore, store_url: URL
) -> None:
    """A holder frozen past its ttl (a GC pause: here its event loop blocked while another
    copy, in another thread, waits for the lease to expire, takes it and saves): the first
    one's next write raises LeaseLostError and never lands, and so does every one after."""
    first = await store.lease("bot1/", ttl=0.3).acquire()
    await store.save("bot1/breaker", {"halted": True})

    async def second_copy() -> int:
        async with SqlStore.from_url(store_url) as rival:
            lease = await rival.lease("bot1/", ttl=30).acquire(wait=30)
            await rival.save("bot1/breaker", {"halted": True, "by": "second"})
            await lease.release()
            return lease.token

    taken: list[int] = []
    rival = threading.Thread(target=lambda: taken.append(asyncio.run(second_copy())))
    rival.start()
    rival.join()  # blocks this event loop, as a pause would
    assert taken, "the second copy failed"
    with pytest.raises(LeaseLostError):
        await store.save("bot1/breaker", {"halted": False})
    with pytest.raises(LeaseLostError):  # and from then on at once
        await store.save("bot1/other", 1)
    assert await store.load_many(["bot1/breaker", "bot1/other"]) == {
        "bot1/breaker": {"halted": True, "by": "second"},
        "bot1/other": None,
    }
    assert not first.held
    assert taken[0] > first.token
    await first.release()


async def test_lease_rows_stay_out_of_the_data(store: SqlStore) -> None:
    await store.save("bot1/x", 1)
    async with store.lease("bot1/"):
        assert [key async for key in store.keys()] == ["bot1/x"]
        assert [snapshot.key async for snapshot in store.snapshots()] == ["bot1/x"]
        assert await store.count() == 1
        with pytest.raises(InvalidKeyError, match="lease"):
            await store.save("@lease/bot1/", "forged")
        with pytest.raises(InvalidKeyError, match="lease"):
            await store.load("@lease/bot1/")


@pytest.mark.parametrize("prefix", ["bot1", "bot1/sub/", "/", "", "@lease/"])
async def test_a_lease_covers_one_first_path_segment(prefix: str) -> None:
    async with InMemoryStore() as store:
        with pytest.raises(InvalidKeyError):
            store.lease(prefix)


async def test_an_operator_lists_breaks_and_overrides_leases(
    backend: str, store: SqlStore, store_url: URL
) -> None:
    """``leases()`` names the holder; a store made with ``ignore_leases`` writes under a live
    lease (a forced repair); a broken lease fences its old holder out for good."""
    lost: list[LeaseLostError] = []
    held = await store.lease("bot1/", ttl=30, on_lost=lost.append).acquire()
    operator = store if backend == "memory" else SqlStore.from_url(store_url, ignore_leases=True)
    try:
        (listed,) = await operator.leases()
        assert (listed.prefix, listed.token, listed.live) == ("bot1/", held.token, True)
        assert listed.holder == held.holder
        if operator is not store:
            await operator.save("bot1/breaker", {"halted": False, "by": "operator"})
        broken = await operator.break_lease("bot1/")
        assert broken is not None
        assert broken.live
        with pytest.raises(LeaseLostError):
            await store.save("bot1/breaker", {"halted": True, "by": "old holder"})
        assert lost
        assert not held.held
        buffered = BufferedStore(store)
        with pytest.raises(LeaseLostError):
            await buffered.save("bot1/breaker", 1)  # refused at once, not at flush
        (after,) = await operator.leases()
        assert after.token > held.token
        assert not after.live
    finally:
        await held.release()
        if operator is not store:
            await operator.aclose()


async def test_a_buffer_drops_only_what_its_lost_lease_covers_and_says_so(
    backend: str, store: SqlStore, store_url: URL, caplog: pytest.LogCaptureFixture
) -> None:
    """Values queued under a lease that is then lost can never be written: flush names them in
    LeaseLostError and a warning, and writes the others, which they no longer hold back."""
    lease = await store.lease("bot1/", ttl=30).acquire()
    buffered = BufferedStore(store, delay=3600)
    await buffered.save("bot1/breaker", {"halted": True})
    await buffered.save("bot2/pnl", 5)
    operator = store if backend == "memory" else SqlStore.from_url(store_url)
    try:
        await operator.break_lease("bot1/")
        with (
            caplog.at_level(logging.WARNING, logger="rustrade_store.buffered"),
            pytest.raises(LeaseLostError, match="bot1/breaker"),
        ):
            await buffered.flush()
        assert any("bot1/breaker" in record.getMessage() for record in caplog.records)
        assert await operator.load_many(["bot1/breaker", "bot2/pnl"]) == {
            "bot1/breaker": None,
            "bot2/pnl": 5,
        }
        await buffered.save("bot2/pnl", 6)
        await buffered.flush()
        assert await operator.load("bot2/pnl") == 6
    finally:
        await lease.release()
        if operator is not store:
            await operator.aclose()
