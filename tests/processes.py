"""What the tests of processes share: a child process driven a line at a time, the database
they share emptied, and whether a PostgreSQL session waits on a lock."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete

from rustrade_store import SqlStore
from rustrade_store._schema import snapshots

if TYPE_CHECKING:
    import asyncpg
    from sqlalchemy import URL

__all__ = ["PATIENCE", "Child", "empty", "waiting_on_a_lock"]

PATIENCE = 60.0
"""Seconds a child may take to answer before the test fails: a guard against a hang."""


class Child:
    """A ``lease_child.py`` process: send it commands, read its answers."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self.pid = process.pid
        self.lost: list[str] = []
        """The ``ON_LOST`` lines it printed: its lease's on_lost callback ran."""
        self.killed = False

    def send(self, *command: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps(command) + "\n").encode())
        self.process.stdin.flush()

    async def answer(self) -> str:
        """The next line that answers a command (``ON_LOST`` lines are kept aside)."""
        assert self.process.stdout is not None
        while True:
            try:
                raw = await asyncio.wait_for(
                    asyncio.to_thread(self.process.stdout.readline), PATIENCE
                )
            except TimeoutError:
                self.kill()
                raise AssertionError(f"child {self.pid} answered nothing in {PATIENCE} s") from None
            assert raw, f"child {self.pid} ended (status {self.process.wait()})"
            line = raw.decode().rstrip("\n")
            if not line.startswith("ON_LOST "):
                return line
            self.lost.append(line)

    async def ask(self, *command: Any) -> str:
        self.send(*command)
        return await self.answer()

    def stop(self) -> None:
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        self.killed = True
        self.process.kill()
        self.process.wait()

    def close(self) -> None:
        """End the process: its input closed, it exits (killed if it does not)."""
        if self.process.poll() is None:
            self.resume()
            assert self.process.stdin is not None
            with contextlib.suppress(BrokenPipeError):
                self.process.stdin.close()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                with contextlib.suppress(BrokenPipeError):
                    stream.close()


async def empty(url: URL) -> None:
    """Delete every row of the database of ``url``, lease rows included."""
    async with SqlStore.from_url(url) as store, store.engine.begin() as connection:
        await connection.execute(delete(snapshots))


async def waiting_on_a_lock(connection: asyncpg.Connection, database: str) -> bool:
    """Whether a session of ``database`` waits for a lock now. Ask on a connection outside any
    transaction: within one, ``pg_stat_activity`` is a snapshot taken at its first read."""
    count: int = await connection.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'",
        database,
    )
    return count > 0
