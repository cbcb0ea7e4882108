"""The one SQL implementation of the contract: statements over the executor, on SQLAlchemy's
async engine (Core only)."""

from __future__ import annotations

import contextlib
import weakref
from typing import TYPE_CHECKING, Any, Self

from . import _clock, _statements, _telemetry
from ._backends import backend_for
from ._engine import DEFAULT_TIMEOUT, SQLITE_SYNCHRONOUS, create_store_engine, masked
from ._errors import StoreError
from ._executor import Executor
from ._fencing import Fencing
from ._lease import DEFAULT_TTL, Lease, LeaseInfo, break_lease, list_leases
from ._reads import Reads
from ._restore import RestoreReport, restore, restore_stream
from ._store import Snapshot, StateStore
from ._writes import Writes
from .codec import (
    BATCH_ROWS,
    JSONValue,
    check_key,
    check_keys,
    check_time,
    decode,
    encode,
    encode_rows,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping
    from datetime import datetime

    from sqlalchemy import URL
    from sqlalchemy.ext.asyncio import AsyncEngine

    from ._errors import LeaseLostError
    from .codec import JSONInput

__all__ = ["SqlStore"]


class SqlStore(StateStore):
    """A :class:`StateStore` over one table of any supported database.

    Build it with :meth:`from_url`, or hand it an :class:`~sqlalchemy.ext.asyncio.AsyncEngine`
    (``timeout`` and ``ignore_leases`` as there). ``owns_engine=True`` says the store made the
    engine with ``store_engine_options``: its connections autocommit, and close disposes of it;
    a handed engine runs every operation in a transaction and stays open for its owner. At
    first use the store checks the schema's Alembic revision (:class:`~rustrade_store.SchemaError`)
    and migrates an in-memory SQLite database, which nothing else could. A write applies only
    over an older save time, and only where no other store's lease covers its key (see the
    README's Guarantees).
    """

    __slots__ = (
        "_engine",
        "_executor",
        "_fencing",
        "_leases",
        "_owns_engine",
        "_reads",
        "_snapshot",
        "_writes",
    )

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        owns_engine: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
        ignore_leases: bool = False,
    ) -> None:
        self._engine = engine
        self._owns_engine = owns_engine
        backend = backend_for(engine.url)
        self._executor = Executor(
            engine, backend, where=masked(engine.url), timeout=timeout, owns_engine=owns_engine
        )
        self._fencing = Fencing(backend, ignore_leases=ignore_leases)
        self._writes = Writes(self._executor, self._fencing)
        self._reads = Reads(self._executor)
        self._snapshot = _statements.snapshot(self._executor.backend)
        self._leases: weakref.WeakSet[Lease] = weakref.WeakSet()

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
        """Open a store on ``url``; without one, ``RUSTRADE_STORE_URL``, else ``rustrade_state.db``.

        ``timeout`` bounds, in seconds, each call: the wait for a connection, a lock or a
        statement, and the retries of a lost connection. ``sqlite_synchronous="NORMAL"`` trades
        durability across power loss for speed (see the README's Guarantees). ``ignore_leases``
        writes under other stores' leases (an operator's forced repair). ``engine_options`` go to
        SQLAlchemy's ``create_async_engine`` over the store's own settings, bar the two that
        decide how it commits (``isolation_level``, ``skip_autocommit_rollback``: refused).
        """
        engine = create_store_engine(
            url, timeout=timeout, sqlite_synchronous=sqlite_synchronous, **engine_options
        )
        return cls(engine, owns_engine=True, timeout=timeout, ignore_leases=ignore_leases)

    @property
    def engine(self) -> AsyncEngine:
        """The engine the store runs on."""
        return self._engine

    @property
    def url(self) -> str:
        """The database URL with its password masked."""
        return self._executor.where

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    # -- the contract ----------------------------------------------------------------------

    @_telemetry.traced("load")
    async def load(self, key: str) -> JSONValue:
        check_key(key)
        text = await self._reads.load(key)
        return None if text is None else decode(text, key)

    @_telemetry.traced("save", write=True)
    async def save(
        self,
        key: str,
        value: JSONInput,
        *,
        if_updated_at: datetime | None = None,
        if_absent: bool = False,
    ) -> None:
        """Store ``value`` under ``key``; with ``if_updated_at``, only if the stored snapshot is
        still the one saved at that time (the ``updated_at`` of :meth:`load_snapshot`), with
        ``if_absent`` only if the key does not exist: otherwise nothing is written and
        :class:`~rustrade_store.ConflictError` names the stored time."""
        check_key(key)
        row = {"key": key, "value": encode(value), "updated_at": _clock.next_save_time()}
        if if_updated_at is None and not if_absent:
            await self._writes.save(row)
        elif if_updated_at is not None and if_absent:
            raise ValueError("give if_updated_at or if_absent, not both")
        else:
            expected = None if if_absent else check_time(key, if_updated_at)
            await self._writes.save_if(row, expected)

    @_telemetry.traced("load_many")
    async def load_many(self, keys: Iterable[str]) -> dict[str, JSONValue]:
        """Return ``{key: value}`` for every key asked, ``None`` where missing, as one
        consistent snapshot."""
        wanted = check_keys(keys)
        found = await self._reads.load_keys(wanted) if wanted else {}
        return {key: None if key not in found else decode(found[key], key) for key in wanted}

    @_telemetry.traced("save", batch=True, write=True)
    async def save_many(self, values: Mapping[str, JSONInput]) -> None:
        """Save every item in one transaction: all of them, or none if any is refused."""
        when = _clock.next_save_time()
        rows = encode_rows((key, value, when) for key, value in values.items())
        if rows:
            await self._writes.save_all("save_many", rows)

    @_telemetry.traced("restore", write=True)
    async def restore(self, items: Iterable[Snapshot], *, overwrite: bool = False) -> RestoreReport:
        """Write snapshots with their own times in one transaction; see :meth:`restore_stream`."""
        return await restore(self._executor, self._writes, items, overwrite=overwrite)

    @_telemetry.traced("restore_stream", write=True)
    async def restore_stream(
        self,
        batches: AsyncIterable[Iterable[Snapshot]],
        *,
        overwrite: bool = False,
        report: RestoreReport | None = None,
    ) -> RestoreReport:
        """Write every batch of snapshots, times kept, in ONE transaction (import, copy): all
        or nothing, newer stored state kept unless ``overwrite``; ``report`` (returned) counts
        what was found and says how far it got. See :mod:`rustrade_store._restore`."""
        return await restore_stream(
            self._executor, self._writes, batches, overwrite=overwrite, report=report
        )

    # -- beyond the contract ---------------------------------------------------------------

    @_telemetry.traced("load_snapshot")
    async def load_snapshot(self, key: str) -> Snapshot | None:
        """Return the stored :class:`Snapshot`, or ``None`` if the key is missing: how a caller
        tells a stored JSON ``null`` from a missing key."""
        check_key(key)
        rows = await self._executor.fetch("load", key, self._snapshot, {"key": key})
        return Snapshot(key, decode(rows[0][0], key), rows[0][1]) if rows else None

    @_telemetry.traced("delete", write=True)
    async def delete(self, key: str) -> bool:
        """Remove ``key``, if saved before this call (a later save stays); return whether this
        call removed it. Retried on a lost connection; where an attempt's answer was lost and the
        key is then gone, whether this call removed it is unknown:
        :class:`~rustrade_store.OutcomeUnknownError`."""
        check_key(key)
        return await self._writes.delete(key, _clock.next_save_time())

    def check_writable(self, key: str) -> None:
        self._fencing.check(key)

    def lease(
        self,
        prefix: str,
        *,
        ttl: float = DEFAULT_TTL,
        wait: float = 0.0,
        on_lost: Callable[[LeaseLostError], object] | None = None,
    ) -> Lease:
        """A lease on the keys under ``prefix`` (one first path segment, such as ``"bot1/"``),
        not yet taken: ``async with`` takes it (waiting up to ``wait`` seconds for another
        holder), renews it in the background and releases it. See :class:`~rustrade_store.Lease`."""
        lease = Lease(self._executor, self._fencing, prefix, ttl=ttl, wait=wait, on_lost=on_lost)
        self._leases.add(lease)
        return lease

    @_telemetry.traced("leases")
    async def leases(self) -> list[LeaseInfo]:
        """Every lease in the database, live or expired, with its holder and expiry."""
        return await list_leases(self._executor)

    @_telemetry.traced("break_lease")
    async def break_lease(self, prefix: str) -> LeaseInfo | None:
        """End another store's lease on ``prefix`` (its holder is known to be dead): its writes
        are refused from now on, even if it comes back. Return the lease as it was."""
        return await break_lease(self._executor, prefix)

    async def keys(self, prefix: str = "") -> AsyncIterator[str]:
        """Yield every key that starts with ``prefix``, in code point order, a page at a time."""
        async for row in self._scan(prefix, values=False):
            yield row[0]

    async def snapshots(self, prefix: str = "") -> AsyncIterator[Snapshot]:
        """Yield every snapshot whose key starts with ``prefix``, in key order, a page at a time."""
        async for key, text, updated_at in self._scan(prefix, values=True):
            yield Snapshot(key, decode(text, key), updated_at)

    @_telemetry.traced("count")
    async def count(self, prefix: str = "") -> int:
        """How many keys start with ``prefix`` (all keys by default)."""
        rows = await self._executor.fetch("count", prefix or None, _statements.count(prefix))
        return int(rows[0][0])

    async def is_empty(self) -> bool:
        """True when no key is stored."""
        return await self.count() == 0

    async def aclose(self) -> None:
        """Release the store's leases and close it (a handed engine stays open for its owner)."""
        for lease in list(self._leases):
            with contextlib.suppress(StoreError):
                await lease.release()
        await self._executor.aclose(dispose=self._owns_engine)

    async def _scan(self, prefix: str, *, values: bool) -> AsyncIterator[Any]:
        page = _statements.page(self._executor.backend, prefix, values=values)
        after = ""
        while True:
            rows = await self._executor.fetch("list", prefix or None, page, {"after": after})
            for row in rows:
                if row[0].startswith(prefix):  # guards against a collation that is not code point
                    yield row
            if len(rows) < BATCH_ROWS:
                return
            after = rows[-1][0]

    # -- repairs ---------------------------------------------------------------------------

    @_telemetry.traced("reset_time", write=True)
    async def reset_time(self, key: str, value: JSONInput, *, stored_at: datetime) -> datetime:
        """Replace the snapshot of ``key`` stored at exactly ``stored_at`` with ``value`` at
        this process's time now, even where ``stored_at`` is later: the repair of a snapshot
        stamped by a clock that ran ahead, which every later save refuses with
        :class:`~rustrade_store.ClockSkewError`. One compare-and-set on the exact stored time:
        a key saved again since, or removed, is left as it is (:class:`ConflictError`), and the
        leases fence it as any write. Return the time written."""
        check_key(key)
        written = _clock.next_save_time()
        row = {"key": key, "value": encode(value), "updated_at": written}
        await self._writes.save_if(row, check_time(key, stored_at), reset=True)
        return written

    @_telemetry.traced("server_time")
    async def server_time(self) -> datetime:
        """The database server's clock now (SQLite has none: this host's)."""
        backend = self._executor.backend
        rows = await self._executor.fetch(
            "time", None, _statements.server_now(backend), self._fencing.now()
        )
        when: datetime = rows[0][0]
        return when
