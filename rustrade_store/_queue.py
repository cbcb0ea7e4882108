"""Group commit: concurrent single-key calls gathered into batches, each run by the caller's
``run`` as one statement; the one writer's lock, its gate; and the task that runs work to its
end once begun. No SQL here."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import weakref
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeVar

from .codec import BATCH_ROWS

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Sequence

    from sqlalchemy.engine import Engine
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["GroupCommit", "in_batch", "retrieve", "to_the_end", "writer_lock"]

T = TypeVar("T")

_IN_BATCH: ContextVar[bool] = ContextVar("_IN_BATCH", default=False)


def in_batch() -> bool:
    """Whether this runs in a batch's task: no caller can cancel it, and it holds the gate (the
    one writer's lock) already where there is one."""
    return _IN_BATCH.get()


_WRITERS: weakref.WeakKeyDictionary[Engine, list[Any]] = weakref.WeakKeyDictionary()
"""Per engine with one writer: the event loop its lock serves (``None`` until one uses it), and
the lock."""


def writer_lock(engine: AsyncEngine, loop: asyncio.AbstractEventLoop | None) -> asyncio.Lock:
    """The one writer's lock of ``engine`` on ``loop``, shared by every store on the engine:
    two stores on one in-memory database share its one connection, and one's transaction must
    not take in the other's statements (nor its ROLLBACK undo them)."""
    held = _WRITERS.get(engine.sync_engine)
    if held is None or (loop is not None and held[0] is not None and held[0] is not loop):
        held = [loop, asyncio.Lock()]
        _WRITERS[engine.sync_engine] = held
    elif loop is not None:
        held[0] = loop
    lock: asyncio.Lock = held[1]
    return lock


class _ToTheEnd(asyncio.Task[Any]):
    """A task that declines ``cancel()``, the one way asyncio offers to do so.

    A shield protects work from its caller's cancellation, but ``asyncio.run`` cancels every
    task left when its main coroutine returns, the shielded inner task included. Cut off there,
    mid-statement, the next loop's saves on an in-memory store returned with nothing stored;
    SQLAlchemy discards a connection cut mid-transaction, which loses an in-memory database;
    asyncmy's is left unusable. ``tests/test_cancellation.py::
    test_a_loop_ending_mid_statement_leaves_the_store_whole`` fails with a plain shielded task.
    It ends on its own, within the store's timeouts."""

    def cancel(self, msg: Any = None) -> bool:
        return False


async def to_the_end(work: Coroutine[Any, Any, T]) -> T:
    """Await ``work`` to its end even if the caller is cancelled meanwhile, then raise that
    cancellation (an error of ``work`` the caller no longer waits for is dropped)."""
    task: asyncio.Task[Callable[[], T]] = _ToTheEnd(_caught(work))
    try:
        outcome = await asyncio.shield(task)
    except asyncio.CancelledError:
        while not task.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([task])
        raise
    return outcome()


async def _caught(work: Coroutine[Any, Any, T]) -> Callable[[], T]:
    """``work``'s outcome, which returns its result or raises its error: a task that ends in
    an error is reported by ``asyncio.run`` as "unhandled" when the loop ends, though the
    caller it was for is gone."""
    try:
        result = await work
    except Exception as error:
        raised = error

        def failed() -> T:
            raise raised

        return failed
    return lambda: result


class _Waiter:
    """A queued call: its item, the future its caller awaits, its deadline in the queue, and,
    once a batch has taken it, that batch's end."""

    __slots__ = ("batch", "deadline", "future", "item")

    def __init__(self, item: Any, future: asyncio.Future[Any], deadline: float) -> None:
        self.item = item
        self.future = future
        self.deadline = deadline
        self.batch: asyncio.Future[None] | None = None


class GroupCommit:
    """Concurrent single-key calls gathered into batches, each run as one statement.

    A call waits in a queue; up to ``slots`` batches run at once, each taking every call
    queued when it holds ``gate`` (the one writer's lock, where there is one). A call cancelled
    while queued is dropped untouched; one cancelled while its batch runs waits for the batch
    to end first. A call still queued after ``timeout`` leaves the queue untouched and raises
    what ``expired`` makes of its item: one timer, on the oldest call, serves the whole queue.
    With ``shield``, a batch runs to its end even if the event loop shuts down; without, the
    calls of a batch cut off, and those left queued with no batch task to serve them, are
    cancelled rather than left waiting for ever.
    """

    __slots__ = (
        "_expired",
        "_gate",
        "_idle",
        "_queue",
        "_run",
        "_running",
        "_shield",
        "_slots",
        "_tasks",
        "_timeout",
        "_timer",
    )

    def __init__(
        self,
        run: Callable[[list[Any], float], Coroutine[Any, Any, Sequence[Any]]],
        slots: int,
        gate: asyncio.Lock | None,
        *,
        shield: bool,
        timeout: float,
        expired: Callable[[Any], BaseException],
    ) -> None:
        self._run = run
        self._slots = slots
        self._gate = gate
        self._shield = shield
        self._timeout = timeout
        self._expired = expired
        self._queue: collections.deque[_Waiter] = collections.deque()
        self._running = 0
        self._idle = False
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, item: Any) -> Any:
        """Queue ``item`` and return its result."""
        loop = asyncio.get_running_loop()
        waiter = _Waiter(item, loop.create_future(), loop.time() + self._timeout)
        self._queue.append(waiter)
        if self._timer is None:
            self._timer = loop.call_at(waiter.deadline, self._expire, loop)
        if self._running < self._slots and not self._idle:
            # One batch task at a time waits to take the queue: it takes every call queued.
            self._running += 1
            self._idle = True
            drain = self._drain()
            task = _ToTheEnd(drain, loop=loop) if self._shield else loop.create_task(drain)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            return await waiter.future
        except asyncio.CancelledError:
            if waiter.batch is None:
                with contextlib.suppress(ValueError):
                    self._queue.remove(waiter)
                if waiter.future.done():
                    retrieve(waiter.future)
                raise
            # Its batch is running: the cancellation is honoured once the batch has ended, so
            # that the call's write has landed or never will.
            while not waiter.batch.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(waiter.batch)
            retrieve(waiter.future)
            raise
        except GeneratorExit:  # the coroutine closed: it may not wait, but it leaves the queue
            if waiter.batch is None:
                with contextlib.suppress(ValueError):
                    self._queue.remove(waiter)
            else:
                waiter.future.add_done_callback(retrieve)
            raise

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        """Fail the queued calls whose deadline has passed; wait for the next one's."""
        self._timer = None
        now = loop.time()
        while self._queue and self._queue[0].deadline <= now:
            waiter = self._queue.popleft()
            if not waiter.future.done():
                waiter.future.set_exception(self._expired(waiter.item))
        if self._queue:
            self._timer = loop.call_at(self._queue[0].deadline, self._expire, loop)

    def _take(self) -> list[_Waiter]:
        self._idle = False
        batch: list[_Waiter] = []
        while self._queue and len(batch) < BATCH_ROWS:
            waiter = self._queue.popleft()
            if not waiter.future.done():
                batch.append(waiter)
        return batch

    async def _drain(self) -> None:
        _IN_BATCH.set(True)
        loop = asyncio.get_running_loop()
        batch: list[_Waiter] = []
        took = False
        try:
            while self._queue:
                async with self._gate or contextlib.nullcontext():
                    batch = self._take()
                    took = True
                    if not batch:
                        continue
                    end = loop.create_future()
                    for waiter in batch:
                        waiter.batch = end
                    # The batch ends by its callers' earliest deadline: a call's time in the
                    # queue counts against its one deadline.
                    deadline = min(waiter.deadline for waiter in batch)
                    try:
                        results = await self._run([waiter.item for waiter in batch], deadline)
                    except Exception as exc:
                        results = [exc] * len(batch)
                    finally:
                        end.set_result(None)
                for waiter, result in zip(batch, results, strict=True):
                    if waiter.future.done():
                        continue
                    if isinstance(result, BaseException):
                        waiter.future.set_exception(result)
                    else:
                        waiter.future.set_result(result)
                batch = []
        finally:
            self._running -= 1
            if not took:
                self._idle = False
            stranded = batch if self._running else batch + list(self._queue)
            if not self._running:
                self._queue.clear()
                self._idle = False
            for waiter in stranded:
                waiter.future.cancel()


def retrieve(future: asyncio.Future[Any]) -> None:
    """Mark the outcome of a future nobody awaits any more as seen."""
    if not future.cancelled():
        future.exception()
