"""What every operation goes through: one event loop, one writer where the database needs it,
a connection and its transaction, one classification of errors and one retry policy, and group
commit of concurrent single-key saves and loads."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import functools
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
    ConflictError,
    StorageError,
    StoreError,
    root_cause,
    storage_error,
)
from .fencing import Fencing
from .migrate import check_revision, upgrade_connection

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
    from datetime import datetime

    from sqlalchemy.engine import ExceptionContext
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
    from sqlalchemy.sql import Executable

    from .dialects import DialectFacts

__all__ = ["Executor", "Row"]

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
    TIMEOUT = "timeout"
    OTHER = "other"


class _Failed(Exception):
    """An attempt that failed, classified; its cause is the original error."""

    def __init__(self, kind: Failure, cause: BaseException) -> None:
        super().__init__(kind, cause)
        self.kind = kind
        self.cause = cause


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
        run: Callable[[list[Any]], Coroutine[Any, Any, Sequence[Any]]],
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
                    try:
                        results = await self._run([waiter.item for waiter in batch])
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

    Every call has one deadline, the store's ``timeout``: a connection found lost is retried
    on a new one until then (safe, since every write is conditional on its save time); any
    other failure raises :class:`~rustrade_store.StorageError` at once. A store serves one
    event loop at a time.
    """

    __slots__ = (
        "_autocommit",
        "_bind_lock",
        "_closed",
        "_delete",
        "_engine",
        "_facts",
        "_loads",
        "_loop",
        "_ready",
        "_saves",
        "_schema_lock",
        "_select_stored",
        "_select_value",
        "_select_values",
        "_timeout",
        "_update_if_at",
        "_upsert",
        "_upsert_if_absent",
        "_where",
        "_writer_lock",
        "fencing",
    )

    def __init__(
        self,
        engine: AsyncEngine,
        facts: DialectFacts,
        *,
        where: str,
        timeout: float,
        owns_engine: bool,
        ignore_leases: bool = False,
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
        self.fencing = Fencing(facts, where, ignore_leases=ignore_leases)
        self._upsert = queries.upsert(facts)
        self._upsert_if_absent = queries.upsert_if_absent(facts)
        self._update_if_at = queries.update_if_at(facts)
        self._delete = queries.delete_older(facts)
        self._select_value = queries.value(facts)
        self._select_values = queries.values(facts)
        self._select_stored = queries.stored(facts)
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
        slots = 1
        pool = self._engine.sync_engine.pool
        if not self._facts.one_writer and isinstance(pool, QueuePool):
            slots = max(1, pool.size())
        self._writer_lock = asyncio.Lock() if self._facts.one_writer else None
        self._schema_lock = asyncio.Lock()
        options: dict[str, Any] = {
            "shield": self._facts.finish_when_cancelled,
            "timeout": self._timeout,
        }
        self._saves = _Batcher(
            self._save_batch, slots, self._writer_lock, expired=self._save_expired, **options
        )
        self._loads = _Batcher(
            self._load_batch, slots, self._writer_lock, expired=self._load_expired, **options
        )

    def _save_expired(self, row: Row) -> BaseException:
        return self.failure("save", row["key"], TimeoutError("the store's writer stayed busy"))

    def _load_expired(self, key: str) -> BaseException:
        return self.failure("load", key, TimeoutError("the store's writer stayed busy"))

    @property
    def facts(self) -> DialectFacts:
        return self._facts

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

    async def save(self, row: Row) -> None:
        """Write one row with the conditional upsert, batched with concurrent saves."""
        self.fencing.check(row["key"])
        self._bind_loop()
        await self._saves.submit(row)  # a refusal of this row is raised by the batch

    async def delete(self, key: str, before: datetime) -> bool:
        """Delete ``key`` if it was saved before ``before`` and its lease allows; return whether
        it did. Not retried: a retry after a lost answer would find nothing."""
        self.fencing.check(key)
        params = {"key": key, "before": before} | self.fencing.for_key(key)

        async def work(connection: AsyncConnection) -> StoreError | bool:
            if (await connection.execute(self._delete, params)).rowcount > 0:
                return True
            execute = functools.partial(self._execute, connection)
            found = await self.fencing.explain(execute, "delete", {key: before})
            return found.errors[key] or False

        outcome = await self.run("delete", key, work, retry=False)
        if isinstance(outcome, StoreError):
            raise outcome
        return outcome

    async def save_if(self, row: Row, expected: datetime | None) -> None:
        """Write one row only if its key is stored at ``expected`` (or, with ``None``, absent);
        else raise :class:`ConflictError` naming what is stored, and write nothing."""
        key: str = row["key"]
        sent: datetime = row["updated_at"]
        self.fencing.check(key)

        async def work(connection: AsyncConnection) -> StoreError | datetime | None:
            if expected is None:
                params = self.fencing.for_rows([row])
                result = await connection.execute(self._upsert_if_absent, params)
                applied = any(when == sent for _, when in result)
            else:
                params = {"at_key": key, "new_value": row["value"], "new_time": sent}
                params |= {"expected": expected} | self.fencing.for_key(key)
                applied = (await connection.execute(self._update_if_at, params)).rowcount == 1
            if applied:
                return sent
            execute = functools.partial(self._execute, connection)
            found = await self.fencing.explain(execute, "save", {key: sent}, guarded=True)
            return found.errors[key] or found.stored.get(key)

        stored = await self.run("save", key, work)
        if isinstance(stored, StoreError):
            raise stored
        if stored == sent:  # applied, perhaps by an attempt whose answer was lost
            return
        if expected is None:
            raise ConflictError(
                f"save {key!r} refused on {self._where}: the key exists (saved at "
                f"{stored and stored.isoformat()}); nothing was written",
                stored,
            )
        if stored is None:
            raise ConflictError(
                f"save {key!r} refused on {self._where}: the key was deleted since "
                f"{expected.isoformat()}; nothing was written",
                None,
            )
        if stored != expected:
            raise ConflictError(
                f"save {key!r} refused on {self._where}: it was saved again at "
                f"{stored.isoformat()}, after the {expected.isoformat()} this write was based "
                "on; load it again and redo the change. Nothing was written",
                stored,
            )
        raise ConflictError(
            f"save {key!r} refused on {self._where}: its time {sent.isoformat()} is not after "
            f"the stored {stored.isoformat()}; nothing was written",
            stored,
        )

    async def load(self, key: str) -> str | None:
        """The stored JSON text of ``key``, batched with concurrent loads."""
        self._bind_loop()
        text: str | None = await self._loads.submit(key)
        return text

    async def write(self, action: str, rows: list[Row]) -> None:
        """Write ``rows`` in one transaction, all or none; each applies only over an older row."""

        async def work(connection: AsyncConnection) -> None:
            await self.upsert_checked(connection, action, rows)

        await self.run(action, None, work, transaction=True)

    async def upsert_checked(
        self, connection: AsyncConnection, action: str, rows: list[Row]
    ) -> None:
        """Upsert ``rows`` on ``connection``; raise the first refusal that is an error (a lease,
        a clock skew), so that the caller's transaction writes none."""
        for row in rows:
            self.fencing.check(row["key"])
        refused = await self._upsert_rows(connection, action, rows)
        for error in refused.values():
            if error is not None:
                raise error

    async def load_keys(self, keys: list[str]) -> dict[str, str]:
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
            return await self.run("load_many", None, work)
        return await self.run(
            "load_many", None, work, transaction=True, isolation=self._facts.snapshot_isolation
        )

    async def stored_rows(
        self, connection: AsyncConnection, keys: list[str]
    ) -> dict[str, tuple[datetime, str]]:
        """The stored ``(updated_at, JSON text)`` of each of ``keys`` that is stored."""
        params = {"keys": self._facts.keys_param(keys)}
        rows = await self._execute(connection, self._select_stored, params)
        return {row[0]: (row[1], row[2]) for row in rows}

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
    ) -> T:
        """Run ``work`` on a connection, as one transaction when ``transaction`` (else its
        single statement commits on its own), retrying a lost connection until the deadline.

        Where a cancelled statement must run to its end, the whole of ``work`` does, unless
        ``per_statement`` (long work that awaits more than the database): then only the
        statement in flight does, and the transaction is rolled back.
        """
        try:
            return await self._retrying(work, transaction, isolation, retry, per_statement)
        except _Failed as failed:
            raise self.failure(action, key, failed.cause) from failed.cause

    async def aclose(self, *, dispose: bool) -> None:
        self._bind_loop()
        self._closed = True
        if dispose:
            await self._engine.dispose()

    # -- group commit ----------------------------------------------------------------------

    async def _save_batch(self, rows: list[Row]) -> list[StoreError | None]:
        _telemetry.group_commit(self._where, "save", len(rows))
        latest: dict[str, Row] = {}
        for row in rows:
            held = latest.get(row["key"])
            if held is None or held["updated_at"] < row["updated_at"]:
                latest[row["key"]] = row
        outcome = await self._save_group(sorted(latest.values(), key=lambda row: row["key"]))
        return [outcome.get(row["key"]) for row in rows]

    async def _save_group(self, rows: list[Row]) -> dict[str, StoreError | None]:
        """Write ``rows`` in one statement: each key with what its refusal means, if refused.

        If the database refuses the statement (a trigger, a constraint), each half is written
        on its own, down to the row at fault, so that the refusal reaches only its caller.
        """

        async def work(connection: AsyncConnection) -> dict[str, StoreError | None]:
            return await self._upsert_rows(connection, "save", rows)

        try:
            return await self._retrying(work, False, None, True)
        except _Failed as failed:
            if failed.kind is Failure.OTHER and len(rows) > 1:
                half = len(rows) // 2
                return await self._save_group(rows[:half]) | await self._save_group(rows[half:])
            return {row["key"]: self.failure("save", row["key"], failed.cause) for row in rows}

    async def _load_batch(self, keys: list[str]) -> list[str | None]:
        _telemetry.group_commit(self._where, "load", len(keys))
        if len(set(keys)) == 1:
            rows = await self.fetch("load", keys[0], self._select_value, {"key": keys[0]})
            text = rows[0][0] if rows else None
            return [text] * len(keys)
        found = await self.load_keys(list(dict.fromkeys(keys)))
        return [found.get(key) for key in keys]

    async def _upsert_rows(
        self, connection: AsyncConnection, action: str, rows: list[Row]
    ) -> dict[str, StoreError | None]:
        """Upsert ``rows``; return each refused one's key with what its refusal means (see
        :meth:`Fencing.explain`).

        RETURNING gives each applied row, matched by key: applied if its time is the one sent.
        """
        final: dict[str, datetime] = {}
        for part in self._parts(rows):
            params = self.fencing.for_rows(part)
            final.update(
                (row[0], row[1]) for row in await self._execute(connection, self._upsert, params)
            )
        refused = {
            row["key"]: row["updated_at"]
            for row in rows
            if final.get(row["key"]) != row["updated_at"]
        }
        if not refused:
            return {}
        execute = functools.partial(self._execute, connection)
        return (await self.fencing.explain(execute, action, refused)).errors

    def _parts(self, rows: list[Row]) -> list[list[Row]]:
        """``rows`` in statements of at most ``max_statement_bytes`` of values, one row at least.

        A value's size is bounded from above by four times its length: a quote is escaped in the
        JSON of the rows, then again by the driver, and a character takes up to four bytes.
        """
        limit = self._facts.max_statement_bytes
        if limit is None:
            return [rows]
        parts: list[list[Row]] = [[]]
        size = 0
        for row in rows:
            bound = len(row["value"]) * 4
            if parts[-1] and size + bound > limit:
                parts.append([])
                size = 0
            parts[-1].append(row)
            size += bound
        return parts

    # -- attempts --------------------------------------------------------------------------

    async def _retrying(
        self,
        work: Callable[[AsyncConnection], Awaitable[T]],
        transaction: bool,
        isolation: str | None,
        retry: bool,
        per_statement: bool = False,
    ) -> T:
        loop = self._bind_loop()
        if self._closed:
            raise StorageError(f"{self._where}: the store is closed")
        deadline = loop.time() + self._timeout
        pause = 0.02
        while True:
            try:
                return await self._attempt(work, transaction, isolation, per_statement, deadline)
            except StoreError:
                raise
            except Exception as exc:
                kind = self._classify(exc)
                left = deadline - loop.time()
                if kind is not Failure.LOST or not retry or left <= pause:
                    raise _Failed(kind, exc) from exc
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
    ) -> T:
        if per_statement:  # long work (a restore): only each statement runs to its end
            async with self._writer_turn(deadline):
                token = _PER_STATEMENT.set(True)
                try:
                    return await self._on_connection(work, transaction, isolation)
                finally:
                    _PER_STATEMENT.reset(token)
        if not self._facts.finish_when_cancelled:
            # The driver's own timeouts bound each step; this bounds their sum (a retry's new
            # connection, a statement prepared first) by the call's deadline.
            async with asyncio.timeout_at(deadline):
                return await self._on_connection(work, transaction, isolation)
        if _DETACHED.get():  # a group-commit task, holding the writer lock where there is one
            return await self._on_connection(work, transaction, isolation)
        async with self._writer_turn(deadline):
            # Cancelled mid-transaction, SQLAlchemy discards the connection: an in-memory
            # database goes with it, an SQLite connection busy in aiosqlite's thread keeps the
            # write lock, and asyncmy's is left unusable. So the attempt runs to its end.
            return await _to_the_end(self._on_connection(work, transaction, isolation))

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

    async def _execute(
        self, connection: AsyncConnection, statement: Executable, params: Any = None
    ) -> list[Sequence[Any]]:
        """The rows of ``statement``; run to its end if cancelled, in work run
        ``per_statement`` on a database that needs it."""
        if _PER_STATEMENT.get() and self._facts.finish_when_cancelled:
            result = await _to_the_end(connection.execute(statement, params))
        else:
            result = await connection.execute(statement, params)
        return list(result.all())

    async def _on_connection(
        self,
        work: Callable[[AsyncConnection], Awaitable[T]],
        transaction: bool,
        isolation: str | None,
    ) -> T:
        if not self._ready:
            await self._check_schema()
        async with self._engine.connect() as connection:
            if transaction or not self._autocommit:
                level = isolation or self._facts.transaction_isolation
                await connection.execution_options(isolation_level=level)
                async with connection.begin() as begun:
                    result = await work(connection)
                    if _PER_STATEMENT.get() and self._facts.finish_when_cancelled:
                        await _to_the_end(begun.commit())
                    return result
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

    def failure(self, action: str, key: str | None, exc: BaseException) -> StorageError:
        """The :class:`StorageError` for a failed operation, with this database's hint."""
        cause = root_cause(exc)
        return storage_error(
            action,
            key,
            self._where,
            exc,
            self._facts.failure_hint(action in _WRITES, cause),
            timed_out=self._facts.is_timeout(cause),
        )
