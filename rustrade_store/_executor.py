"""What every operation goes through: one event loop, one writer where the database needs it,
a connection and its transaction, one deadline, one classification of errors and one retry
policy, and the group-commit queue (:mod:`._queue`) for concurrent single-key calls. It
transports; what a result means is decided by the operation that sent it (:mod:`._writes`,
:mod:`._reads`)."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import threading
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import event
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.pool import QueuePool

from . import _telemetry
from ._engine import autocommits, check_timeout
from ._errors import (
    OutcomeUnknownError,
    StorageError,
    StoreError,
    root_cause,
    storage_error,
)
from ._migrate import check_revision, upgrade_connection
from ._queue import GroupCommit, in_batch, retrieve, to_the_end, writer_lock

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence

    from sqlalchemy.engine import ExceptionContext
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
    from sqlalchemy.sql import Executable

    from ._backends import Backend

__all__ = ["Attempt", "Executor", "Rejected", "Row"]

T = TypeVar("T")
Row = dict[str, Any]
"""A row to write: ``key``, ``value`` (JSON text) and ``updated_at``."""

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
        "_backend",
        "_batchers",
        "_bind_lock",
        "_closed",
        "_engine",
        "_loop",
        "_ready",
        "_schema_lock",
        "_timeout",
        "_where",
        "_writer_lock",
    )

    def __init__(
        self,
        engine: AsyncEngine,
        backend: Backend,
        *,
        where: str,
        timeout: float,
        owns_engine: bool,
    ) -> None:
        self._engine = engine
        self._backend = backend
        self._where = where
        self._timeout = check_timeout(timeout)
        self._autocommit = owns_engine and autocommits(engine.url)
        self._closed = False
        self._ready = False
        self._bind_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._make_loop_state(None)
        if owns_engine:  # no one else's error handling to change
            event.listen(engine.sync_engine, "handle_error", self._on_error)

    def _on_error(self, context: ExceptionContext) -> None:
        """A server that takes no writes (a standby after a failover), or none that answers,
        counts as a disconnect: SQLAlchemy then replaces the connection and every pooled one
        opened before it, and the call is retried until its deadline."""
        error = context.original_exception
        if self._backend.is_read_only(error) or self._backend.is_unreachable(error):
            context.is_disconnect = True

    def _make_loop_state(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self._writer_lock = writer_lock(self._engine, loop) if self._backend.one_writer else None
        self._schema_lock = asyncio.Lock()
        self._batchers: dict[str, GroupCommit] = {}

    @property
    def backend(self) -> Backend:
        return self._backend

    @property
    def where(self) -> str:
        """The database URL, its password masked."""
        return self._where

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
            if not self._backend.one_writer and isinstance(pool, QueuePool):
                slots = max(1, pool.size())

            def expired(_item: Any) -> BaseException:
                busy = TimeoutError("the store's writer stayed busy")
                return self.failure(action, key, busy)

            batcher = GroupCommit(
                run,
                slots,
                self._writer_lock,
                shield=self._backend.finish_when_cancelled,
                timeout=self._timeout,
                expired=expired,
            )
            self._batchers[action] = batcher
        return await batcher.submit(item)

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
        if not self._backend.finish_when_cancelled:
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
                retrieve(task)
                raise
            if not task.done():
                task.cancel()
                await asyncio.wait([task], timeout=self._timeout / 4)
                task.add_done_callback(retrieve)
                raise TimeoutError("the call's deadline passed")
            return task.result()
        if in_batch():  # a group-commit task, holding the writer lock where there is one
            return await self._on_connection(work, transaction, isolation, attempt)
        async with self._writer_turn(deadline):
            # Cancelled mid-transaction, SQLAlchemy discards the connection: an in-memory
            # database goes with it, an SQLite connection busy in aiosqlite's thread keeps the
            # write lock, and asyncmy's is left unusable. So the attempt runs to its end.
            return await to_the_end(self._on_connection(work, transaction, isolation, attempt))

    @contextlib.asynccontextmanager
    async def _writer_turn(self, deadline: float) -> AsyncIterator[None]:
        """Hold the one writer's lock, where there is one: waiting for it is cancellable (an
        operation still queued touched nothing) and bounded by the call's deadline."""
        if self._writer_lock is None or in_batch():
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
        if _PER_STATEMENT.get() and self._backend.finish_when_cancelled:
            result = await to_the_end(connection.execute(statement, params))
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
        async with self._connect() as connection:
            if transaction or not self._autocommit:
                level = isolation or self._backend.transaction_isolation
                try:
                    await connection.execution_options(isolation_level=level)
                except self._engine.dialect.loaded_dbapi.Error:
                    await connection.invalidate()  # SQLAlchemy did not see it: not pooled again
                    raise
                async with connection.begin() as begun:
                    result = await work(connection)
                    attempt.in_flight = True
                    if _PER_STATEMENT.get() and self._backend.finish_when_cancelled:
                        await to_the_end(begun.commit())
                    else:
                        await begun.commit()
                    return result
            attempt.in_flight = True
            return await work(connection)

    @contextlib.asynccontextmanager
    async def _connect(self) -> AsyncIterator[AsyncConnection]:
        """A connection, closed when done. An attempt that runs to its end, in a task no one can
        cancel, closes it in that task: SQLAlchemy's own context manager closes in a task of its
        own, which ``asyncio.run``'s sweep at the end of a loop cut mid-rollback, and an
        in-memory database went with the connection."""
        if not self._backend.finish_when_cancelled or _PER_STATEMENT.get():
            async with self._engine.connect() as connection:
                yield connection
            return
        connection = await self._engine.connect()
        try:
            yield connection
        finally:
            await connection.close()

    async def _check_schema(self) -> None:
        async with self._schema_lock, self._connect() as connection:
            if self._ready:
                return
            self._backend.check_server(connection.dialect, self._where)
            await connection.execution_options(isolation_level=self._backend.transaction_isolation)
            async with connection.begin():
                if self._backend.in_memory:
                    await upgrade_connection(connection)
                else:
                    await check_revision(connection, self._where)
            self._ready = True

    def _classify(self, exc: BaseException) -> Failure:
        cause = root_cause(exc)
        if isinstance(cause, TimeoutError) or self._backend.is_timeout(cause):
            return Failure.TIMEOUT
        if isinstance(exc, DBAPIError) and exc.connection_invalidated:
            return Failure.LOST
        if isinstance(exc, DBAPIError) and self._backend.is_aborted(cause):
            return Failure.ABORTED
        dialect = self._engine.dialect
        unwrapped = not isinstance(exc, SQLAlchemyError)  # e.g. from an isolation level switch
        if unwrapped and isinstance(cause, dialect.loaded_dbapi.Error):
            lost = dialect.is_disconnect(cause, None, None) or self._backend.is_unreachable(cause)
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
            self._make_loop_state(loop)
            if old is not None and self._backend.loop_bound_connections:
                # Pooled connections belong to the old loop's transports: let them go without
                # I/O on this loop, and open new ones here.
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
            self._backend.failure_hint(action in _WRITES, cause),
            timed_out=self._backend.is_timeout(cause),
            retried_for=retried_for,
        )
