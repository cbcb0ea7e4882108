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
import inspect
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Self

from . import _clock, _statements, _telemetry
from ._errors import InvalidKeyError, LeaseHeldError, LeaseLostError, StorageError, StoreError
from ._executor import Attempt
from ._fencing import clock_param
from ._galera import refuse_lease
from ._outcome import held_error, lease_text, lease_value
from ._writes import UNHELD_SINCE, unheld_text
from .codec import LEASE_PREFIX, MAX_KEY_LENGTH, check_key

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import datetime
    from types import TracebackType

    from sqlalchemy.ext.asyncio import AsyncConnection

    from ._executor import Executor
    from ._fencing import Fencing

__all__ = ["DEFAULT_TTL", "Lease", "LeaseInfo", "break_lease", "check_prefix", "list_leases"]

logger = logging.getLogger("rustrade_store.lease")

DEFAULT_TTL = 30.0
"""Seconds a lease lives without renewal."""

CLOCK_MARGIN = 0.01
"""The share of ``ttl`` by which a holder counts its lease lost before the database would let
a rival take it: room for this host's clock and the database server's to run at rates up to 1%
apart over one ttl."""


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
    of ``ttl``. If a renewal finds it gone, or none succeeds in time, the lease is lost: every
    write under the prefix fails at once with :class:`LeaseLostError`, and ``on_lost`` is
    called (a coroutine function is run as a task): stop trading there. "In time" is by this
    host's monotonic clock, whatever a renewal in flight is doing: the lease counts as lost
    ``ttl`` less :data:`CLOCK_MARGIN` after the start of its last successful renewal (or take),
    before the database's clock lets any rival take it over.
    """

    __slots__ = (
        "__weakref__",
        "_callbacks",
        "_executor",
        "_expiry",
        "_fencing",
        "_lost",
        "_new",
        "_on_lost",
        "_read",
        "_renew",
        "_renewer",
        "_row_key",
        "_text",
        "_valid_until",
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
        fencing: Fencing,
        prefix: str,
        *,
        ttl: float = DEFAULT_TTL,
        wait: float = 0.0,
        on_lost: Callable[[LeaseLostError], object] | None = None,
    ) -> None:
        if not ttl > 0:
            raise ValueError(f"ttl must be a number of seconds > 0, not {ttl!r}")
        self._executor = executor
        self._fencing = fencing
        self.prefix = check_prefix(prefix)
        self.ttl = ttl
        self.wait = wait
        self._on_lost = on_lost
        self._row_key = LEASE_PREFIX + prefix
        self._read = _statements.lease_read(executor.backend)
        self._renew = _statements.lease_renew(executor.backend)
        self._new = executor.backend.insert_new(_statements.snapshots)
        self._text: str | None = None
        self._lost: LeaseLostError | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._valid_until = 0.0
        self._expiry: asyncio.TimerHandle | None = None
        self._callbacks: set[asyncio.Task[Any]] = set()
        self.token = 0
        """The fencing token: it strictly increases each time the lease changes hands."""
        self.holder: dict[str, Any] = {}
        """Who holds it: host, pid, a random id, and since when."""
        self.expires_at: datetime | None = None
        """When the lease expires unless renewed, by the database's clock."""

    @property
    def held(self) -> bool:
        """Whether this store holds the lease: taken, not lost, and within its ttl (less the
        margin) of its last successful renewal by this host's monotonic clock."""
        return self._text is not None and time.monotonic() < self._valid_until

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
        if text is not None and time.monotonic() >= self._valid_until:
            self._mark_lost("no renewal succeeded within its ttl")
        if self._text is None:
            raise self._lost or LeaseLostError(f"lease on {self.prefix!r} is not held")
        executor = self._executor
        started = time.monotonic()

        async def work(connection: AsyncConnection) -> bool:
            until = await _server_now(executor, connection) + timedelta(seconds=self.ttl)
            params = {"row": self._row_key, "mine": text, "until": until}
            (count,) = (await executor.execute(connection, self._renew, params))[0]
            if count == 1:
                self.expires_at = until
            return bool(count == 1)

        if not await executor.run("renew lease", self.prefix, work, attempt=Attempt()):
            self._mark_lost("a renewal found it gone (it expired and another store took it)")
        if self._text is None:  # lost meanwhile, by the database or by this host's clock
            assert self._lost is not None
            raise self._lost
        self._valid_for(started)

    @_telemetry.lease_call("release_lease")
    async def release(self) -> None:
        """Give the lease up (it expires at once); the fencing token stays in its row, so the
        next holder's is higher."""
        await self._stop_renewing()
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        text, self._text = self._text, None
        if text is None:
            return
        self._fencing.drop(self._row_key)
        executor = self._executor

        async def work(connection: AsyncConnection) -> None:
            now = await _server_now(executor, connection)
            params = {"row": self._row_key, "mine": text, "until": now}
            await executor.execute(connection, self._renew, params)

        await executor.run("release lease", self.prefix, work, attempt=Attempt())

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
        me = {"host": socket.gethostname(), "pid": os.getpid(), "id": uuid.uuid4().hex[:12]}

        async def work(connection: AsyncConnection) -> tuple[str, int, datetime, dict[str, Any]]:
            if executor.backend.may_be_galera:
                await refuse_lease(connection, self.prefix, executor.where)
            # Lock the row before reading it, so that no other store takes it in between, and
            # no write of a store holding no lease lands between this take-over and its commit.
            locked = await executor.execute(
                connection, _statements.lease_lock(), {"row": self._row_key}
            )
            if locked[0][0] == 0:  # a row another store creates now would not be locked
                raise _NoLeaseRow
            now = await _server_now(executor, connection)
            found = await executor.execute(connection, self._read, {"row": self._row_key})
            text, until = found[0]
            value = lease_value(text)
            holder = value.get("holder")
            if isinstance(holder, dict) and holder.get("id") == me["id"]:
                return text, _token(text), until, holder  # this call's own earlier attempt
            if until > now:
                raise held_error("lease", self.prefix, executor.where, text, until)
            token = _token(text) + 1
            holder = me | {"since": now.isoformat()}
            text = lease_text({"prefix": self.prefix, "token": token, "holder": holder})
            until = now + timedelta(seconds=self.ttl)
            params = {"row": self._row_key, "text": text, "until": until}
            await executor.execute(connection, _statements.lease_take(), params)
            return text, token, until, holder

        attempt = Attempt()
        started = time.monotonic()
        while True:
            try:
                taken = await executor.run(
                    "take lease", self.prefix, work, transaction=True, attempt=attempt
                )
                break
            except _NoLeaseRow:
                await executor.fetch("take lease", self.prefix, self._new, self._unheld())
        text, token, until, holder = taken
        self._text, self.token, self.expires_at, self.holder = text, token, until, holder
        self._lost = None
        self._fencing.hold(self._row_key, text, self._found_lost)
        self._valid_for(started)

    def _valid_for(self, started: float) -> None:
        """Count the lease held until ``ttl`` less the margin after ``started`` (the monotonic
        start of the take or renewal that just succeeded): the database read its clock for the
        new expiry after that start."""
        self._valid_until = started + self.ttl * (1 - CLOCK_MARGIN)
        self._fencing.valid_until(self._row_key, self._valid_until)
        if self._expiry is not None:
            self._expiry.cancel()
        loop = asyncio.get_running_loop()
        self._expiry = loop.call_later(self._valid_until - time.monotonic(), self._expire)

    def _expire(self) -> None:
        self._expiry = None
        if self._text is None:
            return
        left = self._valid_until - time.monotonic()
        if left > 0:  # the loop's clock ran ahead of time.monotonic()
            self._expiry = asyncio.get_running_loop().call_later(left, self._expire)
            return
        self._mark_lost("no renewal succeeded within its ttl")

    def _unheld(self) -> dict[str, Any]:
        return {"key": self._row_key, "value": unheld_text(self.prefix), "updated_at": UNHELD_SINCE}

    async def _renew_in_background(self) -> None:
        every = self.ttl / 3
        pause = every
        while self._text is not None:
            await asyncio.sleep(pause)
            try:
                await self.renew()
            except LeaseLostError:
                return
            except Exception as exc:
                # Tried again sooner; if none succeeds in time, the expiry timer ends the lease.
                logger.warning("renewal of the lease on %r failed, retrying: %s", self.prefix, exc)
                pause = every / 4
            else:
                pause = every

    def _mark_lost(self, why: str) -> None:
        if self._text is not None:
            error = LeaseLostError(
                f"the lease on {self.prefix!r} (token {self.token}) is lost: {why}"
            )
            self._fencing.lose(self._row_key, error)

    @_telemetry.lease_lost
    def _found_lost(self, error: LeaseLostError) -> None:
        """The fence found the lease gone (a write or a renewal): stop, and tell the bot."""
        self._text = None
        self._lost = error
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if self._renewer is not None and self._renewer is not asyncio.current_task():
            self._renewer.cancel()
        if self._on_lost is None:
            return
        try:
            result = self._on_lost(error)
        except Exception:
            logger.exception("on_lost callback of the lease on %r failed", self.prefix)
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._callbacks.add(task)
            task.add_done_callback(self._callback_done)

    def _callback_done(self, task: asyncio.Task[Any]) -> None:
        self._callbacks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error(
                "on_lost callback of the lease on %r failed",
                self.prefix,
                exc_info=task.exception(),
            )

    async def _stop_renewing(self) -> None:
        renewer, self._renewer = self._renewer, None
        if renewer is not None and renewer is not asyncio.current_task():
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer


class _NoLeaseRow(StoreError):
    """The prefix has no lease row yet: it is created, unheld, and the take tried again."""


async def _server_now(executor: Executor, connection: AsyncConnection) -> datetime:
    if executor.backend.host_clock:
        return _clock.now()
    rows = await executor.execute(connection, _statements.server_now(executor.backend))
    now: datetime = rows[0][0]
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
    """Every lease taken at least once, live or not, in prefix order (a row created unheld, to
    serialise writes with a first take-over, is none)."""
    statement = _statements.leases(executor.backend)
    rows = await executor.fetch("leases", None, statement, clock_param(executor.backend))
    return [
        LeaseInfo(key.removeprefix(LEASE_PREFIX), _token(value), _holder(value), until, bool(on))
        for key, value, until, on in rows
        if _token(value) > 0
    ]


async def break_lease(executor: Executor, prefix: str) -> LeaseInfo | None:
    """End the lease on ``prefix`` whoever holds it, for an operator who knows the holder is
    dead: the row gets a new token and expires now, so the old holder's writes are refused
    even if it comes back. Return the lease as it was, or ``None`` if there was none."""
    row_key = LEASE_PREFIX + check_prefix(prefix)
    read = _statements.lease_read(executor.backend)

    async def work(connection: AsyncConnection) -> LeaseInfo | None:
        lock = _statements.lease_lock()
        if (await executor.execute(connection, lock, {"row": row_key}))[0][0] == 0:
            return None
        now = await _server_now(executor, connection)
        found = await executor.execute(connection, read, {"row": row_key})
        if _token(found[0][0]) == 0:
            return None
        text, until = found[0]
        token = _token(text)
        broken = {"prefix": prefix, "token": token + 1, "holder": {"broken at": now.isoformat()}}
        params = {"row": row_key, "text": lease_text(broken), "until": now}
        await executor.execute(connection, _statements.lease_take(), params)
        return LeaseInfo(prefix, token, _holder(text), until, until > now)

    return await executor.run("break lease", prefix, work, transaction=True, attempt=Attempt())


def _holder(text: str) -> dict[str, Any]:
    holder = lease_value(text).get("holder")
    return holder if isinstance(holder, dict) else {}


def _token(text: str) -> int:
    token = lease_value(text).get("token", 0)
    return token if isinstance(token, int) else 0
