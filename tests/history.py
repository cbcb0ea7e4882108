"""Histories of store operations, and a checker that each key behaved as one atomic register.

Every operation is recorded with its start and end (``time.monotonic``, one clock for every
process of the machine) and its result. Writes carry values unique per key; reads use
``load_snapshot`` and so see the value and its save time (``updated_at``).

The register the store promises is ordered by save time: ``updated_at`` is assigned at
``save()`` call time, strictly increasing per process, and a write whose save time is older than
the stored one never replaces it. A write that failed or timed out is indeterminate: it may take
effect any time after it began, or never, but only in its save-time place. :func:`check` holds a
history to that, with rules that a correct store cannot break (each rule's docstring says why).
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rustrade_store import StorageError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Iterable, Mapping, Sequence
    from random import Random

    from rustrade_store import SqlStore

__all__ = ["Anomaly", "History", "Read", "Write", "check", "clients"]

ACKNOWLEDGED = "ok"
FAILED = "failed"
TIMED_OUT = "timed out"
HUNG = "hung"
"""Outcomes. Every one but ``ok`` leaves a write indeterminate; a failed read tells nothing."""

_NEVER = datetime.min.replace(tzinfo=UTC)
"""The save time of a missing key: older than any save."""


@dataclass(frozen=True, slots=True)
class Write:
    """One key's part of a ``save`` or ``save_many`` call."""

    key: str
    value: str
    start: float
    end: float
    called_at: datetime
    """The wall clock just before the call: the store's save time is not earlier."""
    outcome: str

    @property
    def acknowledged(self) -> bool:
        return self.outcome == ACKNOWLEDGED


@dataclass(frozen=True, slots=True)
class Read:
    """A ``load_snapshot`` call: ``value`` and ``updated_at`` are None for a missing key."""

    key: str
    start: float
    end: float
    outcome: str
    value: str | None = None
    updated_at: datetime | None = None

    @property
    def saved(self) -> datetime:
        return _NEVER if self.updated_at is None else self.updated_at


@dataclass(frozen=True, slots=True)
class Anomaly:
    rule: str
    key: str
    detail: str

    def __str__(self) -> str:
        return f"{self.rule} on {self.key!r}: {self.detail}"


@dataclass(slots=True)
class History:
    """Operations as they happened; ``calls`` counts store calls (a ``save_many`` is one)."""

    writes: list[Write] = field(default_factory=list)
    reads: list[Read] = field(default_factory=list)
    calls: int = 0
    guard: float = 120.0
    """Seconds after which a call counts as hung (the store promises it never hangs)."""

    async def _call(self, call: Awaitable[Any]) -> tuple[str, Any]:
        self.calls += 1
        try:
            return ACKNOWLEDGED, await asyncio.wait_for(call, self.guard)
        except StorageError as exc:
            return (TIMED_OUT if "timed out" in str(exc) else FAILED), None
        except TimeoutError:
            return HUNG, None

    async def save(self, store: SqlStore, key: str, value: str) -> None:
        await self._write(store.save(key, value), {key: value})

    async def save_many(self, store: SqlStore, values: Mapping[str, str]) -> None:
        await self._write(store.save_many(values), values)

    async def _write(self, call: Awaitable[None], values: Mapping[str, str]) -> None:
        called_at = datetime.now(UTC)  # before ``call`` starts running, so before its save time
        start = time.monotonic()
        outcome, _ = await self._call(call)
        end = time.monotonic()
        for key, value in values.items():
            self.writes.append(Write(key, value, start, end, called_at, outcome))

    async def read(self, store: SqlStore, key: str) -> None:
        start = time.monotonic()
        outcome, snapshot = await self._call(store.load_snapshot(key))
        end = time.monotonic()
        if snapshot is None:
            self.reads.append(Read(key, start, end, outcome))
        else:
            value = snapshot.value
            assert isinstance(value, str), f"{key!r} holds {value!r}, which no writer saves"
            self.reads.append(Read(key, start, end, outcome, value, snapshot.updated_at))

    def outcomes(self) -> Counter[str]:
        """Calls by outcome (a ``save_many`` counted once per key)."""
        return Counter(w.outcome for w in self.writes) + Counter(r.outcome for r in self.reads)

    def to_json(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "writes": [
                [w.key, w.value, w.start, w.end, w.called_at.isoformat(), w.outcome]
                for w in self.writes
            ],
            "reads": [
                [r.key, r.start, r.end, r.outcome, r.value, _iso(r.updated_at)] for r in self.reads
            ],
        }

    def extend(self, data: Mapping[str, Any]) -> None:
        """Add a history another process sent as :meth:`to_json`."""
        self.calls += data["calls"]
        for key, value, start, end, called_at, outcome in data["writes"]:
            self.writes.append(
                Write(key, value, start, end, datetime.fromisoformat(called_at), outcome)
            )
        for key, start, end, outcome, value, updated_at in data["reads"]:
            saved = None if updated_at is None else datetime.fromisoformat(updated_at)
            self.reads.append(Read(key, start, end, outcome, value, saved))


async def clients(
    stores: Sequence[SqlStore],
    history: History,
    stop: asyncio.Event,
    rng: Random,
    *,
    prefix: str,
    writers: int,
    readers: int,
) -> None:
    """Writers and readers spread over ``stores`` (writer or reader ``n`` on ``stores[n %
    len]``) until ``stop``. Most saves go to a key of their own, so that each acknowledged save
    can be looked for afterwards; the rest to four shared keys, a fifth of them through
    ``save_many``; readers read recently written keys. Keys start with ``prefix``; values are
    unique per key."""
    shared = [f"{prefix}/shared/{number}" for number in range(4)]
    recent: deque[str] = deque(shared, maxlen=64)

    async def writer(number: int) -> None:
        store = stores[number % len(stores)]
        step = 0
        while not stop.is_set():
            step += 1
            value = f"w{number}.{step}"
            own = f"{prefix}/{number}/{step}"
            recent.append(own)
            choice = rng.random()
            if choice < 0.2:
                await history.save_many(store, {own: value, rng.choice(shared): value})
            elif choice < 0.4:
                await history.save(store, rng.choice(shared), value)
            else:
                await history.save(store, own, value)

    async def reader(number: int) -> None:
        store = stores[number % len(stores)]
        while not stop.is_set():
            await history.read(store, rng.choice(recent))

    await asyncio.gather(
        *(writer(number) for number in range(writers)),
        *(reader(number) for number in range(readers)),
    )


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.isoformat()


def check(writes: Iterable[Write], reads: Iterable[Read]) -> list[Anomaly]:
    """Every anomaly of the history, key by key (failed reads are left out: they saw nothing)."""
    writes_by_key: dict[str, list[Write]] = {}
    reads_by_key: dict[str, list[Read]] = {}
    for write in writes:
        writes_by_key.setdefault(write.key, []).append(write)
    for read in reads:
        if read.outcome == ACKNOWLEDGED:
            reads_by_key.setdefault(read.key, []).append(read)
    anomalies: list[Anomaly] = []
    for key in sorted(writes_by_key.keys() | reads_by_key.keys()):
        anomalies += _Register(key, writes_by_key.get(key, []), reads_by_key.get(key, [])).check()
    return anomalies


class _Register:
    """One key's history."""

    __slots__ = ("acked", "key", "reads", "saved_at", "writes")

    def __init__(self, key: str, writes: list[Write], reads: list[Read]) -> None:
        self.key = key
        self.writes: dict[str, Write] = {}
        for write in writes:
            if write.value in self.writes:
                raise ValueError(f"value {write.value!r} written twice to {key!r}: not unique")
            self.writes[write.value] = write
        self.reads = sorted(reads, key=lambda read: read.end)
        self.acked = sorted((w for w in writes if w.acknowledged), key=lambda w: w.end)
        self.saved_at: dict[str, datetime] = {}
        """The save time of each write some read saw."""

    def check(self) -> list[Anomaly]:
        found = self.known_values()
        found += self.one_save_time_per_write()
        found += self.save_times_follow_calls()
        found += self.no_read_from_the_future()
        found += self.reads_never_go_back()
        found += self.no_acknowledged_write_lost()
        found += self.no_read_older_than_an_acknowledged_write()
        return found

    def _anomaly(self, rule: str, detail: str) -> Anomaly:
        return Anomaly(rule, self.key, detail)

    def _seen(self) -> list[tuple[Read, Write]]:
        return [(read, self.writes[read.value]) for read in self.reads if read.value in self.writes]

    def known_values(self) -> list[Anomaly]:
        """A read returns a value some write put there (values are unique) or a missing key."""
        return [
            self._anomaly("unknown value", f"read at {r.start:.3f} returned {r.value!r}")
            for r in self.reads
            if r.value is not None and r.value not in self.writes
        ]

    def one_save_time_per_write(self) -> list[Anomaly]:
        """A write has one save time, fixed before its first attempt, so every read of its value
        sees the same ``updated_at``."""
        found = []
        for read, write in self._seen():
            assert read.updated_at is not None
            first = self.saved_at.setdefault(write.value, read.updated_at)
            if first != read.updated_at:
                found.append(
                    self._anomaly(
                        "two save times",
                        f"{write.value!r} read with updated_at {first} and {read.updated_at}",
                    )
                )
        return found

    def save_times_follow_calls(self) -> list[Anomaly]:
        """The save time is taken at call time, so it is not before the wall clock read just
        before the call, and a write called after another one ended has a later save time."""
        found = [
            self._anomaly(
                "save time before the call",
                f"{value!r} has updated_at {saved}, called at {self.writes[value].called_at}",
            )
            for value, saved in self.saved_at.items()
            if saved < self.writes[value].called_at
        ]
        timed = sorted((self.writes[value] for value in self.saved_at), key=lambda w: w.end)
        ends = [w.end for w in timed]
        latest: list[Write] = []  # latest[i]: the latest-saved among timed[: i + 1]
        for write in timed:
            before = latest[-1] if latest else write
            latest.append(
                write if self.saved_at[write.value] >= self.saved_at[before.value] else before
            )
        for write in timed:
            count = bisect_left(ends, write.start)
            if count and self.saved_at[latest[count - 1].value] >= self.saved_at[write.value]:
                earlier = latest[count - 1]
                found.append(
                    self._anomaly(
                        "save times out of call order",
                        f"{earlier.value!r} (ended {earlier.end:.3f}, updated_at "
                        f"{self.saved_at[earlier.value]}) is not older than {write.value!r} "
                        f"(began {write.start:.3f}, updated_at {self.saved_at[write.value]})",
                    )
                )
        return found

    def no_read_from_the_future(self) -> list[Anomaly]:
        """A write cannot take effect before it is called, so no read that ended before a write
        began returns it."""
        return [
            self._anomaly(
                "read from the future",
                f"read {read.start:.3f}-{read.end:.3f} returned {write.value!r}, "
                f"called at {write.start:.3f}",
            )
            for read, write in self._seen()
            if write.start > read.end
        ]

    def reads_never_go_back(self) -> list[Anomaly]:
        """The stored save time of a key never decreases (an older write never replaces a newer
        one, nothing deletes), so a read that starts after another ended sees a save time at least
        as recent."""
        found = []
        ends = [read.end for read in self.reads]
        latest: list[Read] = []  # latest[i]: the most recent save time among reads[: i + 1]
        for read in self.reads:
            latest.append(read if not latest or read.saved >= latest[-1].saved else latest[-1])
        for read in self.reads:
            count = bisect_left(ends, read.start)
            if count and latest[count - 1].saved > read.saved:
                earlier = latest[count - 1]
                found.append(
                    self._anomaly(
                        "read went back",
                        f"read {read.start:.3f}-{read.end:.3f} returned {read.value!r} "
                        f"(updated_at {read.updated_at}) after read "
                        f"{earlier.start:.3f}-{earlier.end:.3f} had returned {earlier.value!r} "
                        f"(updated_at {earlier.updated_at})",
                    )
                )
        return found

    def _acked_before(self) -> tuple[list[float], list[Write], list[Write]]:
        """Acknowledged writes by end, with running maxima: of start, and of known save time."""
        ends = [w.end for w in self.acked]
        latest_start: list[Write] = []
        latest_saved: list[Write] = []
        for write in self.acked:
            if not latest_start or write.start > latest_start[-1].start:
                latest_start.append(write)
            else:
                latest_start.append(latest_start[-1])
            if not latest_saved or self._floor(write) > self._floor(latest_saved[-1]):
                latest_saved.append(write)
            else:
                latest_saved.append(latest_saved[-1])
        return ends, latest_start, latest_saved

    def _floor(self, write: Write) -> datetime:
        """The earliest the save time of ``write`` can be: seen by a read, else its call time."""
        return self.saved_at.get(write.value, write.called_at)

    def no_acknowledged_write_lost(self) -> list[Anomaly]:
        """Once a write is acknowledged the stored save time is at least its own (its upsert
        either wrote or met a newer row) and never decreases, so a read that starts later sees
        a save time no older than the write's (its call time, or the one a read saw)."""
        ends, _, latest_saved = self._acked_before()
        found = []
        for read in self.reads:
            count = bisect_left(ends, read.start)
            if count and self._floor(latest_saved[count - 1]) > read.saved:
                lost = latest_saved[count - 1]
                found.append(
                    self._anomaly(
                        "acknowledged write lost",
                        f"read {read.start:.3f}-{read.end:.3f} returned {read.value!r} "
                        f"(updated_at {read.updated_at}) after {lost.value!r} "
                        f"(called {lost.start:.3f} at {lost.called_at}, updated_at "
                        f"{self.saved_at.get(lost.value, 'never read')}) was acknowledged "
                        f"at {lost.end:.3f}",
                    )
                )
        return found

    def no_read_older_than_an_acknowledged_write(self) -> list[Anomaly]:
        """A write that ended before an acknowledged write ``w`` began has an older save time
        (call order), so once ``w`` is acknowledged no read returns it, whether it was itself
        acknowledged or not: a late write may land, but not over a newer one."""
        ends, latest_start, _ = self._acked_before()
        found = []
        for read in self.reads:
            count = bisect_left(ends, read.start)
            if not count:
                continue
            newer = latest_start[count - 1]
            returned = self.writes.get(read.value) if read.value is not None else None
            if read.value is None or (returned is not None and returned.end < newer.start):
                ended = "never written" if returned is None else f"ended {returned.end:.3f}"
                found.append(
                    self._anomaly(
                        "stale read",
                        f"read {read.start:.3f}-{read.end:.3f} returned {read.value!r} "
                        f"({ended}) though {newer.value!r}, begun {newer.start:.3f}, "
                        f"was acknowledged at {newer.end:.3f}",
                    )
                )
        return found
