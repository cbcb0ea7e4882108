"""The clients of the fault run (tests/test_faults.py): writers, compare-and-set writers,
restorers, readers and lease holders, each recording what it does in a :class:`History`."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from .history import ACKNOWLEDGED

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence
    from random import Random

    from rustrade_store import Lease, SqlStore

    from .history import History

__all__ = ["LEASED", "Mix", "clients"]

LEASE_TTL = 1.5
"""The lease holders' ttl: a few store timeouts, so that faults on renewals let a lease expire
and another store take it over."""
LEASED = "leased"
"""The first segment of the keys the lease holders write under (with a run's own suffix)."""


@dataclass(frozen=True, slots=True)
class Mix:
    """How many clients of each kind one process runs."""

    writers: int
    readers: int
    compare_and_sets: int
    restorers: int


async def clients(
    stores: Sequence[SqlStore],
    holders: Sequence[SqlStore],
    history: History,
    keys: Sequence[str],
    name: str,
    stop: asyncio.Event,
    rng: Random,
    mix: Mix,
) -> None:
    """Until ``stop``, with values unique to them, each on ``stores`` in turn and holding no
    lease: writers save (a quarter of the time two keys at once); compare-and-set writers load
    a key, then save it only over what they loaded (only if absent, for a missing key);
    restorers restore a snapshot of one key with a time in the last few tenths of a second;
    readers read. One lease holder per store of ``holders`` takes the lease on the prefix of
    the keys under :data:`LEASED`, writes there under it (plain and compare-and-set), renews
    it now and then and releases it."""
    numbers = itertools.count()
    leased = [key for key in keys if key.startswith(LEASED)]
    prefix = leased[0].partition("/")[0] + "/"

    def value() -> str:
        return f"{name}.{next(numbers)}"

    async def writer(store: SqlStore) -> None:
        while not stop.is_set():
            if rng.random() < 0.25:
                await history.save_many(store, dict.fromkeys(rng.sample(keys, 2), value()))
            else:
                await history.save(store, rng.choice(keys), value())

    async def compare_and_set(store: SqlStore, lease: Lease | None = None) -> None:
        key = rng.choice(keys if lease is None else leased)
        read = await history.read(store, key)
        if read.outcome == ACKNOWLEDGED:
            await history.compare_and_set(store, key, value(), read.updated_at, lease)

    async def compare_and_sets(store: SqlStore) -> None:
        while not stop.is_set():
            await compare_and_set(store)

    async def restorer(store: SqlStore) -> None:
        while not stop.is_set():
            own = datetime.now(UTC) - timedelta(seconds=rng.uniform(0, 0.3))
            await history.restore(store, rng.choice(keys), value(), own)

    async def holder(store: SqlStore) -> None:
        while not stop.is_set():
            lease = store.lease(prefix, ttl=LEASE_TTL)
            if not await history.acquire(lease):
                await asyncio.sleep(rng.uniform(0.02, 0.2))
                continue
            try:
                for _ in range(rng.randint(1, 8)):
                    if stop.is_set() or not lease.held:
                        break
                    choice = rng.random()
                    if choice < 0.5:
                        await history.save(store, rng.choice(leased), value(), lease)
                    elif choice < 0.8:
                        await compare_and_set(store, lease)
                    else:
                        await history.renew(lease)
            finally:
                await history.release(lease)

    async def reader(store: SqlStore) -> None:
        while not stop.is_set():
            await history.read(store, rng.choice(keys))

    def spread(work: Callable[[SqlStore], Awaitable[None]], count: int) -> list[Awaitable[None]]:
        return [work(stores[number % len(stores)]) for number in range(count)]

    await asyncio.gather(
        *spread(writer, mix.writers),
        *spread(compare_and_sets, mix.compare_and_sets),
        *spread(restorer, mix.restorers),
        *spread(reader, mix.readers),
        *(holder(store) for store in holders),
    )
