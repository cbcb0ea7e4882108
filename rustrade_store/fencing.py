"""What a write carries beyond its row, and what its refusal means: this store's leases, the
writer's clock, and the error (if any) a refused write is."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, NamedTuple

from . import _telemetry, clock
from .codec import lease_key
from .errors import ClockSkewError, LeaseHeldError, LeaseLostError, StorageError
from .queries import IGNORE_LEASES, lease_rows, times

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence
    from datetime import datetime

    from sqlalchemy.sql import Executable

    from .dialects import DialectFacts
    from .errors import StoreError

    Execute = Callable[[Executable, Any], Awaitable[list[Sequence[Any]]]]

__all__ = ["Fencing", "Refusals", "held_error", "lease_value"]


class Refusals(NamedTuple):
    """What :meth:`Fencing.explain` found: each refused key's error (``None``: ordered before a
    newer write, which stays), and the stored time of each refused key that is stored."""

    errors: dict[str, StoreError | None]
    stored: dict[str, datetime]


class Fencing:
    """This store's leases (lease row key to the text of its value, constant while held, kept
    once lost) and the leases it lost; the parameters that fence each write; why a write was
    refused."""

    __slots__ = (
        "_facts",
        "_held",
        "_ignore",
        "_lease_rows",
        "_lost",
        "_on_lost",
        "_times",
        "_where",
    )

    def __init__(self, facts: DialectFacts, where: str, *, ignore_leases: bool) -> None:
        self._facts = facts
        self._where = where
        self._ignore = IGNORE_LEASES if ignore_leases else None
        self._held: dict[str, str] = {}
        self._lost: dict[str, LeaseLostError] = {}
        self._on_lost: dict[str, Callable[[LeaseLostError], None]] = {}
        self._times = times(facts)
        self._lease_rows = lease_rows(facts)

    def hold(self, row_key: str, text: str, on_lost: Callable[[LeaseLostError], None]) -> None:
        """Fence writes under ``row_key`` with ``text``; ``on_lost`` hears if a write finds
        the lease gone."""
        self._lost.pop(row_key, None)
        self._held[row_key] = text
        self._on_lost[row_key] = on_lost

    def drop(self, row_key: str) -> None:
        self._held.pop(row_key, None)
        self._lost.pop(row_key, None)
        self._on_lost.pop(row_key, None)

    def lose(self, row_key: str, error: LeaseLostError) -> None:
        """From now on every write under the lease fails at once with ``error``. Its text stays
        in the fence of writes already on their way, so that none of them applies."""
        self._lost[row_key] = error
        on_lost = self._on_lost.pop(row_key, None)
        if on_lost is not None:
            on_lost(error)

    def check(self, key: str) -> None:
        """Raise at once if ``key`` is under a lease this store lost."""
        lost = self._lost.get(lease_key(key) or "")
        if lost is not None:
            raise LeaseLostError(f"write of {key!r} refused: {lost}")

    def now(self) -> dict[str, Any]:
        """The parameter of a statement that reads the clock, where it is the host's."""
        return {"now": clock.now()} if self._facts.host_clock else {}

    def for_key(self, key: str) -> dict[str, Any]:
        """The fence parameters of a single-key statement."""
        row_key = lease_key(key)
        return {"lease_key": row_key, "mine": self._mine(row_key)} | self.now()

    def for_rows(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """The parameters of :func:`~rustrade_store.queries.upsert` for ``rows``."""
        time_text = self._facts.time_text
        source = []
        for row in rows:
            row_key = lease_key(row["key"])
            source.append(
                {
                    "key": row["key"],
                    "value": row["value"],
                    "updated_at": time_text(row["updated_at"]),
                    "lease_key": row_key,
                    "mine": self._mine(row_key),
                }
            )
        return {"rows": json.dumps(source, ensure_ascii=False)} | self.now()

    async def explain(
        self,
        execute: Execute,
        action: str,
        refused: dict[str, datetime],
        *,
        guarded: bool = False,
    ) -> Refusals:
        """What each refused write (key to the time it carried) means: a lease held by another
        store or lost by this one, a clock skew, or ``None``: it was ordered before a newer
        write of its key (or its own earlier attempt), which stays. A write with a ``guarded``
        condition of its own (compare-and-set) may also have been refused by that."""
        keys = list(refused)
        stored = {row[0]: row[1] for row in await execute(self._times, self._keys(keys))}
        row_keys = sorted({row_key for key in keys if (row_key := lease_key(key))})
        leases = {}
        if row_keys:
            params = self._keys(row_keys) | self.now()
            leases = {row[0]: row[1:] for row in await execute(self._lease_rows, params)}
        wall = clock.horizon()
        found: dict[str, StoreError | None] = {}
        for key, sent in refused.items():
            row_key = lease_key(key) or ""
            mine = self._held.get(row_key)
            lease = leases.get(row_key) if self._ignore is None or mine else None
            when = stored.get(key)
            if mine is not None and (lease is None or lease[0] != mine):
                error = LeaseLostError(
                    f"{action} {key!r} refused on {self._where}: this store's lease on "
                    f"{row_key.partition('/')[2]!r} is gone (it expired and another store took "
                    "it, or it was broken); nothing was written"
                )
                self.lose(row_key, error)
                found[key] = error
            elif mine is None and lease is not None and lease[2]:
                found[key] = held_error(action, key, self._where, lease[0], lease[1])
            elif when is not None and when != sent and when > wall:
                found[key] = ClockSkewError(
                    f"{action} {key!r} refused on {self._where}: its stored snapshot was saved "
                    f"at {when.isoformat()}, later than this writer's clock ({wall.isoformat()};"
                    f" this write's time {sent.isoformat()}). Another writer's clock is ahead "
                    "of this one's: synchronise the clocks (NTP); the write applies once this "
                    "clock passes the stored time"
                )
            elif when is not None and when < sent and not guarded:
                found[key] = StorageError(
                    f"{action} {key!r} refused on {self._where}: the stored time "
                    f"{when.isoformat()} is earlier than this write's {sent.isoformat()}, yet it "
                    "was kept: the database compares times in a form the store did not write "
                    "(a row written by another program?). Rewrite that row through the store"
                )
            else:
                found[key] = None
        _telemetry.ordered(self._where, action, found, guarded)
        return Refusals(found, stored)

    def _mine(self, row_key: str | None) -> str | None:
        return self._held.get(row_key or "", self._ignore)

    def _keys(self, keys: list[str]) -> dict[str, Any]:
        return {"keys": self._facts.keys_param(keys)}


def lease_value(text: str) -> dict[str, Any]:
    """The value of a lease row; ``{}`` for a row of the reserved form that is no lease (data
    saved under such a key before leases existed)."""
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def held_error(action: str, key: str, where: str, text: str, until: datetime) -> LeaseHeldError:
    """The error for a write, or a lease, refused by another store's live lease."""
    value = lease_value(text)
    holder = value.get("holder")
    holder = holder if isinstance(holder, dict) else {}
    prefix = value.get("prefix", "?")
    return LeaseHeldError(
        f"{action} {key!r} refused on {where}: {prefix!r} is leased by "
        f"{holder.get('host')} pid {holder.get('pid')} (lease {holder.get('id')}) since "
        f"{holder.get('since')}, until {until.isoformat()} unless renewed. Stop that copy of "
        "the bot, or wait for its lease to expire; an operator who knows it is dead can break "
        "the lease (rustrade-store lease break)",
        holder,
        until,
    )
