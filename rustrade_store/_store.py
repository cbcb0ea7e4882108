"""The persistence contract: the Python twin of ``rustrade_core::StateStore``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Self

from .codec import check_keys, encode_entry

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from datetime import datetime
    from types import TracebackType

    from .codec import JSONInput, JSONValue

__all__ = ["Snapshot", "StateStore"]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One stored snapshot: its key, its JSON value and when it was last saved (UTC)."""

    key: str
    value: JSONValue
    updated_at: datetime


class StateStore(ABC):
    """A durable key/value store for framework state snapshots.

    Values are opaque JSON documents keyed by a string. The framework calls :meth:`save` after
    every realised trade and on shutdown, :meth:`load` once per ``(bot, symbol)`` at boot, and
    :meth:`flush` once on graceful shutdown. Genuine backend failures raise
    :class:`~rustrade_store.StorageError`; a bad key or value raises ``ValueError`` or
    ``TypeError`` before anything is written.
    """

    __slots__ = ()

    @abstractmethod
    async def load(self, key: str) -> JSONValue:
        """Return the value saved under ``key``, or ``None`` if there is none.

        A missing key is not an error: a first-ever boot gets ``None``.
        """

    @abstractmethod
    async def save(self, key: str, value: JSONInput) -> None:
        """Store ``value`` under ``key``, replacing any previous value."""

    def check_writable(self, key: str) -> None:
        """Raise if a save of ``key`` is refused before it reaches the database: a
        :class:`~rustrade_store.LeaseLostError` once this store lost the lease on the key's
        prefix. Wrappers that accept saves to write them later (``BufferedStore``) call it."""
        return None

    async def flush(self) -> None:
        """Make every buffered write durable. A no-op for stores that write through."""
        return None

    async def load_many(self, keys: Iterable[str]) -> dict[str, JSONValue]:
        """Return ``{key: await load(key)}`` for every key asked (``None`` where missing).

        Backends override this to use one round trip; the default loads one key at a time.
        """
        return {key: await self.load(key) for key in check_keys(keys)}

    async def save_many(self, values: Mapping[str, JSONInput]) -> None:
        """Save every item of ``values``; a bad key or value is refused before any is saved.

        Backends override this to save all or nothing in one transaction; the default checks
        every item first, then saves one key at a time, and a storage failure can stop it part
        way.
        """
        for key, value in values.items():
            encode_entry(key, value)
        for key, value in values.items():
            await self.save(key, value)

    async def aclose(self) -> None:
        """Release what the store holds. A no-op by default."""
        return None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()
