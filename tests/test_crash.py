"""The crash loop: a writer killed with SIGKILL at random moments loses no acknowledged save.

``RUSTRADE_CRASH_KILLS`` sets the number of kills per database (20 by default; ``make soak``
runs 200). After every kill: SQLite's ``PRAGMA integrity_check`` says ``ok``, and every key holds
the last value the child acknowledged, or a later one it wrote.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from rustrade_store import SqlStore

from .crash_child import value

if TYPE_CHECKING:
    from sqlalchemy import URL

KILLS = int(os.environ.get("RUSTRADE_CRASH_KILLS", "20"))
CHILD = Path(__file__).with_name("crash_child.py")
ROOT = CHILD.parent.parent
KEYS = 10
STEP = 1_000_000
"""Each child run counts from its own multiple of STEP, so values only ever grow."""


async def run_and_kill(url: str, start: int, rng: random.Random) -> tuple[dict[str, int], int]:
    """Start a child, let it save for a random while, SIGKILL it.

    Returns the last acknowledged value of each key, and how many saves were acknowledged.
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = await asyncio.create_subprocess_exec(
        sys.executable, str(CHILD), url, str(start), str(KEYS),
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )  # fmt: skip
    assert child.stdout is not None
    first = await child.stdout.readline()  # the first acknowledged save: the loop is running
    await asyncio.sleep(rng.uniform(0, 0.08))
    child.send_signal(signal.SIGKILL)
    rest = await child.stdout.read()
    assert await child.wait() == -signal.SIGKILL, "the child died before it was killed"
    lines = (first + rest).decode().split("\n")[:-1]  # a cut-off last line is no ack
    acknowledged: dict[str, int] = {}
    for line in lines:
        key, seq = line.split()
        acknowledged[key] = int(seq)
    assert acknowledged, "the child acknowledged no save"
    return acknowledged, len(lines)


def integrity(path: str) -> str:
    connection = sqlite3.connect(path)
    try:
        return str(connection.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        connection.close()


async def crash_loop(url: URL, sqlite_path: str | None) -> None:
    rng = random.Random(2026)
    url_text = url.render_as_string(hide_password=False)
    latest: dict[str, int] = {}
    checked = 0
    for kill in range(1, KILLS + 1):
        acknowledged, count = await run_and_kill(url_text, kill * STEP, rng)
        if sqlite_path is not None:
            assert integrity(sqlite_path) == "ok", f"kill {kill}: integrity check failed"
        latest.update(acknowledged)
        async with SqlStore.from_url(url) as store:
            stored = await store.load_many(latest)
        for key, seq in latest.items():
            found = stored[key]
            assert isinstance(found, dict), f"kill {kill}: {key} is {found!r}"
            found_seq = found["seq"]
            assert isinstance(found_seq, int)
            assert found_seq >= seq, f"kill {kill}: {key} lost acknowledged save {seq}"
            assert found == value(found_seq), f"kill {kill}: {key} holds a value never written"
            latest[key] = found_seq  # a later, unacknowledged save is the new floor
        checked += count
    names = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}
    backend = names.get(url.get_backend_name(), "MariaDB")
    print(f"\ncrash loop on {backend}: {KILLS} kills, {checked} acknowledged saves checked")


async def test_crash_loop_sqlite(sqlite_url: URL) -> None:
    assert sqlite_url.database is not None
    await crash_loop(sqlite_url, sqlite_url.database)


@pytest.mark.postgres
async def test_crash_loop_postgres(fresh_postgres: URL) -> None:
    from rustrade_store import upgrade

    await upgrade(fresh_postgres)
    await crash_loop(fresh_postgres, None)


@pytest.mark.mariadb
async def test_crash_loop_mariadb(fresh_mariadb: URL) -> None:
    from rustrade_store import upgrade

    await upgrade(fresh_mariadb)
    await crash_loop(fresh_mariadb, None)
