"""A copy of a bot for the lease tests: one process, one store, driven a line at a time.

``python lease_child.py URL [TIMEOUT]`` opens ``SqlStore.from_url(URL, timeout=TIMEOUT)`` and
answers each command read from stdin (a JSON array: the command, then its arguments) with one
line on stdout, flushed at once, so that a test waits on lines rather than sleeping:

    ["ready"]                          READY <pid>, once the store has answered a query
    ["acquire", PREFIX, TTL, WAIT]     HELD <token> <holder JSON>
    ["save", KEY, VALUE]               SAVED <key>
    ["save_many", {KEY: VALUE, ...}]   SAVED <keys JSON>
    ["delete", KEY]                    DELETED <true|false>
    ["renew"]                          RENEWED <expires_at>
    ["status"]                         STATUS <held> <token> <expires_at> <renewals>
    ["release"]                        RELEASED
    ["load", N, SECONDS, PREFIX]       LOADED <saves> <errors JSON>: N tasks saving at once
    ["contend", PREFIX, TTL, SECONDS]  CONTENDED <refused> <taken>: the lease tried every 50 ms
    ["reset"]                          READY <pid>, on a new store (the old one closed, its
                                       lease released): a fresh copy of the bot, for the next test

End of input ends the process.

A command refused by a lease answers ``LeaseHeldError <JSON>`` (the message, the holder and
``until``) or ``LeaseLostError <JSON>`` (the message); any other error ``ERROR <type> <message>``.
The lease's ``on_lost`` callback prints ``ON_LOST <message>`` whenever it runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from rustrade_store import LeaseHeldError, LeaseLostError, SqlStore, StoreError

if TYPE_CHECKING:
    from rustrade_store import Lease


def emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def refusal(exc: BaseException) -> str:
    """The answer line for an error."""
    if isinstance(exc, LeaseHeldError):
        details = {"message": str(exc), "holder": exc.holder, "until": exc.until.isoformat()}
        return f"LeaseHeldError {json.dumps(details)}"
    if isinstance(exc, LeaseLostError):
        return f"LeaseLostError {json.dumps({'message': str(exc)})}"
    return f"ERROR {type(exc).__name__} {exc}".replace("\n", " ")


class Bot:
    """The store, its one lease, and how often that lease's expiry moved (renewals)."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        self.store = SqlStore.from_url(url, timeout=timeout)
        self.lease: Lease | None = None
        self.renewals = 0
        self._watcher: asyncio.Task[None] | None = None

    async def run(self, command: str, *args: Any) -> str:
        if command == "reset":
            await self.store.aclose()
            self.store = SqlStore.from_url(self.url, timeout=self.timeout)
            self.lease = None
            command = "ready"
        store = self.store
        if command == "ready":
            await store.count()
            return f"READY {os.getpid()}"
        if command == "acquire":
            prefix, ttl, wait = args
            lease = store.lease(prefix, ttl=ttl, on_lost=lambda exc: emit(f"ON_LOST {exc}"))
            await lease.acquire(wait=wait)
            self.lease, self.renewals = lease, 0
            self._watcher = asyncio.get_running_loop().create_task(self._watch(lease))
            return f"HELD {lease.token} {json.dumps(lease.holder)}"
        if command == "save":
            await store.save(args[0], args[1])
            return f"SAVED {args[0]}"
        if command == "save_many":
            await store.save_many(args[0])
            return f"SAVED {json.dumps(list(args[0]))}"
        if command == "delete":
            return f"DELETED {json.dumps(await store.delete(args[0]))}"
        if command == "renew":
            assert self.lease is not None
            await self.lease.renew()
            return f"RENEWED {self._expires_at()}"
        if command == "status":
            held = self.lease is not None and self.lease.held
            token = self.lease.token if self.lease is not None else 0
            return f"STATUS {json.dumps(held)} {token} {self._expires_at()} {self.renewals}"
        if command == "release":
            if self.lease is not None:
                await self.lease.release()
            return "RELEASED"
        if command == "load":
            return await self._load(*args)
        if command == "contend":
            return await self._contend(*args)
        return f"ERROR ValueError unknown command {command!r}"

    def _expires_at(self) -> str:
        when = self.lease.expires_at if self.lease is not None else None
        return when.isoformat() if when is not None else "-"

    async def _watch(self, lease: Lease) -> None:
        """Count the renewals: each moves the expiry."""
        seen = lease.expires_at
        while lease.held:
            await asyncio.sleep(0.02)
            if lease.expires_at != seen:
                seen = lease.expires_at
                self.renewals += 1

    async def _load(self, tasks: int, seconds: float, prefix: str) -> str:
        """``tasks`` tasks saving a key each under ``prefix`` for ``seconds``, at once."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        saves = 0
        errors: dict[str, int] = {}

        async def saver(index: int) -> None:
            nonlocal saves
            seq = 0
            while loop.time() < deadline:
                seq += 1
                try:
                    await self.store.save(f"{prefix}{index:02d}", {"seq": seq, "task": index})
                except StoreError as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    if isinstance(exc, LeaseLostError):
                        return
                else:
                    saves += 1

        await asyncio.gather(*(saver(index) for index in range(tasks)))
        return f"LOADED {saves} {json.dumps(errors)}"

    async def _contend(self, prefix: str, ttl: float, seconds: float) -> str:
        """A second copy trying to take the lease every 50 ms for ``seconds``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        refused = taken = 0
        while loop.time() < deadline:
            lease = self.store.lease(prefix, ttl=ttl)
            try:
                await lease.acquire()
            except LeaseHeldError:
                refused += 1
            else:
                taken += 1
                await lease.release()
            await asyncio.sleep(0.05)
        return f"CONTENDED {refused} {taken}"


async def main(url: str, store_timeout: float) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    bot = Bot(url, store_timeout)
    try:
        while line := await reader.readline():
            try:
                answer = await bot.run(*json.loads(line))
            except Exception as exc:
                answer = refusal(exc)
            emit(answer)
    finally:
        await bot.store.aclose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 10.0))
