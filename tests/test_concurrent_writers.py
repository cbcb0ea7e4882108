"""Concurrent writers: 8 processes, each with its own store, 500 saves each on one database.

Zero errors (no "database is locked"), and every key ends at a value that some writer wrote
there last: no save is half-applied, none resurrected from before a writer's later save.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from rustrade_store import SqlStore

if TYPE_CHECKING:
    from sqlalchemy import URL

CHILD = Path(__file__).with_name("writer_child.py")
WRITERS = 8
SAVES = 500


async def run_writers(url: URL, tasks: int) -> None:
    env = {**os.environ, "PYTHONPATH": str(CHILD.parent.parent)}
    text = url.render_as_string(hide_password=False)
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            str(CHILD),
            text,
            str(writer),
            str(SAVES),
            str(tasks),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        for writer in range(WRITERS)
    ]
    outputs = await asyncio.gather(*(child.communicate() for child in children))
    last_by_key: dict[str, list[object]] = {}
    for writer, (child, (out, err)) in enumerate(zip(children, outputs, strict=True)):
        assert child.returncode == 0, f"writer {writer} failed:\n{err.decode()[-3000:]}"
        for key, values in json.loads(out).items():
            last_by_key.setdefault(key, []).extend(values)
    shared = [key for key in last_by_key if key.startswith("shared/")]
    assert len(shared) == 4
    assert sum(len(values) for values in last_by_key.values()) >= WRITERS * tasks
    async with SqlStore.from_url(url) as store:
        final = await store.load_many(last_by_key)
        assert await store.count() == len(last_by_key)
    for key, candidates in last_by_key.items():
        assert final[key] in candidates, f"{key} ends at {final[key]!r}, no writer's last save"
        if not key.startswith("shared/"):
            assert len(candidates) == 1
            assert final[key] == candidates[0], f"{key} lost its only writer's last save"


async def test_eight_processes_on_one_sqlite_file(sqlite_url: URL) -> None:
    await run_writers(sqlite_url, tasks=1)


@pytest.mark.postgres
async def test_eight_processes_on_postgres_with_a_pool(fresh_postgres: URL) -> None:
    """Four tasks per process, so each store's pool lends several connections at once."""
    from rustrade_store import upgrade

    await upgrade(fresh_postgres)
    await run_writers(fresh_postgres, tasks=4)


@pytest.mark.mariadb
async def test_eight_processes_on_mariadb_with_a_pool(fresh_mariadb: URL) -> None:
    from rustrade_store import upgrade

    await upgrade(fresh_mariadb)
    await run_writers(fresh_mariadb, tasks=4)
