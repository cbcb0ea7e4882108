"""Write-behind: saves queue in memory and reach the inner store in batches, durable at flush()."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from .codec import JSONValue, check_key, check_keys, decode, encode, encode_entry
from .errors import StorageError, StoreError
from .store import StateStore

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

__all__ = ["DEFAULT_DELAY", "DEFAULT_MAX_PENDING", "BufferedStore"]

logger = logging.getLogger(__name__)

DEFAULT_DELAY = 0.05
"""Seconds a save may wait in memory before the background writer sends it on."""

DEFAULT_MAX_PENDING = 1000
"""Queued keys that make the background writer send a batch at once, without waiting."""


class BufferedStore(StateStore):
    """A write-behind wrapper around any :class:`StateStore`.

    :meth:`save` checks the key and value (bad input raises at once, as with every store), queues
    the value in memory and returns: the value is **not durable** yet. Saves to the same key
    coalesce, so only the last value is written. A background task sends the queue to the inner
    store with one ``save_many`` after ``delay`` seconds, or at once when ``max_pending`` keys
    are queued. :meth:`load` and :meth:`load_many` see queued values (read your own writes).

    :meth:`flush` returns once every value queued before it is durable in the inner store, and
    raises :class:`~rustrade_store.StorageError` if writing failed; the values it could not write
    stay queued (a newer save of the same key wins) for the next try, so nothing is dropped
    silently. :meth:`aclose` flushes, then closes the inner store; if that flush fails, the
    store stays open and the error propagates, so the caller can try again.
    """

    __slots__ = (
        "_closed",
        "_delay",
        "_failures",
        "_full",
        "_inner",
        "_max_pending",
        "_pending",
        "_wake",
        "_write_lock",
        "_writer",
        "_writing",
    )

    def __init__(
        self,
        inner: StateStore,
        *,
        delay: float = DEFAULT_DELAY,
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> None:
        if not delay >= 0:
            raise ValueError(f"delay must be a number of seconds >= 0, not {delay!r}")
        if max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, not {max_pending!r}")
        self._inner = inner
        self._delay = delay
        self._max_pending = max_pending
        self._pending: dict[str, str] = {}
        """Queued values, as the JSON text the codec made of them when they were saved."""
        self._writing: dict[str, str] = {}
        """The batch being written now: still visible to loads until it is durable."""
        self._write_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._failures = 0
        self._closed = False

    @property
    def inner(self) -> StateStore:
        """The store values are written to."""
        return self._inner

    @property
    def pending(self) -> int:
        """How many keys hold a value that is not durable yet (queued or being written)."""
        return len(self._pending.keys() | self._writing.keys())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._inner!r}, pending={self.pending})"

    # -- the contract ----------------------------------------------------------------------

    async def load(self, key: str) -> JSONValue:
        check_key(key)
        text = self._queued(key)
        if text is not None:
            return decode(text, key)
        return await self._inner.load(key)

    async def save(self, key: str, value: JSONValue) -> None:
        """Queue ``value`` under ``key``; it is durable after the next successful flush."""
        self._check_open("save")
        check_key(key)
        self._queue({key: encode(value)})

    async def load_many(self, keys: Iterable[str]) -> dict[str, JSONValue]:
        wanted = check_keys(keys)
        queued = {key: text for key in wanted if (text := self._queued(key)) is not None}
        missing = [key for key in wanted if key not in queued]
        stored = await self._inner.load_many(missing) if missing else {}
        return {
            key: decode(queued[key], key) if key in queued else stored.get(key) for key in wanted
        }

    async def save_many(self, values: Mapping[str, JSONValue]) -> None:
        """Queue every item, or none if any key or value is refused."""
        self._check_open("save_many")
        self._queue({key: encode_entry(key, value) for key, value in values.items()})

    async def flush(self) -> None:
        """Return once everything queued before this call is durable; raise if it is not."""
        async with self._write_lock:
            await self._write_pending()

    async def aclose(self) -> None:
        """Refuse new saves, flush, stop the background writer and close the inner store.

        If the flush fails it raises and the store stays open (saves accepted again), so the
        caller can try again; nothing queued is dropped.
        """
        if self._closed:
            return
        self._closed = True  # a save arriving while the flush waits must not be dropped
        try:
            await self.flush()
        except BaseException:
            self._closed = False
            raise
        try:
            if self._writer is not None:
                self._writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._writer
                self._writer = None
        finally:
            await self._inner.aclose()

    # -- internals -------------------------------------------------------------------------

    def _check_open(self, action: str) -> None:
        if self._closed:
            raise StorageError(f"{action} on {self!r}: the store is closed")

    def _queued(self, key: str) -> str | None:
        text = self._pending.get(key)
        return self._writing.get(key) if text is None else text

    def _queue(self, texts: dict[str, str]) -> None:
        if not texts:
            return
        self._pending.update(texts)
        if self._writer is None or self._writer.done():  # done: cancelled from outside
            self._writer = asyncio.get_running_loop().create_task(self._write_behind())
        if len(self._pending) >= self._max_pending:
            self._full.set()
        self._wake.set()

    async def _write_pending(self) -> None:
        """Write the queue with one ``save_many``; on failure put back what a newer save did not
        replace. Callers hold the write lock, so batches reach the inner store in order."""
        if not self._pending:
            return
        batch, self._pending = self._pending, {}
        self._writing = batch
        try:
            await self._inner.save_many({key: decode(text, key) for key, text in batch.items()})
        except BaseException as exc:
            self._pending = batch | self._pending
            if isinstance(exc, StoreError) or not isinstance(exc, Exception):
                raise
            raise StorageError(
                f"writing {len(batch)} queued value(s) to {self._inner!r} failed: {exc}"
            ) from exc
        finally:
            self._writing = {}

    async def _write_behind(self) -> None:
        """The background writer: a batch after ``delay``, or at once when the queue is full."""
        while True:
            await self._wake.wait()
            if self._delay and not self._full.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self._delay)
            self._wake.clear()
            self._full.clear()
            async with self._write_lock:
                try:
                    await self._write_pending()
                except StoreError as exc:
                    # The values stay queued and the next flush() reports the failure; retry
                    # later, backing off up to 5 s, rather than hammering a broken store.
                    self._failures += 1
                    logger.warning(
                        "write-behind of %d key(s) failed (attempt %d), retrying: %s",
                        len(self._pending),
                        self._failures,
                        exc,
                    )
                else:
                    self._failures = 0
            if self._failures:
                backoff = max(self._delay, 0.05) * 2 ** min(self._failures, 10)
                await asyncio.sleep(min(5.0, backoff))
                self._wake.set()
