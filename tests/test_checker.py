"""The history checker (:func:`tests.checker.check`) on histories made by hand: each rule flags
the history that breaks it, and only the rules that history breaks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from .checker import check
from .history import (
    ACKNOWLEDGED,
    CONFLICT,
    FAILED,
    HELD,
    KEPT,
    LOST,
    NEVER,
    TIMED_OUT,
    LeaseOp,
    Read,
    Write,
)

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def _at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def _write(
    value: str, start: float, end: float, outcome: str = ACKNOWLEDGED, **extra: Any
) -> Write:
    key = extra.pop("key", "p/k" if "holder" in extra or "token" in extra else "k")
    return Write(key, value, start, end, _at(start), outcome, **extra)


def _cas(value: str, start: float, end: float, base: float | None, **extra: Any) -> Write:
    """A compare-and-set on the save time ``base`` (``None``: only if absent)."""
    return _write(
        value, start, end, kind="cas", expected=NEVER if base is None else _at(base), **extra
    )


def _restore(value: str, start: float, end: float, own: float, counted: str) -> Write:
    outcome = ACKNOWLEDGED if counted in ("added", "replaced") else KEPT
    return _write(value, start, end, outcome, kind="restore", own_time=_at(own), counted=counted)


def _read(
    start: float, end: float, seen: Write | str | None, saved: float | None = None, key: str = ""
) -> Read:
    """A read of ``seen``, with the save time ``saved`` (default: just after its call, or a
    restore's own)."""
    if isinstance(seen, Write):
        key = key or seen.key
        if saved is None and seen.own_time is not None:
            saved = (seen.own_time - T0).total_seconds()
        saved = seen.start + 1e-6 if saved is None else saved
        seen = seen.value
    when = None if saved is None else _at(saved)
    return Read(key or "k", start, end, ACKNOWLEDGED, seen, when)


def _lease(
    action: str, start: float, end: float, holder: str, token: int, until: float | None
) -> LeaseOp:
    outcome = ACKNOWLEDGED
    return LeaseOp("p/", action, start, end, outcome, holder, token, until)


A = _write("a", 0.0, 1.0)
B = _write("b", 2.0, 3.0)
C = _write("c", 0.2, 1.2)
F = _write("f", 1.5, 1.8, FAILED)
LATE = _write("late", 0.5, 1.5, TIMED_OUT)
RETRIED = _write("retried", 0.0, 2.0)  # acknowledged after a retry
MEANWHILE = _write("meanwhile", 1.0, 1.5)
CAS_A = _cas("cas-a", 2.0, 2.5, A.start + 1e-6)  # on A's save time
CAS_A2 = _cas("cas-a2", 2.1, 2.6, A.start + 1e-6)
FIRST = _cas("first", 0.0, 0.5, None)
REFUSED_FIRST = _write(
    "second", 1.0, 1.5, CONFLICT, kind="cas", expected=NEVER, conflict_at=_at(1e-6)
)

Case = tuple[list[Write], list[Read], list[LeaseOp], set[str]]
CASES: dict[str, Case] = {
    "in order": ([A, B], [_read(1.1, 1.2, A), _read(3.1, 3.2, B)], [], set()),
    "overlapping writes seen in either order while they run": (
        [A, C],
        [_read(0.5, 0.6, A), _read(0.7, 0.8, C), _read(1.3, 1.4, C)],
        [],
        set(),
    ),
    "a failed write landing late in its place": ([A, F], [_read(5, 5.1, F)], [], set()),
    "a failed write that never landed": ([A, F], [_read(5, 5.1, A)], [], set()),
    "a failed write landing over a newer save": (
        [LATE, B],
        [_read(3.5, 3.6, B), _read(4, 4.1, LATE)],
        [],
        {"read went back", "acknowledged write lost", "stale read"},
    ),
    "a retry writing over a newer save": (
        [RETRIED, MEANWHILE],
        [_read(1.6, 1.7, MEANWHILE), _read(2.5, 2.6, RETRIED)],
        [],
        {"read went back", "acknowledged write lost"},
    ),
    "the older of two acknowledged saves": (
        [A, C],
        [_read(1.3, 1.4, A)],
        [],
        {"acknowledged write lost"},
    ),
    "a missing key after a save": (
        [A],
        [_read(1.5, 1.6, None)],
        [],
        {"acknowledged write lost", "stale read"},
    ),
    "a read from the future": ([B], [_read(1.0, 1.5, B)], [], {"read from the future"}),
    "an unknown value": ([A], [_read(1.5, 1.6, "zzz", 0.5)], [], {"unknown value"}),
    "two save times for one write": (
        [A],
        [_read(1.1, 1.2, A), _read(1.3, 1.4, A, 0.1)],
        [],
        {"two save times"},
    ),
    "a save time before the call": (
        [A],
        [_read(1.1, 1.2, A, -1.0)],
        [],
        {"save time before the call"},
    ),
    "save times out of call order": (
        [A, B],
        [_read(0.5, 0.6, A, 2.5), _read(3.5, 3.6, B, 2.1)],
        [],
        {"save times out of call order", "read went back", "acknowledged write lost"},
    ),
    # -- compare-and-set
    "compare-and-sets in a chain": (
        [A, CAS_A, _cas("next", 3.0, 3.5, 2.0 + 1e-6), FIRST],
        [_read(1.1, 1.2, A), _read(2.7, 2.8, CAS_A), _read(4, 4.1, "next", 3.0 + 1e-6)],
        [],
        set(),
    ),
    "a conflict naming a newer save": (
        [
            A,
            B,
            _write(
                "x", 2.2, 2.4, CONFLICT, kind="cas", expected=_at(1e-6), conflict_at=_at(2 + 1e-6)
            ),
        ],
        [_read(3.1, 3.2, B)],
        [],
        set(),
    ),
    "two compare-and-sets on one base": (
        [A, CAS_A, CAS_A2],
        [_read(1.1, 1.2, A), _read(3.0, 3.1, CAS_A2)],
        [],
        {"two compare-and-sets on one base"},
    ),
    "two only-if-absent writes both applied": (
        [FIRST, _cas("also", 1.0, 1.5, None)],
        [],
        [],
        {"two compare-and-sets on one base"},
    ),
    "a compare-and-set over a save it did not see": (
        [A, MEANWHILE, _cas("blind", 1.6, 1.9, 1e-6)],
        [_read(1.55, 1.58, MEANWHILE), _read(2.0, 2.1, "blind", 1.6 + 1e-6)],
        [],
        {"compare-and-set over a newer save"},
    ),
    "a refused compare-and-set that wrote": (
        [FIRST, REFUSED_FIRST],
        [_read(2.0, 2.1, REFUSED_FIRST)],
        [],
        {"refused write stored"},
    ),
    "a conflict naming the base itself": (
        [A, _write("x", 2.0, 2.5, CONFLICT, kind="cas", expected=_at(1e-6), conflict_at=_at(1e-6))],
        [],
        [],
        {"conflict without a change"},
    ),
    "an only-if-absent write refused over a missing key": (
        [_write("x", 2.0, 2.5, CONFLICT, kind="cas", expected=NEVER, conflict_at=NEVER)],
        [],
        [],
        {"conflict without a change"},
    ),
    "a conflict that saw an older time than a read before it": (
        [A, B, _write("x", 4.0, 4.5, CONFLICT, kind="cas", expected=_at(9), conflict_at=_at(1e-6))],
        [_read(3.1, 3.2, B)],
        [],
        {"read went back", "acknowledged write lost"},
    ),
    # -- restore
    "restores counted as stored": (
        [
            A,
            _restore("older", 1.5, 1.6, -5.0, "newer"),
            _restore("newer", 2.0, 2.1, 1.8, "replaced"),
        ],
        [_read(1.1, 1.2, A), _read(2.2, 2.3, "newer", 1.8)],
        [],
        set(),
    ),
    "a restore of an existing key counted as added": (
        [A, _restore("r", 2.0, 2.1, 1.8, "added")],
        [],
        [],
        {"restore miscounted"},
    ),
    "a restore that kept a newer save yet wrote": (
        [A, _restore("r", 2.0, 2.1, 0.5, "newer")],
        [_read(2.2, 2.3, "r", 0.5)],
        [],
        {"refused write stored", "restore miscounted"},
    ),
    "a restore stored at another time": (
        [_restore("r", 2.0, 2.1, 1.0, "added")],
        [_read(2.2, 2.3, "r", 1.5)],
        [],
        {"restored at another time"},
    ),
    # -- leases
    "leases handed over, each holder writing under its own": (
        [
            _write("h1", 0.2, 0.3, holder="L1", token=1),
            _write("h2", 2.2, 2.3, holder="L2", token=2),
            _write("free", 3.2, 3.3, key="p/k"),
            _write("held", 2.4, 2.5, HELD, key="p/k"),
        ],
        [
            _read(0.4, 0.5, "h1", 0.2 + 1e-6, "p/k"),
            _read(2.6, 2.7, "h2", 2.2 + 1e-6, "p/k"),
            _read(3.4, 3.5, "free", 3.2 + 1e-6, "p/k"),
        ],
        [
            _lease("acquire", 0.0, 0.1, "L1", 1, 1.1),
            _lease("release", 1.0, 1.1, "L1", 1, None),
            _lease("acquire", 2.0, 2.1, "L2", 2, 4.1),
            _lease("release", 3.0, 3.1, "L2", 2, None),
        ],
        set(),
    ),
    "two holders of one token": (
        [],
        [],
        [_lease("acquire", 0.0, 0.1, "L1", 1, 1.0), _lease("acquire", 2.0, 2.1, "L2", 1, 3.0)],
        {"two holders of one token", "tokens out of order"},
    ),
    "tokens out of order": (
        [],
        [],
        [_lease("acquire", 0.0, 0.1, "L1", 2, 1.0), _lease("acquire", 2.0, 2.1, "L2", 1, 3.0)],
        {"tokens out of order"},
    ),
    "two live leases": (
        [],
        [],
        [_lease("acquire", 0.0, 0.1, "L1", 1, 2.0), _lease("acquire", 1.0, 1.1, "L2", 2, 3.0)],
        {"two live leases"},
    ),
    "a write under a superseded lease": (
        [_write("old", 2.0, 2.5, holder="L1", token=1)],
        [_read(2.1, 2.2, None, key="p/k"), _read(2.6, 2.7, "old", 2.0 + 1e-6, "p/k")],
        [_lease("acquire", 0.0, 0.1, "L1", 1, 1.0), _lease("acquire", 1.5, 1.6, "L2", 2, 1.8)],
        {"write under a superseded lease"},
    ),
    "a write of a store holding no lease under a live one": (
        [_write("free", 1.0, 1.5, key="p/k")],
        [_read(1.6, 1.7, "free", 1.0 + 1e-6, "p/k")],
        [_lease("acquire", 0.0, 0.1, "L1", 1, 3.0)],
        {"write under another's live lease"},
    ),
    "a write refused by a lease that was stored": (
        [
            _write("held", 1.0, 1.5, HELD, key="p/k"),
            _write("lost", 2.0, 2.5, LOST, holder="L1", token=1),
        ],
        [_read(1.6, 1.7, "held", 1.0 + 1e-6, "p/k"), _read(2.6, 2.7, "lost", 2.0 + 1e-6, "p/k")],
        [],
        {"refused write stored"},
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_the_checker_flags_exactly_the_broken_rules(case: str) -> None:
    writes, reads, leases, broken = CASES[case]
    assert {anomaly.rule for anomaly in check(writes, reads, leases)} == broken
