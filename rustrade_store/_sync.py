"""The store for synchronous bots: every method of :class:`SqlStore` as a plain call, run on one
event loop in a daemon thread the sync store owns (see :mod:`rustrade_store._portal`)."""

from __future__ import annotations

import atexit
import logging
import os
import threading
from typing import TYPE_CHECKING, Any, Self, TypeVar

from sqlalchemy.pool import QueuePool

from ._backends import backend_for
from ._buffered import DEFAULT_DELAY, DEFAULT_MAX_PENDING, BufferedStore
from ._engine import (
    DEFAULT_TIMEOUT,
    SQLITE_SYNCHRONOUS,
    check_timeout,
    create_engine,
    create_store_engine,
    resolve_url,
    store_engine_options,
)
from ._errors import ConfigurationError, LeaseLostError
from ._lease import DEFAULT_TTL
from ._portal import Portal
from ._sql import SqlStore
from ._sync_lease import SyncLease

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator, Mapping
    from datetime import datetime
    from types import TracebackType

    from sqlalchemy import URL
    from sqlalchemy.ext.asyncio import AsyncEngine

    from ._lease import LeaseInfo
    from ._restore import RestoreReport
    from ._store import Snapshot, StateStore
    from .codec import JSONInput, JSONValue

__all__ = ["SyncBufferedStore", "SyncStore"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

GRACE = 1.0
"""Seconds a sync call waits beyond its store's own deadline, so that the store's error, not
the wait's, reaches the caller."""

_OPEN: set[SyncStore] = set()
"""Every sync store not closed yet, even one its owner dropped (its loop thread runs on): each
is closed at interpreter exit, and drops its pooled connections in a forked child."""


class _Calls:
    """What a sync store and its leases share: the portal, how long a call may wait, and the
    ``on_lost`` callbacks running."""

    __slots__ = ("_bound", "_callbacks", "_portal")

    def __init__(self, portal: Portal, bound: float, callbacks: set[threading.Thread]) -> None:
        self._portal = portal
        self._bound = bound
        self._callbacks = callbacks

    def _call(self, coroutine: Coroutine[Any, Any, T], extra: float | None = 0.0) -> T:
        """Run ``coroutine`` on the portal; ``extra`` seconds of its own (a lease's ``wait``),
        or ``None`` for a call with no deadline of the store's (a restore). A call refused by
        a lost lease returns once that lease's ``on_lost`` has run, as on the async store."""
        try:
            return self._portal.call(coroutine, None if extra is None else self._bound + extra)
        except LeaseLostError:
            for thread in list(self._callbacks):
                if thread is not threading.current_thread():
                    thread.join(self._bound)
            raise

    def _in_own_thread(
        self, on_lost: Callable[[LeaseLostError], object], prefix: str
    ) -> Callable[[LeaseLostError], None]:
        """``on_lost`` run in a new daemon thread: the loop goes on, and the callback may call
        the store."""

        def run(error: LeaseLostError) -> None:
            try:
                on_lost(error)
            except Exception:
                logger.exception("on_lost callback of the lease on %r failed", prefix)
            finally:
                self._callbacks.discard(threading.current_thread())

        def start(error: LeaseLostError) -> None:
            name = f"rustrade-store on_lost {prefix}"
            thread = threading.Thread(target=run, args=(error,), name=name, daemon=True)
            self._callbacks.add(thread)
            thread.start()

        return start

    def close(self) -> None:
        """Close the store: each sync store says what that means for it."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class SyncStore(_Calls):
    """:class:`~rustrade_store.SqlStore` for synchronous code: the same methods, arguments,
    results and errors, each a plain call.

    The async store runs on an event loop in a daemon thread this store starts and owns; any
    number of threads may call at once. ``with SyncStore.from_url(...) as store:`` closes it,
    as does :meth:`close`, or the interpreter's exit for a store left open. Each call waits a
    little past the store's ``timeout`` (twice it, plus a second), then cancels the call on the
    loop and raises :class:`~rustrade_store.StorageError`; Ctrl-C cancels it there too. A call
    from the loop's own thread, or in a child forked after the store opened, is refused.
    """

    __slots__ = ("_close_lock", "_store")

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        owns_engine: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
        ignore_leases: bool = False,
    ) -> None:
        _check_unused(engine)
        store = SqlStore(
            engine, owns_engine=owns_engine, timeout=timeout, ignore_leases=ignore_leases
        )
        # A save may wait its timeout in the group-commit queue, then its timeout in the
        # database: past both, the store has answered.
        bound = 2 * check_timeout(timeout) + GRACE
        super().__init__(Portal(f"{type(self).__name__}({store.url!r})"), bound, set())
        self._store = store
        self._close_lock = threading.Lock()
        _OPEN.add(self)

    @classmethod
    def from_url(
        cls,
        url: str | URL | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        sqlite_synchronous: str = SQLITE_SYNCHRONOUS,
        ignore_leases: bool = False,
        **engine_options: Any,
    ) -> Self:
        """Open a store on ``url``, as :meth:`SqlStore.from_url <rustrade_store.SqlStore.from_url>`
        does with the same options."""
        engine = create_store_engine(
            url, timeout=timeout, sqlite_synchronous=sqlite_synchronous, **engine_options
        )
        return cls(engine, owns_engine=True, timeout=timeout, ignore_leases=ignore_leases)

    @classmethod
    def in_memory(cls, *, timeout: float = DEFAULT_TIMEOUT) -> Self:
        """A store over a private SQLite ``:memory:`` database, as
        :class:`~rustrade_store.InMemoryStore`: for tests, not durable (``from_url`` refuses a
        URL that names no file)."""
        url = resolve_url("sqlite+aiosqlite://")
        engine = create_engine(url, timeout=timeout, **store_engine_options(url))
        return cls(engine, owns_engine=True, timeout=timeout)

    @property
    def engine(self) -> AsyncEngine:
        """The engine the store runs on (on the store's own event loop only)."""
        return self._store.engine

    @property
    def url(self) -> str:
        """The database URL with its password masked."""
        return self._store.url

    @property
    def async_store(self) -> SqlStore:
        """The async store underneath, for code that runs on the sync store's own loop."""
        return self._store

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    # -- the contract ----------------------------------------------------------------------

    def load(self, key: str) -> JSONValue:
        """Return the value saved under ``key``, or ``None`` if there is none."""
        return self._call(self._store.load(key))

    def save(
        self,
        key: str,
        value: JSONInput,
        *,
        if_updated_at: datetime | None = None,
        if_absent: bool = False,
    ) -> None:
        """Store ``value`` under ``key``; compare-and-set as :meth:`SqlStore.save`."""
        self._call(self._store.save(key, value, if_updated_at=if_updated_at, if_absent=if_absent))

    def flush(self) -> None:
        """A no-op: every save is durable when it returns."""
        self._call(self._store.flush())

    def load_many(self, keys: Iterable[str]) -> dict[str, JSONValue]:
        """``{key: value}`` for every key asked, ``None`` where missing, as one snapshot."""
        return self._call(self._store.load_many(keys))

    def save_many(self, values: Mapping[str, JSONInput]) -> None:
        """Save every item in one transaction: all of them, or none if any is refused."""
        self._call(self._store.save_many(values))

    def check_writable(self, key: str) -> None:
        """Raise :class:`~rustrade_store.LeaseLostError` if a save of ``key`` is refused
        before it reaches the database (this store lost the lease on its prefix)."""
        self._store.check_writable(key)

    # -- beyond the contract ---------------------------------------------------------------

    def load_snapshot(self, key: str) -> Snapshot | None:
        """The stored :class:`~rustrade_store.Snapshot`, or ``None`` if the key is missing."""
        return self._call(self._store.load_snapshot(key))

    def delete(self, key: str) -> bool:
        """Remove ``key`` if saved before this call; return whether this call removed it."""
        return self._call(self._store.delete(key))

    def count(self, prefix: str = "") -> int:
        """How many keys start with ``prefix`` (all keys by default)."""
        return self._call(self._store.count(prefix))

    def is_empty(self) -> bool:
        """True when no key is stored."""
        return self._call(self._store.is_empty())

    def keys(self, prefix: str = "") -> Iterator[str]:
        """Every key that starts with ``prefix``, in code point order, a page at a time."""
        return self._portal.iterate(self._store.keys(prefix), self._bound)

    def snapshots(self, prefix: str = "") -> Iterator[Snapshot]:
        """Every snapshot whose key starts with ``prefix``, in key order, a page at a time."""
        return self._portal.iterate(self._store.snapshots(prefix), self._bound)

    def restore(self, items: Iterable[Snapshot], *, overwrite: bool = False) -> RestoreReport:
        """Write snapshots with their own times in one transaction (no deadline of the facade's:
        the store bounds each statement)."""
        restoring = self._store.restore(items, overwrite=overwrite)
        return self._call(restoring, None)

    def restore_stream(
        self,
        batches: Iterable[Iterable[Snapshot]],
        *,
        overwrite: bool = False,
        report: RestoreReport | None = None,
    ) -> RestoreReport:
        """Every batch of snapshots, times kept, in one transaction: see
        :meth:`SqlStore.restore_stream <rustrade_store.SqlStore.restore_stream>`."""
        stream = _async_batches(batches)
        restoring = self._store.restore_stream(stream, overwrite=overwrite, report=report)
        return self._call(restoring, None)

    def reset_time(self, key: str, value: JSONInput, *, stored_at: datetime) -> datetime:
        """Replace the snapshot of ``key`` stored at exactly ``stored_at`` (a clock that ran
        ahead) with ``value`` at this process's time now; see
        :meth:`SqlStore.reset_time <rustrade_store.SqlStore.reset_time>`."""
        return self._call(self._store.reset_time(key, value, stored_at=stored_at))

    def server_time(self) -> datetime:
        """The database server's clock now (SQLite has none: this host's)."""
        return self._call(self._store.server_time())

    def lease(
        self,
        prefix: str,
        *,
        ttl: float = DEFAULT_TTL,
        wait: float = 0.0,
        on_lost: Callable[[LeaseLostError], object] | None = None,
    ) -> SyncLease:
        """A lease on the keys under ``prefix``, not yet taken: ``with`` takes it, the store's
        loop renews it, and ``on_lost`` runs in a thread of its own, never on that loop, so it
        may call the store. See :class:`~rustrade_store.Lease`."""
        callback = None if on_lost is None else self._in_own_thread(on_lost, prefix)
        return SyncLease(self, self._store.lease(prefix, ttl=ttl, wait=wait, on_lost=callback))

    def leases(self) -> list[LeaseInfo]:
        """Every lease in the database, live or expired, with its holder and expiry."""
        return self._call(self._store.leases())

    def break_lease(self, prefix: str) -> LeaseInfo | None:
        """End another store's lease on ``prefix`` (its holder is known to be dead)."""
        return self._call(self._store.break_lease(prefix))

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Release the store's leases, close it and end its loop thread; then every call is
        refused. Safe to call twice; in a forked child it only marks the store closed."""
        with self._close_lock:
            try:
                if self._portal.refusal() is None:
                    self._call(self._store.aclose())
            finally:
                self._portal.stop()
        _OPEN.discard(self)

    def _forked(self) -> None:
        """In a forked child: the pooled connections are the parent's sockets. Set them aside
        untouched, and give the engine a new pool."""
        engine = self._store.engine.sync_engine
        inherited = engine.pool
        engine.dispose(close=False)
        self._portal.left_behind(inherited, self._store)


class SyncBufferedStore(_Calls):
    """:class:`~rustrade_store.BufferedStore` for synchronous code, in front of a
    :class:`SyncStore` and on its loop: ``save`` queues and returns, :meth:`flush` makes the
    queue durable, :meth:`close` flushes, then closes the sync store."""

    __slots__ = ("_buffered", "_inner")

    def __init__(
        self,
        inner: SyncStore,
        *,
        delay: float = DEFAULT_DELAY,
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> None:
        super().__init__(inner._portal, inner._bound, inner._callbacks)
        self._inner = inner
        self._buffered = BufferedStore(inner.async_store, delay=delay, max_pending=max_pending)

    @property
    def inner(self) -> SyncStore:
        return self._inner

    @property
    def async_store(self) -> StateStore:
        return self._buffered

    @property
    def pending(self) -> int:
        """How many keys hold a value that is not durable yet."""
        return self._buffered.pending

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._inner!r}, pending={self.pending})"

    def load(self, key: str) -> JSONValue:
        return self._call(self._buffered.load(key))

    def save(self, key: str, value: JSONInput) -> None:
        """Queue ``value`` under ``key``; it is durable after the next successful flush."""
        self._call(self._buffered.save(key, value))

    def load_many(self, keys: Iterable[str]) -> dict[str, JSONValue]:
        return self._call(self._buffered.load_many(keys))

    def save_many(self, values: Mapping[str, JSONInput]) -> None:
        """Queue every item, or none if any key or value is refused."""
        self._call(self._buffered.save_many(values))

    def check_writable(self, key: str) -> None:
        self._buffered.check_writable(key)

    def flush(self) -> None:
        """Return once everything queued before this call is durable; raise if it is not."""
        self._call(self._buffered.flush())

    def close(self) -> None:
        """Flush and close; if the flush fails the store stays open and this raises."""
        if self._portal.refusal() is None:
            self._call(self._buffered.aclose())
        self._inner.close()


def _check_unused(engine: AsyncEngine) -> None:
    """Refuse an engine whose pooled connections are lent out now (to another event loop);
    drop, without I/O, those idle in its pool, which belong to the loop that opened them."""
    if not backend_for(engine.url).loop_bound_connections:
        return
    pool = engine.sync_engine.pool
    if not isinstance(pool, QueuePool):  # nothing pooled to belong to another loop
        return
    if pool.checkedout():
        raise ConfigurationError(
            f"this engine has {pool.checkedout()} connection(s) in use on another event loop; "
            "a SyncStore runs on its own loop: give it an engine of its own (or "
            "SyncStore.from_url)"
        )
    if pool.checkedin():
        engine.sync_engine.dispose(close=False)


async def _async_batches(
    batches: Iterable[Iterable[Snapshot]],
) -> AsyncIterator[Iterable[Snapshot]]:
    for batch in batches:
        yield batch


def _close_at_exit() -> None:
    """Close every sync store left open; a failure is one logged line, not a traceback."""
    for store in list(_OPEN):
        try:
            store.close()
        except Exception as exc:
            logger.warning("closing %r at exit failed: %s", store, exc)


def _after_fork_in_child() -> None:
    for store in list(_OPEN):
        store._forked()


atexit.register(_close_at_exit)
os.register_at_fork(after_in_child=_after_fork_in_child)
