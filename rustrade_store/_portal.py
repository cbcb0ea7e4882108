"""One event loop in a daemon thread, and the one way sync code runs a coroutine on it.

The shape of APScheduler 4's sync ``Scheduler``: the async store runs on a loop of its own, and
each sync call hands it one coroutine and waits for the answer. Not API: :class:`SyncStore` is.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from typing import TYPE_CHECKING, Any, TypeVar

from ._errors import StorageError
from .codec import BATCH_ROWS

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Coroutine, Iterator

__all__ = ["Portal"]

T = TypeVar("T")

STOP_WAIT = 5.0
"""Seconds :meth:`Portal.stop` waits for the loop's thread to end."""


_LEFT_BEHIND: list[tuple[asyncio.AbstractEventLoop, tuple[object, ...]]] = []
"""What a forked child inherited and must never finalise: see :meth:`Portal.left_behind`."""


class Portal:
    """An event loop running in a daemon thread of its own, owned by one sync store.

    :meth:`call` runs a coroutine there and waits at most ``bound`` seconds for it. Calls from
    the loop's own thread, from a forked child, or after :meth:`stop` are refused with a
    :class:`StorageError` saying why, never left to deadlock or to time out.
    """

    __slots__ = ("_loop", "_pid", "_stopped", "_thread", "what")

    def __init__(self, what: str) -> None:
        self.what = what
        """What the errors name: the store and its URL."""
        self._pid = os.getpid()
        self._stopped = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"rustrade-store portal {what}", daemon=True
        )
        self._thread.start()

    @property
    def forked(self) -> bool:
        """True in a child process forked after the portal started: it has no loop thread."""
        return os.getpid() != self._pid

    def refusal(self) -> StorageError | None:
        """Why a call made now cannot run, or ``None`` if it can."""
        if self.forked:
            return StorageError(
                f"{self.what} was opened in process {self._pid}, and this is a child forked from "
                f"it (pid {os.getpid()}): its event loop thread did not come along; open a new "
                "store in the child"
            )
        if self._stopped:
            return StorageError(f"{self.what}: the store is closed")
        if threading.current_thread() is self._thread:
            return StorageError(
                f"{self.what} was called from its own event loop thread (a callback the store "
                "runs, such as a SQLAlchemy event), which would wait for itself for ever: call "
                "it from another thread"
            )
        return None

    def call(self, coroutine: Coroutine[Any, Any, T], bound: float | None) -> T:
        """Run ``coroutine`` on the loop and return its result or raise its error.

        After ``bound`` seconds without an answer it is cancelled there and a
        :class:`StorageError` says so; an interrupt (Ctrl-C) while waiting cancels it too. Either
        way the caller goes on once the coroutine has ended (or ``bound`` seconds more have
        passed; a second Ctrl-C stops that wait), so nothing it started runs on behind the
        caller's back.
        """
        refused = self.refusal()
        if refused is not None:
            coroutine.close()
            raise refused
        what = getattr(coroutine, "__qualname__", "a call")
        ended = threading.Event()
        tasks: list[asyncio.Task[T]] = []

        def start() -> None:
            task = self._loop.create_task(coroutine)
            task.add_done_callback(lambda _: ended.set())
            tasks.append(task)

        scheduled = False
        try:
            self._loop.call_soon_threadsafe(start)  # in the caller's context: its trace span too
            scheduled = True
            if not ended.wait(bound):
                self._cancel(tasks, ended, bound)
                raise StorageError(
                    f"{what} on {self.what} gave no answer within {bound:g} s, longer than the "
                    "store's own deadline: it was cancelled on the store's event loop (a write "
                    "may or may not have been applied)"
                )
        except RuntimeError:  # closed by another thread since the check above
            if scheduled:
                raise
            coroutine.close()
            raise StorageError(f"{self.what}: the store is closed") from None
        except BaseException:
            if scheduled and not ended.is_set():
                self._cancel(tasks, ended, bound)
            raise
        if tasks[0].cancelled():
            raise StorageError(f"{what} on {self.what}: the store closed while it ran")
        return tasks[0].result()

    def iterate(self, iterator: AsyncIterator[T], bound: float | None) -> Iterator[T]:
        """Yield what ``iterator`` yields on the loop, fetched a page at a time, each page
        bounded as a :meth:`call`."""
        try:
            while True:
                page, finished = self.call(_page(iterator, BATCH_ROWS), bound)
                yield from page
                if finished:
                    return
        finally:
            if self.refusal() is None:
                self.call(_close(iterator), bound)

    def stop(self) -> None:
        """End the loop and its thread; later calls are refused. Only the process that
        started it touches its loop."""
        if self._stopped:
            return
        if self.forked:
            self._stopped = True
            return
        refused = self.refusal()
        if refused is not None:
            raise refused
        self.call(_finish(), STOP_WAIT)
        self._stopped = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(STOP_WAIT)
        if not self._thread.is_alive():
            self._loop.close()

    def left_behind(self, *keep: object) -> None:
        """In a forked child: keep the loop and ``keep`` (the parent's pooled connections)
        alive, and the loop marked closed. A connection finalised here then leaves its socket
        alone (asyncpg's skips its terminate once its loop is closed), and no transport call
        reaches the epoll instance the child shares with the parent, whose loop would stop
        hearing from that socket."""
        _LEFT_BEHIND.append((self._loop, keep))
        with contextlib.suppress(AttributeError):  # a loop that keeps no such flag
            setattr(self._loop, "_closed", True)  # noqa: B010 - asyncio's own is_closed() flag

    def _cancel(
        self, tasks: list[asyncio.Task[T]], ended: threading.Event, wait: float | None
    ) -> None:
        """Cancel the call's task on the loop and wait (up to ``wait`` seconds) for it to end."""
        with contextlib.suppress(RuntimeError):  # the loop has closed: nothing runs there
            self._loop.call_soon_threadsafe(lambda: tasks[0].cancel())
        ended.wait(wait)


async def _finish() -> None:
    """Cancel what still runs on the loop (calls of other threads, which then hear that the
    store closed), and close its async generators."""
    others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)
    await asyncio.get_running_loop().shutdown_asyncgens()


async def _page(iterator: AsyncIterator[T], size: int) -> tuple[list[T], bool]:
    """Up to ``size`` items of ``iterator``, and whether it has ended."""
    items: list[T] = []
    async for item in iterator:
        items.append(item)
        if len(items) == size:
            return items, False
    return items, True


async def _close(iterator: AsyncIterator[Any]) -> None:
    close = getattr(iterator, "aclose", None)
    if close is not None:
        await close()
