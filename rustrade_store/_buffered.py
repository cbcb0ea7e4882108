"""Write-behind: saves queue in memory and reach the inner store in batches, durable at flush()."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from . import _telemetry
from ._errors import LeaseLostError, StorageError, StoreError
from ._store import StateStore
from .codec import JSONInput, JSONValue, check_key, check_keys, decode, encode, encode_entry

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

__all__ = ["DEFAULT_DELAY", "DEFAULT_MAX_PENDING", "BufferedStore"]

logger = logging.getLogger("rustrade_store.buffered")

DEFAULT_DELAY = 0.05
"""Seconds a save may wait in memory before the background writer sends it on."""

DEFAULT_MAX_PENDING = 1000
"""Queued keys that make the background writer send a batch at once, without waiting."""

NAMED_IN_WARNING = 20
"""Keys a warning about unwritten values names before it only counts the rest."""


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
    silently. :meth:`aclose` flushes, then closes the inner store; every caller, however many
    close at once, returns only once that flush has succeeded and raises if it failed, in which
    case the store stays open so the caller can try again. A store garbage-collected, or left
    behind by its event loop, with values never written logs a warning naming their keys.
    """

    __slots__ = (
        "__weakref__",
        "_closed",
        "_closing",
        "_delay",
        "_failures",
        "_full",
        "_inner",
        "_max_pending",
        "_pending",
        "_reported",
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
        self._closing: asyncio.Future[BaseException | None] | None = None
        """The latest close: how it ended (``None`` once closed), or cancelled if called off."""
        self._reported = False
        """Whether the values queued now were already reported as lost."""

    def __del__(self) -> None:
        """Values that die with the store are logged by key, never lost without a word."""
        if hasattr(self, "_reported"):  # False when __init__ refused its arguments
            self._report_unflushed("was garbage-collected")

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

    async def save(self, key: str, value: JSONInput) -> None:
        """Queue ``value`` under ``key``; it is durable after the next successful flush."""
        self._check_open("save")
        check_key(key)
        self._inner.check_writable(key)
        self._queue({key: encode(value)})

    async def load_many(self, keys: Iterable[str]) -> dict[str, JSONValue]:
        wanted = check_keys(keys)
        queued = {key: text for key in wanted if (text := self._queued(key)) is not None}
        missing = [key for key in wanted if key not in queued]
        stored = await self._inner.load_many(missing) if missing else {}
        return {
            key: decode(queued[key], key) if key in queued else stored.get(key) for key in wanted
        }

    async def save_many(self, values: Mapping[str, JSONInput]) -> None:
        """Queue every item, or none if any key or value is refused."""
        self._check_open("save_many")
        texts = {key: encode_entry(key, value) for key, value in values.items()}
        for key in texts:
            self._inner.check_writable(key)
        self._queue(texts)

    def check_writable(self, key: str) -> None:
        self._inner.check_writable(key)

    async def flush(self) -> None:
        """Return once everything queued before this call is durable; raise if it is not."""
        async with self._write_lock:
            await self._write_pending()

    async def aclose(self) -> None:
        """Refuse new saves, flush, stop the background writer and close the inner store.

        Concurrent calls wait for one close: each returns once it succeeded, or raises its error.
        If the flush fails the store stays open (saves accepted again), so the caller can try
        again; nothing queued is dropped. A cancelled call calls its close off, unless another
        call is waiting on it, which then carries it on. After a successful close it returns at
        once.
        """
        while (closing := self._closing) is not None and not closing.done():
            await asyncio.wait([closing])  # raises only if this caller is cancelled
            if not closing.cancelled():
                if (error := closing.result()) is not None:
                    raise error
                return
        if closing is not None and not closing.cancelled() and closing.result() is None:
            return
        await self._close()

    # -- internals -------------------------------------------------------------------------

    async def _close(self) -> None:
        """Run one close, and tell every :meth:`aclose` waiting on it how it ended."""
        closing = self._closing = asyncio.get_running_loop().create_future()
        self._closed = True  # a save arriving while the flush waits must not be dropped
        try:
            await self._shut_down()
        except asyncio.CancelledError:
            closing.cancel()
            raise
        except BaseException as exc:
            closing.set_result(exc)
            raise
        closing.set_result(None)

    async def _shut_down(self) -> None:
        """Flush, stop the background writer, close the inner store; a failed flush reopens."""
        try:
            await self.flush()
        except BaseException:
            self._closed = False
            raise
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.wait([self._writer])
            self._writer = None
        await self._inner.aclose()

    def _report_unflushed(self, event: str) -> None:
        """Warn, once, naming the keys whose values never reached the inner store."""
        keys = sorted(self._pending.keys() | self._writing.keys())
        if not keys or self._reported:
            return
        self._reported = True
        logger.warning(
            "%r %s with %d value(s) never written to the inner store: %s",
            self,
            event,
            len(keys),
            _some(keys),
        )

    def _check_open(self, action: str) -> None:
        if self._closed:
            raise StorageError(f"{action} on {self!r}: the store is closed")

    def _queued(self, key: str) -> str | None:
        text = self._pending.get(key)
        return self._writing.get(key) if text is None else text

    @_telemetry.buffered_queue
    def _queue(self, texts: dict[str, str]) -> None:
        if not texts:
            return
        self._pending.update(texts)
        self._reported = False
        if self._writer is None or self._writer.done():  # done: cancelled from outside
            self._writer = asyncio.get_running_loop().create_task(self._write_behind())
        if len(self._pending) >= self._max_pending:
            self._full.set()
        self._wake.set()

    @_telemetry.buffered_write
    async def _write_pending(self) -> None:
        """Write the queue with one ``save_many``; on failure put back what a newer save did not
        replace. Callers hold the write lock, so batches reach the inner store in order.

        Values the inner store can never write any more (under a lease it lost, found before
        or by this very write) are dropped from the queue, named in a warning and in the
        :class:`LeaseLostError` raised once the others are written: kept, they would hold
        every other key back for good.
        """
        lost: dict[str, StoreError] = {}
        for attempt in range(2):  # a lease found lost by the write itself: again without its keys
            if not self._pending:
                break
            for key in self._pending:
                try:
                    self._inner.check_writable(key)
                except StoreError as exc:
                    lost[key] = exc
            batch = {key: text for key, text in self._pending.items() if key not in lost}
            self._pending = {}
            self._writing = batch
            try:
                if batch:
                    values = {key: decode(text, key) for key, text in batch.items()}
                    await self._inner.save_many(values)
                break
            except LeaseLostError:
                self._pending = batch | self._pending
                if attempt:
                    raise
            except BaseException as exc:
                self._pending = batch | self._pending
                if isinstance(exc, StoreError) or not isinstance(exc, Exception):
                    raise
                raise StorageError(
                    f"writing {len(batch)} queued value(s) to {self._inner!r} failed: {exc}"
                ) from exc
            finally:
                self._writing = {}
        if lost:
            keys = _some(lost)
            logger.warning("queued values dropped, their lease is lost: %s", keys)
            error = next(iter(lost.values()))
            raise type(error)(f"queued values of {keys} were not written: {error}") from error

    async def _write_behind(self) -> None:
        """The background writer: a batch after ``delay``, or at once when the queue is full."""
        try:
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
        except asyncio.CancelledError:
            # aclose() cancels it with nothing queued; values queued now die with the event loop.
            self._report_unflushed("had its background writer cancelled")
            raise


def _some(keys: Iterable[str]) -> str:
    """The first keys, in order, and how many more: for a message that must stay short."""
    ordered = sorted(keys)
    named = ", ".join(map(repr, ordered[:NAMED_IN_WARNING]))
    more = len(ordered) - NAMED_IN_WARNING
    return named + (f" and {more} more" if more > 0 else "")
