"""A checker of recorded histories (:mod:`tests.history`): each key behaves as one atomic
register ordered by save time, compare-and-set and restores answer what was stored, and leases
fence every write.

:func:`check` is a pure function of the history. Each rule's docstring says why a correct store
cannot break it; each rule has a history made by hand that breaks it (tests/test_checker.py).
"""

from __future__ import annotations

from bisect import bisect_left
from typing import TYPE_CHECKING

from .checker_leases import lease_anomalies
from .history import ACKNOWLEDGED, NEVER, REFUSED, Anomaly, Read

if TYPE_CHECKING:
    from collections.abc import Iterable
    from datetime import datetime

    from .history import LeaseOp, Write

__all__ = ["check"]


def check(
    writes: Iterable[Write],
    reads: Iterable[Read],
    leases: Iterable[LeaseOp] = (),
    *,
    margin: float = 0.05,
) -> list[Anomaly]:
    """Every anomaly of the history, key by key, then of its leases (failed reads are left
    out: they saw nothing). ``margin``: seconds by which a database's clock, read through a
    lease's expiry, may differ from this machine's monotonic clock."""
    writes_by_key: dict[str, list[Write]] = {}
    reads_by_key: dict[str, list[Read]] = {}
    for write in writes:
        writes_by_key.setdefault(write.key, []).append(write)
        if write.conflict_at is not None:
            # A refused compare-and-set read the stored time during its call.
            when = None if write.conflict_at == NEVER else write.conflict_at
            seen = Read(write.key, write.start, write.end, ACKNOWLEDGED, None, when, False)
            reads_by_key.setdefault(write.key, []).append(seen)
    for read in reads:
        if read.outcome == ACKNOWLEDGED:
            reads_by_key.setdefault(read.key, []).append(read)
    anomalies: list[Anomaly] = []
    landed: list[tuple[Write, float, float]] = []
    for key in sorted(writes_by_key.keys() | reads_by_key.keys()):
        register = _Register(key, writes_by_key.get(key, []), reads_by_key.get(key, []))
        anomalies += register.check()
        landed += register.landings()
    return anomalies + lease_anomalies(landed, leases, margin)


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
        found += self.refused_writes_never_stored()
        found += self.one_compare_and_set_per_base()
        found += self.compare_and_set_over_the_latest()
        found += self.conflicts_name_a_change()
        found += self.restores_keep_their_time()
        found += self.restores_count_what_was_stored()
        return found

    def _anomaly(self, rule: str, detail: str) -> Anomaly:
        return Anomaly(rule, self.key, detail)

    def _seen(self) -> list[tuple[Read, Write]]:
        return [
            (read, self.writes[read.value])
            for read in self.reads
            if read.with_value and read.value in self.writes
        ]

    def _floor(self, write: Write) -> datetime:
        """The earliest the save time of ``write`` can be: seen by a read, else its own time
        (a restore) or its call time."""
        own = write.own_time if write.own_time is not None else write.called_at
        return self.saved_at.get(write.value, own)

    def landings(self) -> list[tuple[Write, float, float]]:
        """Each write some read saw, with bounds of when it landed: after its start and after
        every read of an older save time began (stored times never go back), before the first
        read of it ended."""
        by_saved = sorted(self.reads, key=lambda read: read.saved)
        times = [read.saved for read in by_saved]
        latest_start: list[float] = []
        for read in by_saved:
            latest_start.append(max(read.start, latest_start[-1] if latest_start else read.start))
        first_seen: dict[str, float] = {}
        for read, write in self._seen():
            first_seen[write.value] = min(read.end, first_seen.get(write.value, read.end))
        landed = []
        for value, high in first_seen.items():
            write = self.writes[value]
            older = bisect_left(times, self.saved_at[value])
            low = max(write.start, latest_start[older - 1]) if older else write.start
            landed.append((write, low, high))
        return landed

    def known_values(self) -> list[Anomaly]:
        """A read returns a value some write put there (values are unique) or a missing key."""
        return [
            self._anomaly("unknown value", f"read at {r.start:.3f} returned {r.value!r}")
            for r in self.reads
            if r.with_value and r.value is not None and r.value not in self.writes
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
        before the call, and a write called after another one ended has a later save time
        (restores, which keep their snapshots' own times, aside)."""
        stamped = {v: s for v, s in self.saved_at.items() if self.writes[v].own_time is None}
        found = [
            self._anomaly(
                "save time before the call",
                f"{value!r} has updated_at {saved}, called at {self.writes[value].called_at}",
            )
            for value, saved in stamped.items()
            if saved < self.writes[value].called_at
        ]
        timed = sorted((self.writes[value] for value in stamped), key=lambda w: w.end)
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

    def _acked_before(self) -> tuple[list[float], list[Write]]:
        """Acknowledged writes by end, with the running maximum of their known save times."""
        ends = [w.end for w in self.acked]
        latest_saved: list[Write] = []
        for write in self.acked:
            if not latest_saved or self._floor(write) > self._floor(latest_saved[-1]):
                latest_saved.append(write)
            else:
                latest_saved.append(latest_saved[-1])
        return ends, latest_saved

    def no_acknowledged_write_lost(self) -> list[Anomaly]:
        """Once a write is acknowledged the stored save time is at least its own (its upsert
        either wrote or met a newer row) and never decreases, so a read that starts later sees
        a save time no older than the write's (its call time, or the one a read saw)."""
        ends, latest_saved = self._acked_before()
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
        acknowledged or not: a late write may land, but not over a newer one. (A restore,
        which keeps an older time, is no such ``w``.)"""
        stamped = [write for write in self.acked if write.own_time is None]
        ends = [write.end for write in stamped]
        latest_start: list[Write] = []
        for write in stamped:
            later = not latest_start or write.start > latest_start[-1].start
            latest_start.append(write if later else latest_start[-1])
        found = []
        for read in self.reads:
            if not read.with_value:
                continue
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

    def refused_writes_never_stored(self) -> list[Anomaly]:
        """A write refused with an answer (a conflict, a lease held or lost, a restore that
        kept a newer snapshot) wrote nothing, so no read returns its value."""
        first: dict[str, Read] = {}
        for read, write in self._seen():
            if write.outcome in REFUSED:
                first.setdefault(write.value, read)
        return [
            self._anomaly(
                "refused write stored",
                f"read {read.start:.3f}-{read.end:.3f} returned {value!r}, whose {write.kind} "
                f"{write.start:.3f}-{write.end:.3f} was refused ({write.outcome})",
            )
            for value, read in first.items()
            if (write := self.writes[value])
        ]

    def _compare_and_sets(self) -> list[Write]:
        return sorted(
            (w for w in self.acked if w.kind == "cas" and w.expected is not None),
            key=lambda w: w.start,
        )

    def one_compare_and_set_per_base(self) -> list[Anomaly]:
        """A compare-and-set applies only over its base and writes a later time, and stored
        times never go back: once one applied, the base is never stored again, so no second
        one on the same base (the same save time, or the key absent) applies."""
        found = []
        bases: dict[datetime, Write] = {}
        for write in self._compare_and_sets():
            assert write.expected is not None
            first = bases.setdefault(write.expected, write)
            if first is not write:
                found.append(
                    self._anomaly(
                        "two compare-and-sets on one base",
                        f"{first.value!r} ({first.start:.3f}-{first.end:.3f}) and "
                        f"{write.value!r} ({write.start:.3f}-{write.end:.3f}) both applied over "
                        f"{_base(write.expected)}",
                    )
                )
        return found

    def compare_and_set_over_the_latest(self) -> list[Anomaly]:
        """An applied compare-and-set found its base stored and wrote its own, later, time;
        stored times never go back. So no write was ever stored with a time between the two:
        stored before, the base would not have been there; after, it would have been refused
        as older. Its own time is the one a read saw, or at least its call time."""
        seen = sorted((saved, value) for value, saved in self.saved_at.items())
        times = [saved for saved, _ in seen]
        found = []
        for write in self._compare_and_sets():
            assert write.expected is not None
            own = self._floor(write)
            index = bisect_left(times, write.expected)
            while index < len(seen) and seen[index][0] == write.expected:
                index += 1
            between = [v for saved, v in seen[index:] if saved < own and v != write.value]
            if between:
                found.append(
                    self._anomaly(
                        "compare-and-set over a newer save",
                        f"{write.value!r} ({write.start:.3f}-{write.end:.3f}, updated_at "
                        f"{self.saved_at.get(write.value, 'never read')}) applied over "
                        f"{_base(write.expected)}, though {between[0]!r} (updated_at "
                        f"{self.saved_at[between[0]]}) was stored between the two",
                    )
                )
        return found

    def conflicts_name_a_change(self) -> list[Anomaly]:
        """A compare-and-set is refused when the stored time is not its base, or when its own
        time is not after the base; its own is not before its call. So a refusal that names
        its base as stored, for a call made after the base, or one of an only-if-absent write
        that names no stored key, refused a write that should have applied."""
        found = []
        for write in self.writes.values():
            if write.kind != "cas" or write.conflict_at is None or write.expected is None:
                continue
            absent = write.expected == write.conflict_at == NEVER
            same = write.conflict_at == write.expected < write.called_at
            if absent or same:
                found.append(
                    self._anomaly(
                        "conflict without a change",
                        f"{write.value!r} ({write.start:.3f}-{write.end:.3f}, called at "
                        f"{write.called_at}) over {_base(write.expected)} was refused, "
                        f"naming {_base(write.conflict_at)} as stored",
                    )
                )
        return found

    def restores_keep_their_time(self) -> list[Anomaly]:
        """A restore writes its snapshot with the snapshot's own time."""
        return [
            self._anomaly(
                "restored at another time",
                f"{value!r} restored with updated_at {self.writes[value].own_time} "
                f"was read with {saved}",
            )
            for value, saved in self.saved_at.items()
            if self.writes[value].own_time not in (None, saved)
        ]

    def restores_count_what_was_stored(self) -> list[Anomaly]:
        """A restore counts its snapshot against what its transaction found: added (the key
        missing), replaced (stored older), newer, or the same time. Stored times never go
        back: what was stored before the call began is at least what reads that ended before
        saw, and the save time of acknowledged writes that ended before; what is stored after
        it ended is what reads that began after saw."""
        found = []
        for write in self.writes.values():
            if write.counted is None or write.own_time is None:
                continue
            before = max(
                [read.saved for read in self.reads if read.end < write.start]
                + [self._floor(w) for w in self.acked if w.end < write.start],
                default=NEVER,
            )
            after = min((read.saved for read in self.reads if read.start > write.end), default=None)
            own, counted = write.own_time, write.counted
            wrong = (
                (counted == "added" and before > NEVER)
                or (counted == "replaced" and before >= own)
                or (counted == "newer" and after is not None and after <= own)
                or (counted in ("conflicting", "unchanged") and before > own)
            )
            if wrong:
                found.append(
                    self._anomaly(
                        "restore miscounted",
                        f"{write.value!r} ({write.start:.3f}-{write.end:.3f}, updated_at {own}) "
                        f"counted {counted}, though the stored time was at least "
                        f"{_base(before)} before it and {_base(after)} after it",
                    )
                )
        return found


def _base(when: datetime | None) -> str:
    return "nothing seen" if when is None else "a missing key" if when == NEVER else str(when)
