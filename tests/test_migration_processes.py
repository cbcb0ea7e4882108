"""Migrations serialised across processes: bots that each run ``upgrade()`` at boot, started
together, all end at head without an error, on a fresh database and on an old one."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from rustrade_store import SqlStore, create_engine, downgrade, head_revision, upgrade
from rustrade_store._migrate import schema_status

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from sqlalchemy import URL

PROCESSES = 8
HANG_GUARD = 120.0
"""Seconds after which a child that would otherwise hang fails the test: a guard, not a measure."""

CHILD = """
import asyncio, json, sys, traceback
from rustrade_store import upgrade
print("ready", flush=True)
for _ in sys.stdin:
    try:
        asyncio.run(upgrade(sys.argv[1]))
        print(json.dumps("ok"), flush=True)
    except Exception:
        print(json.dumps(traceback.format_exc()), flush=True)
"""
"""Imports first and says so, then upgrades at each word to go, so that the upgrades of every
child start together; answers "ok" or the traceback, as a JSON line."""


pytestmark = pytest.mark.parametrize(
    "empty_url",
    [
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ],
    indirect=True,
)
"""Each backend once: the mariadb:// scheme changes nothing that eight processes would."""


@contextlib.contextmanager
def children(url: URL) -> Iterator[Callable[[], list[str]]]:
    """:data:`PROCESSES` processes ready to upgrade ``url``; the function given releases them
    together and returns each one's answer."""
    started = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, url.render_as_string(hide_password=False)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(PROCESSES)
    ]

    def answer(child: subprocess.Popen[str]) -> str:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line, f"child {child.pid} ended with status {child.wait(HANG_GUARD)}"
        return str(json.loads(line))

    def upgrade_at_once() -> list[str]:
        for child in started:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        return [answer(child) for child in started]

    try:
        for child in started:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready"
        yield upgrade_at_once
    finally:
        for child in started:
            child.kill()
            child.wait()


async def at_head(url: URL) -> bool:
    """Whether the database is at head, and a store works on it."""
    async with SqlStore.from_url(url) as store:
        async with store.engine.connect() as connection:
            status = await schema_status(connection)
        await store.save("bot1/state", {"ok": True})
        stored = await store.load("bot1/state")
    return status.current == head_revision() and stored == {"ok": True}


async def test_processes_upgrading_at_once_all_end_at_head(empty_url: URL) -> None:
    with children(empty_url) as upgrade_at_once:
        assert upgrade_at_once() == ["ok"] * PROCESSES  # a fresh database
        assert await at_head(empty_url)
        await downgrade(empty_url, "base")
        assert upgrade_at_once() == ["ok"] * PROCESSES  # an old one
        assert await at_head(empty_url)


async def test_a_migration_leaves_no_lock_behind_on_the_engine_it_was_given(
    empty_url: URL,
) -> None:
    """MariaDB's lock belongs to the session: a pooled connection that kept it would hold up
    every other process's migration until it timed out."""
    kept = create_engine(empty_url)
    try:
        await upgrade(kept)
        async with kept.connect():  # the pooled connection the migration used, still open
            await downgrade(empty_url, "base", wait=2)
            await upgrade(empty_url, wait=2)
    finally:
        await kept.dispose()
    assert await at_head(empty_url)
