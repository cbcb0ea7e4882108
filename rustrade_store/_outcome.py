"""What a refused write means, decided from what its own transaction saw.

A write that the database did not apply is judged by :func:`judge` from the rows read in the
same transaction, under the locks its statement took (the stored snapshot, the lease row), and
from whether an earlier attempt of the same call may have taken effect. It is a pure function:
no statement runs here, and every message a refusal can carry is in :data:`MESSAGES`.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ._errors import (
    ClockSkewError,
    ConflictError,
    LeaseHeldError,
    LeaseLostError,
    OutcomeUnknownError,
    StorageError,
    StoreError,
)

if TYPE_CHECKING:
    from datetime import datetime

__all__ = [
    "MESSAGES",
    "LeaseRow",
    "Seen",
    "Stored",
    "Verdict",
    "Write",
    "held_error",
    "judge",
    "lease_text",
    "lease_value",
]


class Verdict(enum.Enum):
    """A refused write that is not an error."""

    APPLIED = "applied"
    """Its own earlier attempt, whose answer was lost, stored it."""
    SUPERSEDED = "superseded"
    """Ordered before a newer save of its key, which stays (write ordering)."""
    NO_LEASE_ROW = "no lease row"
    """A write by a store holding no lease, under a prefix that has no lease row yet: the row is
    created (unheld) and the write tried again, so that a take-over can be serialised with it."""
    AGAIN = "again"
    """Refused by a lease row that is not live now and refuses nothing else: it was live, or
    not yet there, when the statement ran. Nothing was written; the write is tried again."""


@dataclass(frozen=True, slots=True)
class Stored:
    """A stored snapshot as the write's transaction saw it: its time and JSON text."""

    updated_at: datetime
    text: str


@dataclass(frozen=True, slots=True)
class LeaseRow:
    """A lease row as the write's transaction saw it, with the database clock of that read."""

    text: str
    until: datetime
    now: datetime

    @property
    def live(self) -> bool:
        return self.until > self.now


@dataclass(frozen=True, slots=True)
class Seen:
    """What the transaction saw of one key: its snapshot, and its prefix's lease row."""

    stored: Stored | None
    lease: LeaseRow | None


@dataclass(frozen=True, slots=True)
class Write:
    """One row of a write, as sent: ``mine`` is this store's lease text (``None``: holds none;
    ``ignore_leases`` for an operator's forced write); ``condition`` is plain, ``absent`` (only
    if missing), ``at`` (only over the snapshot saved at ``expected``), ``reset`` (the same, even
    where ``expected`` is later than ``sent``: a repair) or ``delete`` (of a snapshot saved
    before ``sent``)."""

    action: str
    key: str
    text: str
    sent: datetime
    lease_key: str | None
    mine: str | None
    ignore_leases: bool = False
    condition: Literal["plain", "absent", "at", "reset", "delete"] = "plain"
    expected: datetime | None = None


MESSAGES: dict[str, str] = {
    "lost": (
        "{action} {key!r} refused on {where}: this store's lease on {prefix!r} is gone (it "
        "expired and another store took it, or it was broken); nothing was written"
    ),
    "held": (
        "{action} {key!r} refused on {where}: {prefix!r} is leased by {host} pid {pid} (lease "
        "{id}) since {since}, until {until} unless renewed. Stop that copy of the bot, or wait "
        "for its lease to expire; an operator who knows it is dead can break the lease "
        "(rustrade-store lease break)"
    ),
    "exists": (
        "{action} {key!r} refused on {where}: the key exists (saved at {stored}); nothing was "
        "written"
    ),
    "deleted": (
        "{action} {key!r} refused on {where}: the key was deleted since {expected}; nothing was "
        "written"
    ),
    "moved": (
        "{action} {key!r} refused on {where}: it was saved again at {stored}, after the "
        "{expected} this write was based on; load it again and redo the change. Nothing was "
        "written"
    ),
    "not after": (
        "{action} {key!r} refused on {where}: its time {sent} is not after the stored {stored}; "
        "nothing was written"
    ),
    "skew": (
        "{action} {key!r} refused on {where}: its stored snapshot was saved at {stored}, later "
        "than this writer's clock ({wall}; this write's time {sent}). Another writer's clock is "
        "ahead of this one's: synchronise the clocks (NTP); the write applies once this clock "
        "passes the stored time"
    ),
    "earlier": (
        "{action} {key!r} refused on {where}: the stored time {stored} is earlier than this "
        "write's {sent}, yet it was kept: the database compares times in a form the store did "
        "not write (a row written by another program?). Rewrite that row through the store"
    ),
    "unknown": (
        "{action} {key!r} on {where}: the answer to an earlier attempt was lost, and whether it "
        "was written is unknown: {why}. Load the key to see what is stored before redoing it"
    ),
}
"""Every message of a refused write, by the reason's name."""


def judge(
    write: Write, seen: Seen, *, maybe_applied: bool, where: str, wall: datetime
) -> Verdict | StoreError:
    """What a write that its statement did not apply means, from what its transaction saw.

    ``maybe_applied``: an earlier attempt of the same call may have taken effect (its answer
    was lost). A stored row with this write's own time and text is then that attempt; any
    other refusal is an :class:`OutcomeUnknownError`.
    ``wall`` is this process's clock (:func:`~rustrade_store._clock.horizon`).
    """
    stored, lease = seen.stored, seen.lease
    if (
        maybe_applied
        and write.condition != "delete"
        and stored is not None
        and (stored.updated_at, stored.text) == (write.sent, write.text)
    ):
        return Verdict.APPLIED
    facts = _facts(write, stored, where, wall)
    error = _refusal(write, stored, lease, facts)
    if error is Verdict.SUPERSEDED and write.condition == "delete" and maybe_applied:
        why = "the key is gone, or saved again, and that attempt may have removed it"
        return OutcomeUnknownError(MESSAGES["unknown"].format(why=why, **facts))
    if isinstance(error, Verdict):
        return error
    if maybe_applied:
        # Not even an older stored row shows that the attempt did not land: the key may have
        # been deleted since, and restored from an older backup.
        return OutcomeUnknownError(MESSAGES["unknown"].format(why=error, **facts))
    return error


def _refusal(
    write: Write, stored: Stored | None, lease: LeaseRow | None, facts: dict[str, Any]
) -> Verdict | StoreError:
    guarded = write.lease_key is not None and not (write.ignore_leases and write.mine is None)
    if guarded and write.mine is not None and (lease is None or lease.text != write.mine):
        return LeaseLostError(MESSAGES["lost"].format(**facts))
    if guarded and write.mine is None:
        if lease is None:
            return Verdict.NO_LEASE_ROW
        if lease.live:
            return held_error(write.action, write.key, facts["where"], lease.text, lease.until)
    if write.condition == "absent" and stored is not None:
        return ConflictError(MESSAGES["exists"].format(**facts), stored.updated_at)
    if write.condition in ("at", "reset"):
        if stored is None:
            return ConflictError(MESSAGES["deleted"].format(**facts), None)
        if stored.updated_at != write.expected:
            return ConflictError(MESSAGES["moved"].format(**facts), stored.updated_at)
        if write.condition == "at" and stored.updated_at >= write.sent:
            return ConflictError(MESSAGES["not after"].format(**facts), stored.updated_at)
    elif stored is not None and stored.updated_at >= write.sent:
        if stored.updated_at > facts["wall_time"] and stored.updated_at != write.sent:
            return ClockSkewError(MESSAGES["skew"].format(**facts))
        return Verdict.SUPERSEDED
    if write.condition == "delete" and stored is None:
        return Verdict.SUPERSEDED
    if guarded and write.mine is None:
        return Verdict.AGAIN
    if stored is not None:
        return StorageError(MESSAGES["earlier"].format(**facts))
    return StorageError(
        f"{write.action} {write.key!r} refused on {facts['where']} for no reason the store can "
        "see (a trigger or a rule of the database?); nothing was written"
    )


def _facts(write: Write, stored: Stored | None, where: str, wall: datetime) -> dict[str, Any]:
    return {
        "action": write.action,
        "key": write.key,
        "where": where,
        "prefix": (write.lease_key or "").partition("/")[2],
        "sent": write.sent.isoformat(),
        "stored": None if stored is None else stored.updated_at.isoformat(),
        "expected": None if write.expected is None else write.expected.isoformat(),
        "wall": wall.isoformat(),
        "wall_time": wall,
    }


def lease_value(text: str) -> dict[str, Any]:
    """The value of a lease row; ``{}`` for a row of the reserved form that is no lease (data
    saved under such a key before leases existed)."""
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def lease_text(value: dict[str, Any]) -> str:
    """The text of a lease row's value, as every store writes and compares it."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def held_error(action: str, key: str, where: str, text: str, until: datetime) -> LeaseHeldError:
    """The error for a write, or a lease, refused by another store's live lease."""
    value = lease_value(text)
    holder = value.get("holder")
    holder = holder if isinstance(holder, dict) else {}
    message = MESSAGES["held"].format(
        action=action,
        key=key,
        where=where,
        prefix=value.get("prefix", "?"),
        host=holder.get("host"),
        pid=holder.get("pid"),
        id=holder.get("id"),
        since=holder.get("since"),
        until=until.isoformat(),
    )
    return LeaseHeldError(message, holder, until)
