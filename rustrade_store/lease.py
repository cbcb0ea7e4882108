"""Leases: one holder at a time may write the keys under a prefix, fenced in every write.

A lease is a row of the snapshots table keyed ``@lease/<prefix>`` (``@lease/bot1/``). Its
value names the holder and carries the fencing token, constant while the lease is held; its
``updated_at`` is when the lease expires, by the database server's clock (the host's on SQLite).
Every write of a key under the prefix applies only if the lease row still holds the writer's
value, or, for a store holding no lease there, only if no live lease is there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Self

from sqlalchemy import bindparam, select, update

from . import _telemetry, clock
from .codec import LEASE_PREFIX, MAX_KEY_LENGTH, check_key
from .errors import InvalidKeyError, LeaseHeldError, LeaseLostError, StorageError
from .fencing import held_error, lease_value
from .schema import snapshots

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import datetime
    from types import TracebackType

    from sqlalchemy import Select, Update
    from sqlalchemy.ext.asyncio import AsyncConnection

    from .executor import Executor

__all__ = ["DEFAULT_TTL", "Lease", "LeaseInfo", "break_lease", "check_prefix", "list_leases"]

logger = logging.getLogger(__name__)

DEFAULT_TTL = 30.0
"""Seconds a lease lives without renewal."""

_table = snapshots


def check_prefix(prefix: object) -> str:
    """Return ``prefix`` if a lease can cover it: one first path segment with its ``/``."""
    check_key(prefix)
    assert isinstance(prefix, str)
    segment, slash, rest = prefix.partition("/")
    if not segment or not slash or rest:
        raise InvalidKeyError(
            f"lease prefix {prefix!r} must be one first path segment ending in '/', such as "
            "'bot1/': a lease covers every key that starts with it"
        )
    if len(LEASE_PREFIX) + len(prefix) > MAX_KEY_LENGTH:
        raise InvalidKeyError(f"lease prefix {prefix[:40]!r}... is too long")
    return prefix


class Lease:
    """The right to write the keys under ``prefix``, for one holder at a time.

    Use it as ``async with store.lease("bot1/") as lease:``, or call :meth:`acquire`,
    :meth:`renew` and :meth:`release`. While held it is renewed in the background every third
    of ``ttl``; if a renewal finds it gone, or none succeeds before it expires, the lease is
    lost: every write under the prefix fails at once with :class:`LeaseLostError`, and
    ``on_lost`` is called (stop trading there).
    """

    __slots__ = (
        "__weakref__",
        "_executor",
        "_lost",
        "_on_lost",
        "_renewer",
        "_row_key",
        "_text",
        "expires_at",
        "holder",
        "prefix",
        "token",
        "ttl",
        "wait",
    )

    def __init__(
        self,
        executor: Executor,
        prefix: str,
        *,
        ttl: float = DEFAULT_TTL,
        wait: float = 0.0,
        on_lost: Callable[[LeaseLostError], object] | None = None,
    ) -> None:
        if not ttl > 0:
            raise ValueError(f"ttl must be a number of seconds > 0, not {ttl!r}")
        self._executor = executor
        self.prefix = check_prefix(prefix)
        self.ttl = ttl
        self.wait = wait
        self._on_lost = on_lost
        self._row_key = LEASE_PREFIX + prefix
        self._text: str | None = None
        self._lost: LeaseLostError | None = None
        self._renewer: asyncio.Task[None] | None = None
        self.token = 0
        """The fencing token: it strictly increases each time the lease changes hands."""
        self.holder: dict[str, Any] = {}
        """Who holds it: host, pid, a random id, and since when."""
        self.expires_at: datetime | None = None
        """When the lease expires unless renewed, by the database's clock."""

    @property
    def held(self) -> bool:
        return self._text is not None

    def __repr__(self) -> str:
        state = "held" if self.held else "lost" if self._lost else "not held"
        return f"Lease({self.prefix!r}, token={self.token}, {state})"

    @_telemetry.lease_call("acquire_lease")
    async def acquire(self, *, wait: float | None = None) -> Self:
        """Take the lease; if another store holds it, wait up to ``wait`` seconds (by default
        the lease's own ``wait``) for it to be released or to expire, then raise
        :class:`LeaseHeldError` naming the holder."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.wait if wait is None else wait)
        while True:
            try:
                await self._take()
            except (LeaseHeldError, StorageError):
                # Held, or its row locked by a holder frozen inside a transaction until the
                # server ends that session: both may pass before the wait is over.
                left = deadline - loop.time()
                if left <= 0:
                    raise
                await asyncio.sleep(min(left, max(0.05, self.ttl / 10)))
                continue
            self._renewer = loop.create_task(self._renew_in_background())
            return self

    @_telemetry.lease_call("renew_lease")
    async def renew(self) -> None:
        """Push the expiry ``ttl`` seconds past now; raise :class:`LeaseLostError` if the lease
        is no longer this store's."""
        text = self._text
        if text is None:
            raise self._lost or LeaseLostError(f"lease on {self.prefix!r} is not held")
        executor = self._executor

        async def work(connection: AsyncConnection) -> bool:
            until = await _server_now(executor, connection) + timedelta(seconds=self.ttl)
            params = {"row": self._row_key, "mine": text, "until": until}
            applied = (await connection.execute(_renew(executor), params)).rowcount == 1
            if applied:
                self.expires_at = until
            return applied

        if not await executor.run("renew lease", self.prefix, work):
            self._mark_lost("a renewal found it gone (it expired and another store took it)")
            assert self._lost is not None
            raise self._lost

    @_telemetry.lease_call("release_lease")
    async def release(self) -> None:
        """Give the lease up (it expires at once); the fencing token stays in its row, so the
        next holder's is higher."""
        await self._stop_renewing()
        text, self._text = self._text, None
        if text is None:
            return
        self._executor.fencing.drop(self._row_key)
        executor = self._executor

        async def work(connection: AsyncConnection) -> None:
            now = await _server_now(executor, connection)
            params = {"row": self._row_key, "mine": text, "until": now}
            await connection.execute(_renew(executor), params)

        await executor.run("release lease", self.prefix, work)

    async def __aenter__(self) -> Self:
        if not self.held:
            await self.acquire()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.release()

    # -- internals -------------------------------------------------------------------------

    async def _take(self) -> None:
        executor = self._executor
        me = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "id": uuid.uuid4().hex[:12],
        }

        async def work(connection: AsyncConnection) -> tuple[str, int, datetime, dict[str, Any]]:
            # Take the row's lock (SQLite: the write lock) before reading it, so that no other
            # store can take the lease in between.
            await connection.execute(_touch(), {"row": self._row_key})
            now = await _server_now(executor, connection)
            found = (await connection.execute(_read(executor), {"row": self._row_key})).first()
            token = 1
            if found is not None:
                text, until = found
                if until > now:
                    raise held_error("lease", self.prefix, executor.where, text, until)
                token = _token(text) + 1
            holder = me | {"since": now.isoformat()}
            value = {"prefix": self.prefix, "token": token, "holder": holder}
            text = _text(value)
            until = now + timedelta(seconds=self.ttl)
            params = {"row": self._row_key, "text": text, "until": until}
            if found is None:
                inserted = await connection.execute(
                    executor.facts.insert_new(_table),
                    {"key": self._row_key, "value": text, "updated_at": until},
                )
                row = inserted.first()
                if row is None or row[1] != until:  # another store inserted it first
                    theirs = await connection.execute(_read(executor), {"row": self._row_key})
                    raise held_error("lease", self.prefix, executor.where, *theirs.one())
            else:
                await connection.execute(_take_over(), params)
            return text, token, until, holder

        text, token, until, holder = await executor.run(
            "take lease", self.prefix, work, transaction=True
        )
        self._text, self.token, self.expires_at, self.holder = text, token, until, holder
        self._lost = None
        executor.fencing.hold(self._row_key, text, self._found_lost)

    async def _renew_in_background(self) -> None:
        loop = asyncio.get_running_loop()
        every = self.ttl / 3
        last_ok = loop.time()
        while self._text is not None:
            await asyncio.sleep(every if loop.time() - last_ok < every else every / 4)
            started = loop.time()
            try:
                await self.renew()
            except LeaseLostError:
                return
            except Exception as exc:
                if loop.time() - last_ok >= self.ttl:
                    self._mark_lost(f"no renewal succeeded within its ttl ({exc})")
                    return
                logger.warning("renewal of the lease on %r failed, retrying: %s", self.prefix, exc)
            else:
                last_ok = started

    def _mark_lost(self, why: str) -> None:
        if self._text is not None:
            error = LeaseLostError(
                f"the lease on {self.prefix!r} (token {self.token}) is lost: {why}"
            )
            self._executor.fencing.lose(self._row_key, error)

    @_telemetry.lease_lost
    def _found_lost(self, error: LeaseLostError) -> None:
        """The fence found the lease gone (a write or a renewal): stop, and tell the bot."""
        self._text = None
        self._lost = error
        if self._renewer is not None and self._renewer is not asyncio.current_task():
            self._renewer.cancel()
        if self._on_lost is not None:
            try:
                self._on_lost(error)
            except Exception:
                logger.exception("on_lost callback of the lease on %r failed", self.prefix)

    async def _stop_renewing(self) -> None:
        renewer, self._renewer = self._renewer, None
        if renewer is not None and renewer is not asyncio.current_task():
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer


def _touch() -> Update:
    return (
        update(_table)
        .where(_table.c.key == bindparam("row"))
        .values(updated_at=_table.c.updated_at)
    )


def _read(executor: Executor) -> Select[Any]:
    value = executor.facts.json_text(_table.c.value)
    return select(value, _table.c.updated_at).where(_table.c.key == bindparam("row"))


def _take_over() -> Update:
    return (
        update(_table)
        .where(_table.c.key == bindparam("row"))
        .values(value=bindparam("text"), updated_at=bindparam("until"))
    )


def _renew(executor: Executor) -> Update:
    value = executor.facts.json_text(_table.c.value)
    return (
        update(_table)
        .where(_table.c.key == bindparam("row"), value == bindparam("mine"))
        .values(updated_at=bindparam("until"))
    )


async def _server_now(executor: Executor, connection: AsyncConnection) -> datetime:
    if executor.facts.host_clock:
        return clock.now()
    now: datetime = (await connection.execute(select(executor.facts.server_now()))).scalar_one()
    return now


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    """A lease row as an operator sees it."""

    prefix: str
    token: int
    holder: dict[str, Any]
    expires_at: datetime
    live: bool


async def list_leases(executor: Executor) -> list[LeaseInfo]:
    """Every lease row, live or not, in prefix order."""
    table = _table
    text = executor.facts.json_text(table.c.value)
    live = table.c.updated_at > executor.facts.server_now()
    end = chr(ord(LEASE_PREFIX[-1]) + 1)
    statement = (
        select(table.c.key, text, table.c.updated_at, live)
        .where(table.c.key >= LEASE_PREFIX, table.c.key < LEASE_PREFIX[:-1] + end)
        .order_by(table.c.key)
    )
    rows = await executor.fetch("leases", None, statement, executor.fencing.now())
    return [
        LeaseInfo(key.removeprefix(LEASE_PREFIX), _token(value), _holder(value), until, bool(on))
        for key, value, until, on in rows
    ]


async def break_lease(executor: Executor, prefix: str) -> LeaseInfo | None:
    """End the lease on ``prefix`` whoever holds it, for an operator who knows the holder is
    dead: the row gets a new token and expires now, so the old holder's writes are refused
    even if it comes back. Return the lease as it was, or ``None`` if there was none."""
    row_key = LEASE_PREFIX + check_prefix(prefix)

    async def work(connection: AsyncConnection) -> LeaseInfo | None:
        await connection.execute(_touch(), {"row": row_key})
        now = await _server_now(executor, connection)
        found = (await connection.execute(_read(executor), {"row": row_key})).first()
        if found is None:
            return None
        text, until = found
        token = _token(text)
        broken = {"prefix": prefix, "token": token + 1, "holder": {"broken at": now.isoformat()}}
        params = {"row": row_key, "text": _text(broken), "until": now}
        await connection.execute(_take_over(), params)
        return LeaseInfo(prefix, token, _holder(text), until, until > now)

    return await executor.run("break lease", prefix, work, transaction=True)


def _holder(text: str) -> dict[str, Any]:
    holder = lease_value(text).get("holder")
    return holder if isinstance(holder, dict) else {}


def _token(text: str) -> int:
    token = lease_value(text).get("token", 0)
    return token if isinstance(token, int) else 0


def _text(value: dict[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)
