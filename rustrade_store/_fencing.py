"""This store's leases, as every write carries them: the lease text that fences each row, and the
leases it lost, whose writes fail before they are sent."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any, Literal

from . import _clock
from ._errors import LeaseLostError
from ._outcome import Write
from ._statements import IGNORE_LEASES
from .codec import lease_key

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from datetime import datetime

    from ._backends import Backend

__all__ = ["Fencing", "clock_param"]


class Fencing:
    """This store's leases (lease row key to the text of its value, constant while held, kept
    once lost), the leases it lost, and the :class:`~rustrade_store._outcome.Write` of each row
    it sends, with the parameters that carry them."""

    __slots__ = ("_backend", "_held", "_ignore", "_lost", "_on_lost", "_valid_until")

    def __init__(self, backend: Backend, *, ignore_leases: bool) -> None:
        self._backend = backend
        self._ignore = ignore_leases
        self._held: dict[str, str] = {}
        self._lost: dict[str, LeaseLostError] = {}
        self._on_lost: dict[str, Callable[[LeaseLostError], object]] = {}
        self._valid_until: dict[str, float] = {}

    def hold(self, row_key: str, text: str, on_lost: Callable[[LeaseLostError], object]) -> None:
        """Fence writes under ``row_key`` with ``text``; ``on_lost`` hears if a write finds
        the lease gone."""
        self._lost.pop(row_key, None)
        self._held[row_key] = text
        self._on_lost[row_key] = on_lost
        self._valid_until[row_key] = float("inf")

    def valid_until(self, row_key: str, deadline: float) -> None:
        """Refuse writes under ``row_key`` from ``deadline`` on (by ``time.monotonic``) unless
        extended: the holder's own count of its lease's life."""
        self._valid_until[row_key] = deadline

    def drop(self, row_key: str) -> None:
        self._held.pop(row_key, None)
        self._lost.pop(row_key, None)
        self._on_lost.pop(row_key, None)
        self._valid_until.pop(row_key, None)

    def lose(self, row_key: str, error: LeaseLostError) -> None:
        """From now on every write under the lease fails at once with ``error``. Its text stays
        in the fence of writes already on their way, so that none of them applies."""
        self._lost[row_key] = error
        on_lost = self._on_lost.pop(row_key, None)
        if on_lost is not None:
            on_lost(error)

    def check(self, key: str) -> None:
        """Raise at once if ``key`` is under a lease this store lost."""
        row_key = lease_key(key) or ""
        if (
            row_key in self._held
            and row_key not in self._lost
            and time.monotonic() >= self._valid_until[row_key]
        ):
            self.lose(
                row_key,
                LeaseLostError(
                    f"the lease on {row_key.partition('/')[2]!r} is lost: no renewal succeeded "
                    "within its ttl"
                ),
            )
        lost = self._lost.get(row_key)
        if lost is not None:
            raise LeaseLostError(f"write of {key!r} refused: {lost}")

    def now(self) -> dict[str, Any]:
        return clock_param(self._backend)

    def write(
        self,
        action: str,
        row: dict[str, Any],
        condition: Literal["plain", "absent", "at", "reset", "delete"] = "plain",
        expected: datetime | None = None,
    ) -> Write:
        """The :class:`Write` of ``row`` (``key``, ``value`` text, ``updated_at``), fenced by this
        store's lease on its prefix as it is now; raise if this store lost that lease."""
        key: str = row["key"]
        self.check(key)
        row_key = lease_key(key)
        return Write(
            action,
            key,
            row["value"],
            row["updated_at"],
            row_key,
            self._held.get(row_key or ""),
            self._ignore,
            condition,
            expected,
        )

    def params(self, write: Write) -> dict[str, Any]:
        """The fence parameters of a single-key statement (``lease_key``, ``mine``)."""
        return {"lease_key": write.lease_key, "mine": self._mine(write)} | self.now()

    def rows(self, writes: Sequence[Write]) -> dict[str, Any]:
        """The parameters of :func:`~rustrade_store._statements.upsert` for ``writes``."""
        time_text = self._backend.time_text
        source = [
            {
                "key": write.key,
                "value": write.text,
                "updated_at": time_text(write.sent),
                "lease_key": write.lease_key,
                "mine": self._mine(write),
            }
            for write in writes
        ]
        return {"rows": json.dumps(source, ensure_ascii=False)} | self.now()

    def _mine(self, write: Write) -> str | None:
        return IGNORE_LEASES if write.ignore_leases and write.mine is None else write.mine


def clock_param(backend: Backend) -> dict[str, Any]:
    """The parameter of a statement that reads the clock, where it is the host's."""
    return {"now": _clock.now()} if backend.host_clock else {}
