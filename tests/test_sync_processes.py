"""``SyncStore`` in processes of its own: exit with the store open, fork, Ctrl-C in a call, and
the synchronous bot of ``examples/sync_bot.py`` holding its lease on PostgreSQL.

The tests wait on the lines the processes print (``Child`` of the lease process tests), never on
sleeps. The bot's run lasts ``RUSTRADE_SYNC_BOT_SECONDS`` (default 8 s) with a ttl of
``RUSTRADE_SYNC_BOT_TTL`` (default 2 s); the issue's 60 s with a ttl of 5 s is
``RUSTRADE_SYNC_BOT_SECONDS=60 RUSTRADE_SYNC_BOT_TTL=5``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from rustrade_store import SqlStore

from .helpers import asyncpg_connection
from .test_lease_processes import PATIENCE, Child
from .test_lease_processes import empty as cleared

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

    import asyncpg
    from sqlalchemy import URL

ROOT = Path(__file__).resolve().parents[1]
CHILD = Path(__file__).with_name("sync_child.py")
BOT = ROOT / "examples" / "sync_bot.py"
RUN_SECONDS = float(os.environ.get("RUSTRADE_SYNC_BOT_SECONDS", "8"))
RUN_TTL = float(os.environ.get("RUSTRADE_SYNC_BOT_TTL", "2"))
FROZEN_TTL = 1.0


def start(*args: str) -> Child:
    return Child(
        subprocess.Popen(
            [sys.executable, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    )


def finish(child: Child) -> tuple[int, str, str]:
    """Wait for ``child`` to exit: its status, the rest of its output, and its stderr."""
    out, err = child.process.communicate(timeout=PATIENCE)
    return child.process.returncode, out.decode(), err.decode()


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ]
)
def url(request: pytest.FixtureRequest) -> Iterator[URL]:
    """An emptied, migrated database of each backend."""
    found: URL = request.getfixturevalue(f"{request.param}_url")
    asyncio.run(cleared(found))
    yield found
    asyncio.run(cleared(found))


def rendered(url: URL) -> str:
    return url.render_as_string(hide_password=False)


async def test_exit_with_the_store_open_releases_its_lease_quietly(url: URL) -> None:
    """A script that ends with its store open exits at once with status 0 and nothing on
    stderr; the close at exit released its lease and kept its save."""
    child = start(str(CHILD), "exit-open", rendered(url))
    assert await child.answer() == "OPEN"
    status, _, err = finish(child)
    assert (status, err) == (0, "")
    async with SqlStore.from_url(url) as store:
        (lease,) = await store.leases()
        assert await store.load("bot1/k") == {"open": True}
    assert (lease.prefix, lease.live) == ("bot1/", False)


async def test_a_forked_child_is_refused_and_leaves_the_parent_store_alone(url: URL) -> None:
    """A call in a child forked after the store opened is refused naming both pids; a store of
    its own works; its normal exit neither hangs nor prints. The parent's store goes on with
    the same connections (none opened meanwhile) and still holds its lease."""
    child = start(str(CHILD), "fork", rendered(url))
    refused = await child.answer()
    assert refused.startswith("CHILD REFUSED "), refused
    assert f"process {child.pid}" in refused
    assert "open a new store in the child" in refused
    assert await child.answer() == "CHILD SAVED"
    assert await child.answer() == "PARENT 0 0 True"
    status, _, err = finish(child)
    assert (status, err) == (0, "")
    async with SqlStore.from_url(url) as store:
        assert await store.load_many(["bot1/k", "child/k"]) == {
            "bot1/k": {"by": "parent"},
            "child/k": {"by": "child"},
        }


async def waiting_on_a_lock(connection: asyncpg.Connection, database: str) -> bool:
    """Whether a session of ``database`` waits for a lock now."""
    count: int = await connection.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'",
        database,
    )
    return count > 0


async def until(check: Callable[[], Awaitable[bool]], wanted: bool) -> None:
    """Ask ``check`` every 50 ms until it answers ``wanted``; fail after PATIENCE seconds."""
    async with asyncio.timeout(PATIENCE):
        while await check() != wanted:  # noqa: ASYNC110 - the server is asked, not an event
            await asyncio.sleep(0.05)


@pytest.mark.postgres
async def test_ctrl_c_in_a_call_cancels_it_on_the_store_loop(postgres_url: URL) -> None:
    """SIGINT while a call waits on a locked table: the caller gets KeyboardInterrupt, and the
    statement stops waiting on the server while the lock is still held (it was cancelled, not
    timed out: the store's timeout is 600 s). The store then serves the next call."""
    await cleared(postgres_url)
    database = postgres_url.database
    assert database is not None
    locker = await asyncpg_connection(postgres_url)
    watcher = await asyncpg_connection(postgres_url)
    try:
        transaction = locker.transaction()
        await transaction.start()
        await locker.execute("LOCK TABLE snapshots IN ACCESS EXCLUSIVE MODE")
        child = start(str(CHILD), "interrupt", rendered(postgres_url))
        assert await child.answer() == "CALLING"
        await until(lambda: waiting_on_a_lock(watcher, database), True)
        child.process.send_signal(signal.SIGINT)
        assert await child.answer() == "INTERRUPTED"
        await until(lambda: waiting_on_a_lock(watcher, database), False)
        await transaction.rollback()
        child.send("go")
        assert await child.answer() == "SAVED"
        status, _, err = finish(child)
        assert (status, err) == (0, "")
    finally:
        await locker.close()
        await watcher.close()


# -- the synchronous bot -----------------------------------------------------------------------


def bot(url: URL, *args: str) -> Child:
    return start(str(BOT), "--db", rendered(url), *args)


@pytest.mark.postgres
async def test_the_sync_bot_holds_its_lease_through_a_long_run_and_refuses_a_copy(
    postgres_url: URL,
) -> None:
    """The bot trades for many ttls while its store's loop renews the lease: a second copy
    started meanwhile is refused naming it, and the first ends with the same token, its expiry
    moved on by the run's length, no save refused."""
    await cleared(postgres_url)
    first = bot(postgres_url, "--seconds", str(RUN_SECONDS), "--ttl", str(RUN_TTL))
    held = (await first.answer()).split()
    assert held[:1] == ["HELD"], held
    token = int(held[1])
    copy = bot(postgres_url, "--seconds", "1")
    refused = await copy.answer()
    assert refused.startswith("REFUSED "), refused
    assert f"pid {first.pid} " in refused, refused
    assert finish(copy)[0] == 3
    done = (await first.answer()).split()
    assert done[:1] == ["DONE"], done
    saves, end_token = int(done[1]), int(done[2])
    first_expiry, last_expiry = map(datetime.fromisoformat, done[3:5])
    assert saves > 0
    assert end_token == token
    assert last_expiry - first_expiry >= timedelta(seconds=RUN_SECONDS - RUN_TTL)
    assert not first.lost
    status, _, err = finish(first)
    assert (status, err) == (0, "")
    async with SqlStore.from_url(postgres_url) as store:
        (lease,) = await store.leases()
    assert (lease.token, lease.live) == (token, False)
    print(
        f"\nsync bot: {saves} saves in {RUN_SECONDS:g} s under a lease with ttl {RUN_TTL:g} s, "
        f"its expiry moved {(last_expiry - first_expiry).total_seconds():.1f} s; a second copy "
        "refused"
    )


@pytest.mark.postgres
async def test_a_frozen_sync_bot_hears_on_lost_once_it_resumes(postgres_url: URL) -> None:
    """SIGSTOP the bot past its ttl; a second copy waits, takes the lease and trades; SIGCONT
    the first: its ``on_lost`` runs and it stops (status 4), and the state is the second's."""
    await cleared(postgres_url)
    first = bot(postgres_url, "--seconds", "600", "--ttl", str(FROZEN_TTL))
    held = (await first.answer()).split()
    assert held[:1] == ["HELD"], held
    first.stop()
    second = bot(postgres_url, "--seconds", "1", "--ttl", "30", "--wait", str(PATIENCE))
    taken = (await second.answer()).split()
    assert taken[:3] == ["HELD", str(int(held[1]) + 1), str(second.pid)], taken
    assert (await second.answer()).startswith("DONE ")
    assert finish(second)[0] == 0
    first.resume()
    status, out, err = finish(first)
    lost = [line for line in out.splitlines() if line.startswith("ON_LOST ")]
    assert len(lost) == 1, out + err
    assert status == 4, out + err
    async with SqlStore.from_url(postgres_url) as store:
        state = await store.load("sync-bot/BTCUSDT")
    assert isinstance(state, dict)
    assert state["pid"] == second.pid
