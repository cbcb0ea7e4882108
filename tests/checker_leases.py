"""The lease rules of :func:`tests.checker.check`: one holder at a time, and every write that
landed under a prefix landed where its lease (or its lack of one) allowed.

A tenure is one take-over of a lease (its holder id, its token). It is certainly live, by the
database's clock, from the end of a call that returned its expiry until that expiry (a
take-over needs an expired row), and not past the start of its release.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .history import ACKNOWLEDGED, Anomaly

if TYPE_CHECKING:
    from collections.abc import Iterable

    from .history import LeaseOp, Write

__all__ = ["lease_anomalies"]


@dataclass(slots=True)
class _Tenure:
    prefix: str
    holder: str
    token: int
    asked: float
    taken: float
    """The start and the end of the acquire that took it."""
    live: list[tuple[float, float]] = field(default_factory=list)
    released: float | None = None

    def spans(self) -> list[tuple[float, float]]:
        """When it was certainly live."""
        end = float("inf") if self.released is None else self.released
        return [(a, min(b, end)) for a, b in self.live if a < min(b, end)]

    def __str__(self) -> str:
        return f"lease {self.holder} (token {self.token}, taken at {self.taken:.3f})"


def _tenures(ops: Iterable[LeaseOp]) -> list[_Tenure]:
    tenures: dict[str, _Tenure] = {}
    for op in sorted(ops, key=lambda op: op.start):
        if op.holder is None:
            continue
        if op.action == "acquire" and op.outcome == ACKNOWLEDGED and op.token is not None:
            tenures[op.holder] = _Tenure(op.prefix, op.holder, op.token, op.start, op.end)
        tenure = tenures.get(op.holder)
        if tenure is None:
            continue
        if op.outcome == ACKNOWLEDGED and op.live_until is not None:
            tenure.live.append((op.end, op.live_until))
        if op.action == "release":
            tenure.released = op.start if tenure.released is None else tenure.released
    return list(tenures.values())


def _prefix(key: str) -> str:
    return key.partition("/")[0] + "/"


def lease_anomalies(
    landed: Iterable[tuple[Write, float, float]], ops: Iterable[LeaseOp], margin: float
) -> list[Anomaly]:
    """Anomalies of the leases in ``ops``, and of the writes in ``landed`` (each with bounds
    of when it landed) under their prefixes."""
    by_prefix: dict[str, list[_Tenure]] = {}
    for tenure in _tenures(ops):
        by_prefix.setdefault(tenure.prefix, []).append(tenure)
    found: list[Anomaly] = []
    for prefix, tenures in sorted(by_prefix.items()):
        found += _one_holder_at_a_time(prefix, tenures, margin)
    for write, low, high in landed:
        found += _fenced(write, low, high, by_prefix.get(_prefix(write.key), []), margin)
    return found


def _one_holder_at_a_time(prefix: str, tenures: list[_Tenure], margin: float) -> list[Anomaly]:
    """A take-over needs the row expired and writes the next token: no two tenures share a
    token, one taken after another ended has a higher token, and no two are live at once."""
    found = []
    by_token: dict[int, _Tenure] = {}
    for tenure in tenures:
        other = by_token.setdefault(tenure.token, tenure)
        if other is not tenure:
            found.append(Anomaly("two holders of one token", prefix, f"{other} and {tenure}"))
    for later in tenures:
        for earlier in tenures:
            if earlier.taken < later.asked and earlier.token >= later.token:
                found.append(Anomaly("tokens out of order", prefix, f"{earlier}, then {later}"))
    spans = sorted(
        ((a, b, tenure) for tenure in tenures for a, b in tenure.spans()), key=lambda s: s[:2]
    )
    reach: tuple[float, _Tenure] | None = None
    for a, b, tenure in spans:
        if reach is not None and reach[1] is not tenure and a < reach[0] - margin:
            found.append(
                Anomaly(
                    "two live leases",
                    prefix,
                    f"{reach[1]} was live until {reach[0]:.3f}, {tenure} from {a:.3f}",
                )
            )
        if reach is None or b > reach[0]:
            reach = (b, tenure)
    return found


def _fenced(
    write: Write, low: float, high: float, tenures: list[_Tenure], margin: float
) -> list[Anomaly]:
    """A write fenced by a lease lands only while the lease row holds that lease, so never
    after a take-over with a higher token ended; any write lands only where no other tenure
    is live. ``write`` landed between ``low`` and ``high``."""
    found = []
    for tenure in tenures:
        if tenure.holder == write.holder:
            continue
        if write.token is not None and tenure.token > write.token and tenure.taken < low:
            found.append(
                Anomaly(
                    "write under a superseded lease",
                    write.key,
                    f"{write.value!r} of lease {write.holder} (token {write.token}), "
                    f"{write.start:.3f}-{write.end:.3f}, landed after {low:.3f}, once {tenure} "
                    "had taken over",
                )
            )
        inside = [(a, b) for a, b in tenure.spans() if a <= low and high <= b - margin]
        if inside:
            found.append(
                Anomaly(
                    "write under another's live lease",
                    write.key,
                    f"{write.value!r} ({write.kind}, lease {write.holder}), "
                    f"{write.start:.3f}-{write.end:.3f}, landed between {low:.3f} and "
                    f"{high:.3f}, while {tenure} was live ({inside[0][0]:.3f}-{inside[0][1]:.3f})",
                )
            )
    return found
