"""Histories of store operations, recorded for :func:`tests.checker.check`.

Every operation is recorded with its start and end (``time.monotonic``, one clock for every
process of the machine) and its result. Writes carry values unique per key; reads use
``load_snapshot`` and so see the value and its save time (``updated_at``). Besides plain saves:
compare-and-set (``if_updated_at``, ``if_absent``), whose refusal (:class:`ConflictError`) is a
read of the stored time; restores of one snapshot with its own time, with how the report
counted it; and leases (acquire, renew, release), with the writes made under each.

The register the store promises is ordered by save time: ``updated_at`` is assigned at
``save()`` call time, strictly increasing per process, and a write whose save time is older than
the stored one never replaces it. A write that failed, timed out, or whose outcome the store
calls unknown is indeterminate: it may take effect any time after it began, or never, but only
in its save-time place. A write refused with an answer (a conflict, a lease held or lost, a
restore that kept a newer snapshot) wrote nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rustrade_store import (
    ConflictError,
    LeaseHeldError,
    LeaseLostError,
    OutcomeUnknownError,
    Snapshot,
    StorageError,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Mapping, Sequence
    from random import Random

    from rustrade_store import Lease, SqlStore

__all__ = ["Anomaly", "History", "LeaseOp", "Read", "Write", "clients"]

ACKNOWLEDGED = "ok"
FAILED = "failed"
TIMED_OUT = "timed out"
UNKNOWN = "outcome unknown"
HUNG = "hung"
"""Outcomes. Every one but ``ok`` leaves a write indeterminate, bar the refusals below; a
failed read tells nothing."""
CONFLICT = "conflict"
HELD = "lease held"
LOST = "lease lost"
KEPT = "kept newer"
REFUSED = frozenset({CONFLICT, HELD, LOST, KEPT})
"""Outcomes of a write refused with an answer: nothing was written."""

NEVER = datetime.min.replace(tzinfo=UTC)
"""The save time of a missing key: older than any save."""


@dataclass(frozen=True, slots=True)
class Write:
    """One key's part of a ``save``, ``save_many`` or ``restore`` call."""

    key: str
    value: str
    start: float
    end: float
    called_at: datetime
    """The wall clock just before the call: the store's save time is not earlier."""
    outcome: str
    kind: str = "save"
    """``save``, ``cas`` (compare-and-set) or ``restore``."""
    expected: datetime | None = None
    """A compare-and-set's base: the save time it expects stored (:data:`NEVER`: absent)."""
    conflict_at: datetime | None = None
    """A refused compare-and-set's stored time, from its error (:data:`NEVER`: missing)."""
    own_time: datetime | None = None
    """A restore's save time, the snapshot's own."""
    counted: str | None = None
    """How a restore's report counted it: added, replaced, newer, conflicting or unchanged."""
    holder: str | None = None
    """The id of the writer's lease on the key's prefix (``None``: it held none)."""
    token: int | None = None

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
    with_value: bool = True
    """False for what a compare-and-set's conflict saw: the stored time, not the value."""

    @property
    def saved(self) -> datetime:
        return NEVER if self.updated_at is None else self.updated_at


@dataclass(frozen=True, slots=True)
class LeaseOp:
    """An ``acquire``, ``renew`` or ``release`` of a lease on ``prefix``. ``holder`` names one
    tenure (the id a take-over writes); ``live_until`` is the monotonic time until which the
    database keeps it live, from the expiry the call returned (its end is the earliest)."""

    prefix: str
    action: str
    start: float
    end: float
    outcome: str
    holder: str | None = None
    token: int | None = None
    live_until: float | None = None


@dataclass(frozen=True, slots=True)
class Anomaly:
    rule: str
    key: str
    detail: str

    def __str__(self) -> str:
        return f"{self.rule} on {self.key!r}: {self.detail}"


_ERRORS: list[tuple[type[BaseException], str]] = [
    (ConflictError, CONFLICT),
    (LeaseHeldError, HELD),
    (LeaseLostError, LOST),
    (OutcomeUnknownError, UNKNOWN),
]


@dataclass(slots=True)
class History:
    """Operations as they happened; ``calls`` counts store calls (a ``save_many`` is one)."""

    writes: list[Write] = field(default_factory=list)
    reads: list[Read] = field(default_factory=list)
    leases: list[LeaseOp] = field(default_factory=list)
    calls: int = 0
    guard: float = 120.0
    """Seconds after which a call counts as hung (the store promises it never hangs)."""

    async def _call(self, call: Awaitable[Any]) -> tuple[str, Any]:
        """The outcome of ``call``, and its result (its error, if it raised a refusal)."""
        self.calls += 1
        try:
            return ACKNOWLEDGED, await asyncio.wait_for(call, self.guard)
        except (ConflictError, LeaseHeldError, LeaseLostError, OutcomeUnknownError) as exc:
            return next(name for kind, name in _ERRORS if isinstance(exc, kind)), exc
        except StorageError as exc:
            return (TIMED_OUT if "timed out" in str(exc) else FAILED), None
        except TimeoutError:
            return HUNG, None

    async def save(self, store: SqlStore, key: str, value: str, lease: Lease | None = None) -> None:
        await self._write(store.save(key, value), {key: value}, lease=lease)

    async def save_many(
        self, store: SqlStore, values: Mapping[str, str], lease: Lease | None = None
    ) -> None:
        await self._write(store.save_many(values), values, lease=lease)

    async def compare_and_set(
        self,
        store: SqlStore,
        key: str,
        value: str,
        expected: datetime | None,
        lease: Lease | None = None,
    ) -> None:
        """``save`` with ``if_updated_at=expected``, or ``if_absent`` for ``None``."""
        call = (
            store.save(key, value, if_absent=True)
            if expected is None
            else store.save(key, value, if_updated_at=expected)
        )
        base = NEVER if expected is None else expected
        await self._write(call, {key: value}, lease=lease, kind="cas", expected=base)

    async def restore(self, store: SqlStore, key: str, value: str, own_time: datetime) -> None:
        """Restore one snapshot with its own time, counted as its report says."""
        await self._write(
            store.restore([Snapshot(key, value, own_time)]),
            {key: value},
            kind="restore",
            own_time=own_time,
        )

    async def _write(
        self,
        call: Awaitable[Any],
        values: Mapping[str, str],
        *,
        lease: Lease | None = None,
        **extra: Any,
    ) -> None:
        if lease is not None:
            extra |= {"holder": lease.holder.get("id"), "token": lease.token}
        called_at = datetime.now(UTC)  # before ``call`` starts running, so before its save time
        start = time.monotonic()
        outcome, result = await self._call(call)
        end = time.monotonic()
        if isinstance(result, ConflictError):
            extra["conflict_at"] = NEVER if result.stored_at is None else result.stored_at
        if extra.get("kind") == "restore" and outcome == ACKNOWLEDGED:
            counted = next(
                name
                for name in ("added", "replaced", "newer", "conflicting", "unchanged")
                if getattr(result, name)
            )
            extra["counted"] = counted
            outcome = ACKNOWLEDGED if counted in ("added", "replaced") else KEPT
        for key, value in values.items():
            self.writes.append(Write(key, value, start, end, called_at, outcome, **extra))

    async def read(self, store: SqlStore, key: str) -> Read:
        start = time.monotonic()
        outcome, snapshot = await self._call(store.load_snapshot(key))
        end = time.monotonic()
        if snapshot is None:
            read = Read(key, start, end, outcome)
        else:
            value = snapshot.value
            assert isinstance(value, str), f"{key!r} holds {value!r}, which no writer saves"
            read = Read(key, start, end, outcome, value, snapshot.updated_at)
        self.reads.append(read)
        return read

    async def acquire(self, lease: Lease, wait: float = 0) -> bool:
        """Try to take ``lease``, waiting up to ``wait`` seconds; whether it was taken."""
        return await self._lease(lease, "acquire", lease.acquire(wait=wait))

    async def renew(self, lease: Lease) -> bool:
        return await self._lease(lease, "renew", lease.renew())

    async def release(self, lease: Lease) -> None:
        await self._lease(lease, "release", lease.release())

    async def _lease(self, lease: Lease, action: str, call: Awaitable[Any]) -> bool:
        holder = lease.holder.get("id") if action != "acquire" else None
        start = time.monotonic()
        outcome, _ = await self._call(call)
        end = time.monotonic()
        wall = datetime.now(UTC)
        live_until = None
        if outcome == ACKNOWLEDGED and action != "release" and lease.expires_at is not None:
            holder = lease.holder.get("id")
            live_until = end + (lease.expires_at - wall).total_seconds()
        self.leases.append(
            LeaseOp(lease.prefix, action, start, end, outcome, holder, lease.token, live_until)
        )
        return outcome == ACKNOWLEDGED

    def outcomes(self) -> Counter[str]:
        """Calls by outcome (a ``save_many`` counted once per key)."""
        return Counter(w.outcome for w in self.writes) + Counter(r.outcome for r in self.reads)

    def to_json(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "writes": [_pack(w) for w in self.writes],
            "reads": [_pack(r) for r in self.reads],
            "leases": [_pack(op) for op in self.leases],
        }

    def extend(self, data: Mapping[str, Any]) -> None:
        """Add a history another process sent as :meth:`to_json`."""
        self.calls += data["calls"]
        self.writes += [Write(**_unpack(Write, w)) for w in data["writes"]]
        self.reads += [Read(**_unpack(Read, r)) for r in data["reads"]]
        self.leases += [LeaseOp(**_unpack(LeaseOp, op)) for op in data["leases"]]


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


def _pack(record: Write | Read | LeaseOp) -> dict[str, Any]:
    return {
        f.name: value.isoformat() if isinstance(value, datetime) else value
        for f in fields(record)
        if (value := getattr(record, f.name)) is not None
    }


def _unpack(kind: type[Write | Read | LeaseOp], data: Mapping[str, Any]) -> dict[str, Any]:
    timed = {f.name for f in fields(kind) if "datetime" in str(f.type)}
    return {
        name: datetime.fromisoformat(value) if name in timed else value
        for name, value in data.items()
    }
