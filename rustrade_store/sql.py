"""The one SQL implementation of the contract, over SQLAlchemy's async engine (Core only)."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Self, TypeVar, cast

from sqlalchemy import bindparam, delete, func, select
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.pool import QueuePool, StaticPool
from sqlalchemy.util import greenlet_spawn

from .codec import JSONValue, check_key, check_keys, decode, encode, encode_entry
from .dialects import SQLITE_SYNCHRONOUS, DriverCalls, facts_for, store_engine_options
from .engine import DEFAULT_TIMEOUT, create_engine, masked, resolve_url
from .errors import (
    InvalidValueError,
    StorageError,
    StoreError,
    ValueTypeError,
    describe,
    root_cause,
)
from .migrate import check_revision, upgrade_connection
from .schema import snapshots
from .store import Snapshot, StateStore

if TYPE_CHECKING:
    from collections.abc import (
        AsyncIterable,
        AsyncIterator,
        Awaitable,
        Callable,
        Iterable,
        Mapping,
        Sequence,
    )

    from sqlalchemy import URL, ColumnElement, Select
    from sqlalchemy.engine import Dialect
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
    from sqlalchemy.sql import ClauseElement
    from sqlalchemy.sql.compiler import SQLCompiler

__all__ = ["SqlStore"]

T = TypeVar("T")

_WRITES = frozenset({"save", "save_many", "restore"})

PAGE_SIZE = 1000
"""Rows fetched per query when listing: listing streams, whatever the table's size."""


def _utc(key: str, when: object) -> datetime:
    """``when`` if it is a time-zone-aware datetime, else the error naming the key."""
    if type(when) is not datetime:
        raise ValueTypeError(f"key {key!r}: updated_at is a {type(when).__name__}, not a datetime")
    if when.tzinfo is None or when.utcoffset() is None:
        raise InvalidValueError(f"key {key!r}: updated_at {when.isoformat()} has no time zone")
    return when


async def _to_the_end(work: Awaitable[T]) -> T:
    """Await ``work`` to its end even if the caller is cancelled meanwhile, then raise that
    cancellation (an error of ``work`` the caller no longer waits for is dropped)."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        while not task.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([task])
        if not task.cancelled():
            task.exception()
        raise


class _LostConnection(Exception):
    """The driver's connection died under a direct call (the driver's error is the cause)."""


class _Compiled:
    """A statement compiled once for a dialect: its SQL text, and how to bind its parameters
    in order the way SQLAlchemy would (the same type conversions), for a direct driver call."""

    __slots__ = ("_binds", "sql")

    def __init__(self, statement: ClauseElement, dialect: Dialect) -> None:
        compiled = cast("SQLCompiler", statement.compile(dialect=dialect))
        self.sql = compiled.string
        self._binds = [
            (name, compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect))
            for name in compiled.positiontup or ()
        ]

    def params(self, values: Mapping[str, Any]) -> list[Any]:
        return [
            values[name] if process is None else process(values[name])
            for name, process in self._binds
        ]


def _prefix_end(prefix: str) -> str | None:
    """The least string above every string that starts with ``prefix`` (code point order)."""
    chars = list(prefix)
    while chars:
        point = ord(chars.pop()) + 1
        if point == 0xD800:
            point = 0xE000
        if point <= 0x10FFFF:
            return "".join(chars) + chr(point)
    return None


class SqlStore(StateStore):
    """A :class:`StateStore` over one table of any supported database.

    Build it from a URL with :meth:`from_url` (the store then owns and closes its engine) or
    hand it an :class:`~sqlalchemy.ext.asyncio.AsyncEngine` you own. The schema comes from the
    package's Alembic migrations; the store checks the revision at first use and raises
    :class:`~rustrade_store.SchemaError` when it does not match. An in-memory SQLite database,
    which nothing else could migrate, is migrated by the store itself.
    """

    __slots__ = (
        "_autocommit",
        "_calls",
        "_closed",
        "_compiled",
        "_count",
        "_delete",
        "_driver_error",
        "_engine",
        "_facts",
        "_lock",
        "_made_engine",
        "_owns_engine",
        "_ready",
        "_select_many",
        "_select_one",
        "_select_value",
        "_upsert",
        "_where",
    )

    def __init__(self, engine: AsyncEngine, *, owns_engine: bool = False) -> None:
        self._engine = engine
        self._owns_engine = owns_engine
        # Set by from_url and InMemoryStore, whose engines carry the store's settings only:
        # nothing on them (options, events) that a direct driver call would skip.
        self._made_engine = False
        self._facts = facts_for(engine.url)
        self._where = masked(engine.url)
        self._lock = asyncio.Lock() if self._facts.one_writer else None
        self._driver_error: type[Exception] = engine.dialect.loaded_dbapi.Error
        self._ready = False
        self._autocommit = False
        self._calls: DriverCalls | None = None
        self._compiled: dict[ClauseElement, _Compiled] = {}
        self._closed = False
        table = snapshots
        value = self._facts.json_text(table.c.value)
        by_key = table.c.key == bindparam("key")
        self._select_value = select(value).where(by_key)
        self._select_one = select(value, table.c.updated_at).where(by_key)
        self._select_many = select(table.c.key, value).where(self._facts.key_in(table.c.key))
        self._upsert = self._facts.upsert(table)
        self._delete = delete(table).where(by_key)
        self._count = select(func.count()).select_from(table)

    @classmethod
    def from_url(
        cls,
        url: str | URL | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        sqlite_synchronous: str = SQLITE_SYNCHRONOUS,
        **engine_options: Any,
    ) -> Self:
        """Open a store on ``url``; without one, ``RUSTRADE_STORE_URL``, else ``rustrade_state.db``.

        ``timeout`` bounds, in seconds, the wait for a connection, a lock or a statement.
        ``sqlite_synchronous="NORMAL"`` trades durability across power loss for speed (see the
        README's Guarantees). ``engine_options`` go to SQLAlchemy's ``create_async_engine`` and
        override the store's own settings.
        """
        resolved = resolve_url(url)
        engine = create_engine(
            resolved,
            timeout=timeout,
            sqlite_synchronous=sqlite_synchronous,
            **(store_engine_options(resolved) | engine_options),
        )
        store = cls(engine, owns_engine=True)
        store._made_engine = True
        return store

    @property
    def engine(self) -> AsyncEngine:
        """The engine the store runs on."""
        return self._engine

    @property
    def url(self) -> str:
        """The database URL with its password masked."""
        return self._where

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._where!r})"

    # -- the contract ----------------------------------------------------------------------

    async def load(self, key: str) -> JSONValue:
        check_key(key)
        params = {"key": key}

        async def work(connection: AsyncConnection) -> Any:
            return (await connection.execute(self._select_value, params)).scalar()

        async def direct(driver: Any) -> Any:
            rows = await self._fetch(driver, self._select_value, params)
            return rows[0][0] if rows else None

        text = await self._run("load", key, work, direct=direct)
        return None if text is None else decode(text, key)

    async def save(self, key: str, value: JSONValue) -> None:
        check_key(key)
        row = {"key": key, "value": encode(value), "updated_at": datetime.now(UTC)}

        async def work(connection: AsyncConnection) -> None:
            await connection.execute(self._upsert, row)

        async def direct(driver: Any) -> None:
            await self._fetch(driver, self._upsert, row)

        await self._run("save", key, work, direct=direct)

    async def load_many(self, keys: Iterable[str]) -> dict[str, JSONValue]:
        """Return ``{key: value}`` for every key asked, ``None`` where missing: one query, or
        one per ``max_keys_per_query`` keys of the database (10,000 on MySQL and MariaDB,
        32,766 on SQLite, 100,000 on PostgreSQL)."""
        wanted = check_keys(keys)
        step = self._facts.max_keys_per_query

        async def work(connection: AsyncConnection) -> dict[str, Any]:
            found: dict[str, Any] = {}
            for start in range(0, len(wanted), step):
                chunk = wanted[start : start + step]
                rows = await connection.execute(self._select_many, {"keys": chunk})
                found.update(rows.all())
            return found

        found = await self._run("load_many", None, work) if wanted else {}
        return {key: None if key not in found else decode(found[key], key) for key in wanted}

    async def save_many(self, values: Mapping[str, JSONValue]) -> None:
        """Save every item in one transaction: all of them, or none if any is refused."""
        now = datetime.now(UTC)
        await self._write("save_many", [(key, value, now) for key, value in values.items()])

    async def restore(self, items: Iterable[Snapshot]) -> None:
        """Write snapshots as given, timestamps included, in one transaction (import, copy)."""
        await self._write("restore", [(item.key, item.value, item.updated_at) for item in items])

    async def restore_stream(self, batches: AsyncIterable[Iterable[Snapshot]]) -> int:
        """Write every batch of snapshots, timestamps kept, in ONE transaction; return the count.

        For more snapshots than memory holds (import, copy): batches are written as they come
        and nothing is committed until the last one is in, so an error anywhere, a bad
        snapshot or one raised by ``batches`` itself, leaves the database as it was. Unlike
        every other operation this is not retried on a lost connection, since the batches
        cannot be replayed; the error is raised and nothing is written. A key repeated within
        the stream ends with its last snapshot. ``batches`` must not use this same store while
        it runs (on SQLite the store does one operation at a time, so that would wait forever).
        """

        async def work(connection: AsyncConnection) -> int:
            written = 0
            async for batch in batches:
                latest = {item.key: item for item in batch}  # one upsert may touch a row once
                rows = self._rows([(i.key, i.value, i.updated_at) for i in latest.values()])
                if rows:
                    await connection.execute(self._upsert, rows)
                    written += len(rows)
            return written

        return await self._run("restore", None, work, atomic=True, retry=False)

    # -- beyond the contract ---------------------------------------------------------------

    async def load_snapshot(self, key: str) -> Snapshot | None:
        """Return the stored :class:`Snapshot`, or ``None`` if the key is missing.

        This is how a caller tells a stored JSON ``null`` (a snapshot whose value is ``None``)
        from a missing key (``None``).
        """
        check_key(key)

        async def work(connection: AsyncConnection) -> Any:
            return (await connection.execute(self._select_one, {"key": key})).first()

        row = await self._run("load", key, work)
        return None if row is None else Snapshot(key, decode(row[0], key), row[1])

    async def delete(self, key: str) -> bool:
        """Remove ``key``; return whether it was there.

        Not retried on a lost connection: a retry after a delete whose answer was lost would
        find nothing and report ``False``; the caller gets a :class:`StorageError` instead.
        """
        check_key(key)

        async def work(connection: AsyncConnection) -> int:
            return (await connection.execute(self._delete, {"key": key})).rowcount

        return await self._run("delete", key, work, retry=False) > 0

    async def keys(self, prefix: str = "") -> AsyncIterator[str]:
        """Yield every key that starts with ``prefix``, in code point order, a page at a time."""
        async for row in self._scan(prefix, values=False):
            yield row[0]

    async def snapshots(self, prefix: str = "") -> AsyncIterator[Snapshot]:
        """Yield every snapshot whose key starts with ``prefix``, in key order, a page at a time."""
        async for key, text, updated_at in self._scan(prefix, values=True):
            yield Snapshot(key, decode(text, key), updated_at)

    async def count(self, prefix: str = "") -> int:
        """How many keys start with ``prefix`` (all keys by default)."""
        stmt = self._count.where(*self._prefix_filter(prefix))

        async def work(connection: AsyncConnection) -> int:
            return (await connection.execute(stmt)).scalar_one()

        return await self._run("count", prefix or None, work)

    async def is_empty(self) -> bool:
        """True when no key is stored."""
        return await self.count() == 0

    async def aclose(self) -> None:
        """Close the store; an engine it was handed stays open for its owner."""
        self._closed = True
        if self._owns_engine:
            await self._engine.dispose()

    # -- internals -------------------------------------------------------------------------

    @staticmethod
    def _rows(items: Iterable[tuple[str, JSONValue, datetime]]) -> list[dict[str, Any]]:
        """Validate every item and return the rows to upsert, in key order; raise before any
        is written.

        In key order (a stable sort: the last of a repeated key still wins), concurrent batches
        over the same keys take their row locks in one order and never deadlock.
        """
        entries = [(key, encode_entry(key, value), _utc(key, when)) for key, value, when in items]
        entries.sort(key=lambda entry: entry[0])
        return [{"key": key, "value": text, "updated_at": when} for key, text, when in entries]

    async def _write(self, action: str, items: list[tuple[str, JSONValue, datetime]]) -> None:
        rows = self._rows(items)
        if not rows:
            return

        async def work(connection: AsyncConnection) -> None:
            await connection.execute(self._upsert, rows)

        await self._run(action, None, work, atomic=True)

    def _prefix_filter(self, prefix: str) -> list[Any]:
        if prefix == "":
            return []
        check_key(prefix)
        key = snapshots.c.key
        end = _prefix_end(prefix)
        return [key >= prefix] if end is None else [key >= prefix, key < end]

    async def _scan(self, prefix: str, *, values: bool) -> AsyncIterator[Any]:
        table = snapshots
        columns: list[ColumnElement[Any]] = [table.c.key]
        if values:
            columns += [self._facts.json_text(table.c.value), table.c.updated_at]
        page: Select[Any] = (
            select(*columns)
            .where(*self._prefix_filter(prefix), table.c.key > bindparam("after"))
            .order_by(table.c.key)
            .limit(PAGE_SIZE)
        )

        async def page_after(after: str) -> list[Any]:
            async def work(connection: AsyncConnection) -> list[Any]:
                return list((await connection.execute(page, {"after": after})).all())

            return await self._run("list", prefix or None, work)

        after = ""
        while True:
            rows = await page_after(after)
            for row in rows:
                if row[0].startswith(prefix):  # guards against a collation that is not code point
                    yield row
            if len(rows) < PAGE_SIZE:
                return
            after = rows[-1][0]

    async def _run(
        self,
        action: str,
        key: str | None,
        work: Callable[[AsyncConnection], Awaitable[T]],
        *,
        atomic: bool = False,
        retry: bool = True,
        direct: Callable[[Any], Awaitable[T]] | None = None,
    ) -> T:
        """Run ``work`` in one transaction, one operation at a time where the database needs it.

        ``work`` that runs a single statement (not ``atomic``) runs in autocommit when the
        connection is in it (engines from :meth:`from_url`): the statement is its own
        transaction, committed when it returns. Then, where the driver has a direct path,
        ``direct`` runs instead of ``work``, on the driver's own connection (the same statement,
        compiled once by SQLAlchemy). Every operation is an idempotent read or upsert,
        so a connection found dead is retried once on a fresh one (unless ``retry`` is false:
        work that consumes a stream cannot be replayed); any other failure becomes a
        :class:`StorageError`.
        """
        if self._closed:
            raise StorageError(f"{action} on {self._where}: the store is closed")
        # Waiting for the lock is cancellable: an operation still queued has touched nothing.
        async with self._lock or contextlib.nullcontext():
            attempt = self._attempt(action, key, work, atomic=atomic, retry=retry, direct=direct)
            if not self._facts.finish_when_cancelled:
                return await attempt
            # Cancelled mid-transaction, SQLAlchemy discards the connection: an in-memory
            # database goes with it, and an SQLite connection still busy in aiosqlite's thread
            # keeps the write lock. So the operation runs to its end (bounded by the busy
            # timeout), then the cancellation is honoured.
            return await _to_the_end(attempt)

    async def _attempt(
        self,
        action: str,
        key: str | None,
        work: Callable[[AsyncConnection], Awaitable[T]],
        *,
        atomic: bool,
        retry: bool,
        direct: Callable[[Any], Awaitable[T]] | None,
    ) -> T:
        retried = not retry  # a spent retry: nothing is tried twice
        while True:
            try:
                if direct is not None and self._calls is not None and not atomic:
                    return await self._direct(action, key, direct)
                async with self._engine.connect() as connection:
                    try:
                        if self._autocommit and self._ready and not atomic:
                            return await work(connection)
                        return await self._in_transaction(connection, work)
                    except self._driver_error:
                        # Raised past SQLAlchemy (setting the isolation level of a dead
                        # connection): the connection's state is unknown, so drop it.
                        await connection.invalidate()
                        raise
            except DBAPIError as exc:
                if exc.connection_invalidated and not retried:
                    retried = True
                    continue
                raise self._failure(action, key, exc) from exc
            except _LostConnection as lost:
                if not retried:
                    retried = True
                    continue
                cause = lost.__cause__ or lost
                raise self._failure(action, key, cause) from cause
            except StoreError:
                raise
            except self._driver_error as exc:
                dead = self._engine.dialect.is_disconnect(exc, None, None)  # type: ignore[arg-type]
                if not retried and dead:
                    retried = True
                    continue
                raise self._failure(action, key, exc) from exc
            except (SQLAlchemyError, OSError, TimeoutError) as exc:
                raise self._failure(action, key, exc) from exc

    async def _direct(
        self, action: str, key: str | None, direct: Callable[[Any], Awaitable[T]]
    ) -> T:
        """Run ``direct`` on a driver connection from the engine's pool: the driver's own errors
        become :class:`StorageError`, or :class:`_LostConnection` when the connection died.

        Cut short (cancelled, timed out, the task exiting), the call may still be running on
        the server, so the connection is discarded, as SQLAlchemy does: closing it sends the
        driver's cancel request to the server and waits (up to SQLAlchemy's graceful-close
        limit) for it to get there.
        """
        assert self._calls is not None
        pool = self._engine.sync_engine.pool
        pooled = await self._engine.raw_connection()
        closing = False
        try:
            driver = pooled.driver_connection
            try:
                return await direct(driver)
            except GeneratorExit:
                # The coroutine is being closed and may not await: the connection, perhaps
                # still busy, goes back marked for replacement at its next checkout.
                closing = True
                if not self._facts.in_memory:
                    pooled.invalidate(soft=True)
                pooled.close()
                raise
            except BaseException as exc:
                dead = self._calls.lost(driver)
                cut_short = isinstance(exc, TimeoutError) or not isinstance(exc, Exception)
                if dead:
                    # As SQLAlchemy does on a disconnect it sees: every connection the pool
                    # opened before this one is presumed dead too and replaced at its next
                    # checkout, so the one retry gets a live connection even after a restart.
                    await _to_the_end(greenlet_spawn(pool._invalidate, pooled, exc))
                elif cut_short and not self._facts.in_memory:  # that database is its connection
                    await _to_the_end(greenlet_spawn(pooled.invalidate, exc))
                if not isinstance(exc, Exception):
                    raise  # a cancellation stays one, even when the connection died with it
                if dead:
                    raise _LostConnection from exc
                raise self._failure(action, key, exc) from exc
        finally:
            # Back to the pool (an invalidated connection is back already). With a free place
            # in the pool that is no I/O: the connection autocommits, so there is no rollback on
            # return, and an engine the store built has no checkin listener. A connection the
            # pool has no room for is closed, I/O that no cancellation may cut short.
            if pooled.is_valid and not closing:
                room = isinstance(pool, StaticPool) or (
                    isinstance(pool, QueuePool) and pool.checkedin() < pool.size()
                )
                if room:
                    pooled.close()
                else:
                    await _to_the_end(greenlet_spawn(pooled.close))

    def _fetch(
        self, driver: Any, statement: ClauseElement, values: Mapping[str, Any]
    ) -> Awaitable[Sequence[Sequence[Any]]]:
        """The driver's call running ``statement`` with ``values``, to await."""
        assert self._calls is not None
        compiled = self._compiled[statement]
        return self._calls.fetch(driver, compiled.sql, compiled.params(values))

    async def _in_transaction(
        self, connection: AsyncConnection, work: Callable[[AsyncConnection], Awaitable[T]]
    ) -> T:
        if not self._ready:
            raw = await connection.get_raw_connection()
            dbapi_connection = raw.dbapi_connection
            self._autocommit = dbapi_connection is not None and bool(
                connection.dialect.detect_autocommit_setting(dbapi_connection)
            )
        if self._autocommit:  # the pool resets the level when the connection comes back
            await connection.execution_options(isolation_level=self._facts.transaction_isolation)
        async with connection.begin():
            if not self._ready:
                await self._prepare(connection)
            return await work(connection)

    async def _prepare(self, connection: AsyncConnection) -> None:
        if self._facts.in_memory:
            await upgrade_connection(connection)
        else:
            await check_revision(connection, self._where)
        if (
            self._facts.driver_calls is not None
            and self._made_engine
            and not self._engine.get_execution_options()
            and self._autocommit
            and connection.dialect.skip_autocommit_rollback
        ):
            for statement in (self._select_value, self._upsert):
                self._compiled[statement] = _Compiled(statement, connection.dialect)
            self._calls = self._facts.driver_calls
        self._ready = True

    def _failure(self, action: str, key: str | None, exc: BaseException) -> StorageError:
        cause = root_cause(exc)
        if isinstance(cause, TimeoutError):
            detail = "timed out waiting for the database (TimeoutError)"
        else:
            detail = describe(cause)
        detail += self._facts.failure_hint(action in _WRITES, cause)
        subject = action if key is None else f"{action} {key!r}"
        return StorageError(f"{subject} failed on {self._where}: {detail}")
