"""A lease for synchronous code: taken, renewed and released on the sync store's loop."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    from datetime import datetime
    from types import TracebackType

    from ._lease import Lease
    from ._sync import _Calls

__all__ = ["SyncLease"]


class SyncLease:
    """A :class:`~rustrade_store.Lease` for synchronous code: ``with store.lease("bot1/"):``
    takes it, the store's loop renews it in the background, and leaving releases it."""

    __slots__ = ("_calls", "_lease")

    def __init__(self, calls: _Calls, lease: Lease) -> None:
        self._calls = calls
        self._lease = lease

    @property
    def prefix(self) -> str:
        return self._lease.prefix

    @property
    def ttl(self) -> float:
        return self._lease.ttl

    @property
    def wait(self) -> float:
        return self._lease.wait

    @property
    def held(self) -> bool:
        return self._lease.held

    @property
    def token(self) -> int:
        """The fencing token: it strictly increases each time the lease changes hands."""
        return self._lease.token

    @property
    def holder(self) -> dict[str, Any]:
        """Who holds it: host, pid, a random id, and since when."""
        return self._lease.holder

    @property
    def expires_at(self) -> datetime | None:
        """When the lease expires unless renewed, by the database's clock."""
        return self._lease.expires_at

    def __repr__(self) -> str:
        return f"Sync{self._lease!r}"

    def acquire(self, *, wait: float | None = None) -> Self:
        """Take the lease, waiting up to ``wait`` seconds (default: the lease's) for another
        holder; else :class:`~rustrade_store.LeaseHeldError` naming it."""
        self._calls._call(self._lease.acquire(wait=wait), self.wait if wait is None else wait)
        return self

    def renew(self) -> None:
        """Push the expiry ``ttl`` seconds past now, or raise
        :class:`~rustrade_store.LeaseLostError`."""
        self._calls._call(self._lease.renew())

    def release(self) -> None:
        """Give the lease up; the next holder's token is higher."""
        self._calls._call(self._lease.release())

    def __enter__(self) -> Self:
        return self if self.held else self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()
