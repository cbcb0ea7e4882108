"""What every operation goes through: one event loop, one writer where the database needs it,
a connection and its transaction, one deadline, one classification of errors and one retry
policy, and group commit of concurrent single-key calls. It transports statements; what a
write's result means is decided by the operation that wrote it (:mod:`._writes`)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import threading
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import event
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.pool import QueuePool

from . import _telemetry, queries
from .engine import autocommits, check_timeout
from .errors import (
    ConfigurationError,
    OutcomeUnknownError,
    StorageError,
    StoreError,
    root_cause,
    storage_error,
)
from .migrate import check_revision, upgrade_connection

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence

    from sqlalchemy.engine import ExceptionContext
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
    from sqlalchemy.sql import Executable

    from .dialects import DialectFacts

__all__ = ["BATCH_ROWS", "Attempt", "Executor", "Rejected", "Row"]

T = TypeVar("T")
Row = dict[str, Any]
"""A row to write: ``key``, ``value`` (JSON text) and ``updated_at``."""

BATCH_ROWS = 1000
"""The most saves or loads one group-commit statement carries."""

_DETACHED: ContextVar[bool] = ContextVar("_DETACHED", default=False)
"""Set in a group-commit task: no caller can cancel it, so its attempts need no shield, and it
holds the writer lock already where there is one."""

_PER_STATEMENT: ContextVar[bool] = ContextVar("_PER_STATEMENT", default=False)
"""Set while work runs ``per_statement``: a cancellation waits for the statement in flight."""

_WRITES = frozenset({"save", "save_many", "restore", "delete"})


class Failure(enum.Enum):
    """What kind of failure an error is, which decides whether it is retried."""

    LOST = "lost connection"
    """The connection broke: retried; a statement in flight may have taken effect."""
    ABORTED = "aborted"
    """The database rolled the transaction back (a deadlock, a serialisation or certification
    failure): retried; nothing of it took effect."""
    TIMEOUT = "timeout"
    OTHER = "other"


class Rejected(Exception):
    """The database rejected a statement (a constraint, a trigger; not a lost connection or a
    timeout): raised, for a caller that asked, instead of its :attr:`error`."""

    def __init__(self, error: StorageError) -> None:
        super().__init__(str(error))
        self.error = error


class Attempt:
    """What the earlier attempts of one write may have done, for the attempt that follows."""

    __slots__ = ("in_flight", "maybe_applied")

    def __init__(self) -> None:
        self.maybe_applied = False
        """An earlier attempt failed after its effect could have been committed (its answer, or
        its COMMIT's, was lost): a later one must tell its own stored row from another's."""
        self.in_flight = False
        """The current attempt has sent what could commit it (a statement outside a
        transaction, or a COMMIT)."""


class _Failed(Exception):
    """An attempt that failed, classified; its cause is the original error."""

    def __init__(self, kind: Failure, cause: BaseException, retried_for: float | None) -> None:
        super().__init__(kind, cause)
        self.kind = kind
        self.cause = cause
        self.retried_for = retried_for
        """Seconds the call went on retrying before this failure, if it retried."""


class _ToTheEnd(asyncio.Task[Any]):
    """A task that refuses to be cancelled: ``asyncio.run`` cancels every task left when its
    main coroutine returns, and one cut off mid-statement would lose an in-memory database or
    leave SQLite's write lock held by aiosqlite's thread. It ends on its own, within the
    store's timeouts."""

    def cancel(self, msg: Any = None) -> bool:
        return False


async def _to_the_end(work: Coroutine[Any, Any, T]) -> T:
    """Await ``work`` to its end even if the caller is cancelled meanwhile, then raise that
    cancellation (an error of ``work`` the caller no longer waits for is dropped)."""
    task: asyncio.Task[T] = _ToTheEnd(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        while not task.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([task])
        if not task.cancelled():
            task.exception()
        raise


class _Waiter:
    """A queued call: its item, the future its caller awaits, its deadline in the queue, and,
    once a batch has taken it, that batch's end."""

    __slots__ = ("batch", "deadline", "future", "item")

    def __init__(self, item: Any, future: asyncio.Future[Any], deadline: float) -> None:
        self.item = item
        self.future = future
        self.deadline = deadline
        self.batch: asyncio.Future[None] | None = None


class _Batcher:
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
                    _retrieve(waiter.future)
                raise
            # Its batch is running: the cancellation is honoured once the batch has ended, so
            # that the call's write has landed or never will.
            while not waiter.batch.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(waiter.batch)
            _retrieve(waiter.future)
            raise
        except GeneratorExit:  # the coroutine closed: it may not wait, but it leaves the queue
            if waiter.batch is None:
                with contextlib.suppress(ValueError):
                    self._queue.remove(waiter)
            else:
                waiter.future.add_done_callback(_retrieve)
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
        _DETACHED.set(True)
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


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark the outcome of a future nobody awaits any more as seen."""
    if not future.cancelled():
        future.exception()


class Executor:
    """Runs the store's statements on its engine.

    Every call has one deadline, the store's ``timeout``, from when it is made: its time in a
    queue, the wait for a connection or a lock, its statements and its retries all count. A lost
    connection, or a transaction the database aborted, is retried on a new connection until
    then (safe, since every write is conditional on its save time); any other failure raises
    :class:`~rustrade_store.StorageError` at once. A write that failed after its effect could
    have been committed raises :class:`~rustrade_store.OutcomeUnknownError` unless a later
    attempt settled it. A store serves one event loop at a time.
    """

    __slots__ = (
        "_autocommit",
        "_batchers",
        "_bind_lock",
        "_closed",
        "_engine",
        "_facts",
        "_loop",
        "_ready",
        "_schema_lock",
        "_select_value",
        "_select_values",
        "_timeout",
        "_where",
        "_writer_lock",
    )

    def __init__(
        self,
        engine: AsyncEngine,
        facts: DialectFacts,
        *,
        where: str,
        timeout: float,
        owns_engine: bool,
    ) -> None:
        self._engine = engine
        self._facts = facts
        self._where = where
        self._timeout = check_timeout(timeout)
        self._autocommit = owns_engine and autocommits(engine.url)
        self._closed = False
        self._ready = False
        self._bind_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._select_value = queries.value(facts)
        self._select_values = queries.values(facts)
        self._make_loop_state()
        if owns_engine:  # no one else's error handling to change
            event.listen(engine.sync_engine, "handle_error", self._on_error)

    def _on_error(self, context: ExceptionContext) -> None:
        """A server that takes no writes (a standby after a failover), or none that answers,
        counts as a disconnect: SQLAlchemy then replaces the connection and every pooled one
        opened before it, and the call is retried until its deadline."""
        error = context.original_exception
        if self._facts.is_read_only(error) or self._facts.is_unreachable(error):
            context.is_disconnect = True

    def _make_loop_state(self) -> None:
        self._writer_lock = asyncio.Lock() if self._facts.one_writer else None
        self._schema_lock = asyncio.Lock()
        self._batchers: dict[str, _Batcher] = {}

    @property
    def facts(self) -> DialectFacts:
        return self._facts

    @property
    def where(self) -> str:
        """The database URL, its password masked."""
        return self._where

    @property
    def autocommit(self) -> bool:
        """Whether a statement run outside a transaction commits on its own."""
        return self._autocommit

    # -- operations ------------------------------------------------------------------------

    async def fetch(
        self,
        action: str,
        key: str | None,
        statement: Executable,
        params: dict[str, Any] | None = None,
        *,
        retry: bool = True,
    ) -> list[Any]:
        """Run one statement on its own and return its rows (none for a statement without)."""

        async def one(connection: AsyncConnection) -> list[Any]:
            result = await connection.execute(statement, params)
            return list(result.all()) if result.returns_rows else [result.rowcount]

        return await self.run(action, key, one, retry=retry)

    async def queued(
        self,
        action: str,
        key: str,
        item: Any,
        run: Callable[[list[Any], float], Coroutine[Any, Any, Sequence[Any]]],
    ) -> Any:
        """``item``'s result from ``run``, which takes the items of concurrent calls of
        ``action`` as one batch, with the batch's deadline (group commit)."""
        self._bind_loop()
        batcher = self._batchers.get(action)
        if batcher is None:
            slots = 1
            pool = self._engine.sync_engine.pool
            if not self._facts.one_writer and isinstance(pool, QueuePool):
                slots = max(1, pool.size())

            def expired(_item: Any) -> BaseException:
                busy = TimeoutError("the store's writer stayed busy")
                return self.failure(action, key, busy)

            batcher = _Batcher(
                run,
                slots,
                self._writer_lock,
                shield=self._facts.finish_when_cancelled,
                timeout=self._timeout,
                expired=expired,
            )
            self._batchers[action] = batcher
        return await batcher.submit(item)

    async def load(self, key: str) -> str | None:
        """The stored JSON text of ``key``, batched with concurrent loads."""
        text: str | None = await self.queued("load", key, key, self._load_batch)
        return text

    async def load_keys(self, keys: list[str], deadline: float | None = None) -> dict[str, str]:
        """``{key: JSON text}`` of the stored keys among ``keys``, as one consistent snapshot."""
        step = self._facts.max_keys_per_query
        chunks = [keys] if step is None else [keys[i : i + step] for i in range(0, len(keys), step)]

        async def work(connection: AsyncConnection) -> dict[str, str]:
            found: dict[str, str] = {}
            for chunk in chunks:
                params = {"keys": self._facts.keys_param(chunk)}
                found.update((await connection.execute(self._select_values, params)).all())
            return found

        if len(chunks) == 1:
            return await self.run("load_many", None, work, deadline=deadline)
        return await self.run(
            "load_many",
            None,
            work,
            transaction=True,
            isolation=self._facts.snapshot_isolation,
            deadline=deadline,
        )

    async def run(
        self,
        action: str,
        key: str | None,
        work: Callable[[AsyncConnection], Awaitable[T]],
        *,
        transaction: bool = False,
        isolation: str | None = None,
        retry: bool = True,
        per_statement: bool = False,
        attempt: Attempt | None = None,
        deadline: float | None = None,
        rejected: bool = False,
    ) -> T:
        """Run ``work`` on a connection, as one transaction when ``transaction`` (else its
        single statement commits on its own), retrying a lost connection or an aborted
        transaction until the deadline (the store's timeout from now, or ``deadline`` by the
        loop's clock).

        A write passes its ``attempt``: its work reads there whether an earlier attempt may have
        taken effect, and a failure after one may have raises
        :class:`~rustrade_store.OutcomeUnknownError`. With ``rejected``, a statement the
        database rejected raises :class:`Rejected`.

        Where a cancelled statement must run to its end, the whole of ``work`` does, unless
        ``per_statement`` (long work that awaits more than the database): then only the
        statement in flight does, and the transaction is rolled back.
        """
        writes = attempt is not None
        attempt = attempt if attempt is not None else Attempt()
        try:
            return await self._retrying(
                work, transaction, isolation, retry, per_statement, attempt, deadline
            )
        except _Failed as failed:
            error = self.failure(action, key, failed.cause, failed.retried_for)
            if writes and attempt.maybe_applied:
                error = OutcomeUnknownError(
                    f"{error}; an attempt's answer was lost, so whether it was written is "
                    "unknown: load it to see what is stored"
                )
            elif rejected and failed.kind is Failure.OTHER:
                raise Rejected(error) from failed.cause
            raise error from failed.cause

    async def aclose(self, *, dispose: bool) -> None:
        self._bind_loop()
        self._closed = True
        if dispose:
            await self._engine.dispose()

    # -- group commit ----------------------------------------------------------------------

    async def _load_batch(self, keys: list[str], deadline: float) -> list[str | None]:
        _telemetry.group_commit(self._where, "load", len(keys))
        if len(set(keys)) == 1:

            async def one(connection: AsyncConnection) -> list[Any]:
                return list((await connection.execute(self._select_value, {"key": keys[0]})).all())

            rows = await self.run("load", keys[0], one, deadline=deadline)
            text = rows[0][0] if rows else None
            return [text] * len(keys)
        found = await self.load_keys(list(dict.fromkeys(keys)), deadline)
        return [found.get(key) for key in keys]

    # -- attempts --------------------------------------------------------------------------

    async def _retrying(
        self,
        work: Callable[[AsyncConnection], Awaitable[T]],
        transaction: bool,
        isolation: str | None,
        retry: bool,
        per_statement: bool,
        attempt: Attempt,
        deadline: float | None,
    ) -> T:
        loop = self._bind_loop()
        if self._closed:
            raise StorageError(f"{self._where}: the store is closed")
        if deadline is None:
            deadline = loop.time() + self._timeout
        pause = 0.02
        started = loop.time()
        retries = 0
        while True:
            attempt.in_flight = False
            try:
                return await self._attempt(
                    work, transaction, isolation, per_statement, deadline, attempt
                )
            except StoreError:
                raise
            except Exception as exc:
                kind = self._classify(exc)
                if attempt.in_flight and kind in (Failure.LOST, Failure.TIMEOUT):
                    attempt.maybe_applied = True
                left = deadline - loop.time()
                retried = kind is Failure.LOST or kind is Failure.ABORTED
                if not retried or not retry or left <= pause:
                    retried_for = loop.time() - started if retries else None
                    raise _Failed(kind, exc, retried_for) from exc
                retries += 1
                _telemetry.retried(self._where, kind.value)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)

    async def _attempt(
        self,
        work: Callable[[AsyncConnection], Awaitable[T]],
        transaction: bool,
        isolation: str | None,
        per_statement: bool,
        deadline: float,
        attempt: Attempt,
    ) -> T:
        if per_statement:  # long work (a restore): only each statement runs to its end
            async with self._writer_turn(deadline):
                token = _PER_STATEMENT.set(True)
                try:
                    return await self._on_connection(work, transaction, isolation, attempt)
                finally:
                    _PER_STATEMENT.reset(token)
        if not self._facts.finish_when_cancelled:
            # The driver's own timeouts bound each step; this bounds their sum by the call's
            # deadline. Cut off there, the attempt's cancellation (the server told to stop the
            # statement) is waited for a quarter of the timeout at most: over a frozen link it
            # would take a whole timeout again, and the answer is unknown anyway.
            task = asyncio.ensure_future(self._on_connection(work, transaction, isolation, attempt))
            left = deadline - asyncio.get_running_loop().time()
            try:
                await asyncio.wait([task], timeout=max(0.0, left))
            except asyncio.CancelledError:
                task.cancel()
                while not task.done():  # a cancelled call ends when its statement has
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.wait([task])
                _retrieve(task)
                raise
            if not task.done():
                task.cancel()
                await asyncio.wait([task], timeout=self._timeout / 4)
                task.add_done_callback(_retrieve)
                raise TimeoutError("the call's deadline passed")
            return task.result()
        if _DETACHED.get():  # a group-commit task, holding the writer lock where there is one
            return await self._on_connection(work, transaction, isolation, attempt)
        async with self._writer_turn(deadline):
            # Cancelled mid-transaction, SQLAlchemy discards the connection: an in-memory
            # database goes with it, an SQLite connection busy in aiosqlite's thread keeps the
            # write lock, and asyncmy's is left unusable. So the attempt runs to its end.
            return await _to_the_end(self._on_connection(work, transaction, isolation, attempt))

    @contextlib.asynccontextmanager
    async def _writer_turn(self, deadline: float) -> AsyncIterator[None]:
        """Hold the one writer's lock, where there is one: waiting for it is cancellable (an
        operation still queued touched nothing) and bounded by the call's deadline."""
        if self._writer_lock is None or _DETACHED.get():
            yield
            return
        async with asyncio.timeout_at(deadline):
            await self._writer_lock.acquire()
        try:
            yield
        finally:
            self._writer_lock.release()

    async def execute(
        self, connection: AsyncConnection, statement: Executable, params: Any = None
    ) -> list[Sequence[Any]]:
        """The rows of ``statement`` (none for one without), or ``[rowcount]`` if it returns
        none; run to its end if cancelled, in work run ``per_statement`` on a database that
        needs it."""
        if _PER_STATEMENT.get() and self._facts.finish_when_cancelled:
            result = await _to_the_end(connection.execute(statement, params))
        else:
            result = await connection.execute(statement, params)
        return list(result.all()) if result.returns_rows else [(result.rowcount,)]

    async def _on_connection(
        self,
        work: Callable[[AsyncConnection], Awaitable[T]],
        transaction: bool,
        isolation: str | None,
        attempt: Attempt,
    ) -> T:
        if not self._ready:
            await self._check_schema()
        async with self._engine.connect() as connection:
            if transaction or not self._autocommit:
                level = isolation or self._facts.transaction_isolation
                try:
                    await connection.execution_options(isolation_level=level)
                except self._engine.dialect.loaded_dbapi.Error:
                    await connection.invalidate()  # SQLAlchemy did not see it: not pooled again
                    raise
                async with connection.begin() as begun:
                    result = await work(connection)
                    attempt.in_flight = True
                    if _PER_STATEMENT.get() and self._facts.finish_when_cancelled:
                        await _to_the_end(begun.commit())
                    else:
                        await begun.commit()
                    return result
            attempt.in_flight = True
            return await work(connection)

    async def _check_schema(self) -> None:
        async with self._schema_lock, self._engine.connect() as connection:
            if self._ready:
                return
            dialect = connection.dialect
            if dialect.name == "mysql" and not getattr(dialect, "is_mariadb", False):
                raise ConfigurationError(
                    f"{self._where} is MySQL, not MariaDB: rustrade-store writes with INSERT ... "
                    "RETURNING, which MySQL lacks; use MariaDB 10.6 or later"
                )
            await connection.execution_options(isolation_level=self._facts.transaction_isolation)
            async with connection.begin():
                if self._facts.in_memory:
                    await upgrade_connection(connection)
                else:
                    await check_revision(connection, self._where)
            self._ready = True

    def _classify(self, exc: BaseException) -> Failure:
        cause = root_cause(exc)
        if isinstance(cause, TimeoutError) or self._facts.is_timeout(cause):
            return Failure.TIMEOUT
        if isinstance(exc, DBAPIError) and exc.connection_invalidated:
            return Failure.LOST
        if isinstance(exc, DBAPIError) and self._facts.is_aborted(cause):
            return Failure.ABORTED
        dialect = self._engine.dialect
        unwrapped = not isinstance(exc, SQLAlchemyError)  # e.g. from an isolation level switch
        if unwrapped and isinstance(cause, dialect.loaded_dbapi.Error):
            lost = dialect.is_disconnect(cause, None, None) or self._facts.is_unreachable(cause)
            return Failure.LOST if lost else Failure.OTHER
        if isinstance(cause, OSError) and not isinstance(exc, SQLAlchemyError):
            return Failure.LOST
        return Failure.OTHER

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return loop
        with self._bind_lock:
            old = self._loop
            if old is not None and old is not loop and old.is_running():
                raise StorageError(
                    f"{self._where}: this store is in use by another running event loop (another "
                    "thread's asyncio.run?); a store serves one event loop at a time: open one "
                    "store per event loop"
                )
            if old is not None:
                self._make_loop_state()
                if not self._facts.one_writer:
                    # Pooled connections belong to the old loop's transports: let them go
                    # without I/O on this loop, and open new ones here.
                    self._engine.sync_engine.dispose(close=False)
            self._loop = loop
        return loop

    def failure(
        self, action: str, key: str | None, exc: BaseException, retried_for: float | None = None
    ) -> StorageError:
        """The :class:`StorageError` for a failed operation, with this database's hint."""
        cause = root_cause(exc)
        return storage_error(
            action,
            key,
            self._where,
            exc,
            self._facts.failure_hint(action in _WRITES, cause),
            timed_out=self._facts.is_timeout(cause),
            retried_for=retried_for,
        )
