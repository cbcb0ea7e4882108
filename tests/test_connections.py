"""Dropped connections and an unreachable server, against the real PostgreSQL server.

The server is never stopped (other runs share it): connections are killed with
``pg_terminate_backend``, and the server is made unreachable through a TCP proxy the test owns.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import event, text

from rustrade_store import SqlStore, StorageError, upgrade

from .helpers import asyncpg_connection
from .proxy import TcpProxy

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from sqlalchemy import URL

pytestmark = pytest.mark.postgres

HANG_GUARD = 120.0
"""Seconds after which a call counts as hung: far above any timeout used here, so a slow,
shared machine cannot fail the test, while a call that would wait forever still does."""


class Invalidations:
    """Connections the pool threw away as dead, by the pool's own ``invalidate`` event."""

    def __init__(self, store: SqlStore) -> None:
        self.count = 0
        self.seen = asyncio.Event()
        event.listen(store.engine.sync_engine.pool, "invalidate", self._seen)

    def _seen(self, *_: Any) -> None:
        self.count += 1
        self.seen.set()


async def terminate(admin_url: URL, application_name: str) -> int:
    """Terminate every server connection of ``application_name``; wait until those are gone.

    The wait is for the terminated backends only: the store may already have opened new
    connections under the same name."""
    admin = await asyncpg_connection(admin_url)
    try:
        pids = await admin.fetchval(
            "SELECT array_agg(pid) FROM pg_stat_activity WHERE application_name = $1",
            application_name,
        )
        killed: list[int] = (
            await admin.fetchval(
                "SELECT array_agg(pid) FROM unnest($1::int[]) AS pid "
                "WHERE pg_terminate_backend(pid)",
                pids or [],
            )
            or []
        )
        for _ in range(500):
            left = await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[])", killed
            )
            if left == 0:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError(f"backends {killed} still running 5 s after termination")
        return len(killed)
    finally:
        await admin.close()


@pytest.fixture
async def named_store(postgres_url: URL) -> AsyncIterator[tuple[SqlStore, str]]:
    """A store whose server connections carry their own application_name."""
    name = f"rustrade_faults_{secrets.token_hex(4)}"
    store = SqlStore.from_url(
        postgres_url, connect_args={"server_settings": {"application_name": name}}
    )
    try:
        yield store, name
    finally:
        assert store.engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        await store.aclose()


async def test_terminated_connections_are_replaced_without_recreating_the_store(
    named_store: tuple[SqlStore, str], postgres_admin_url: URL
) -> None:
    store, name = named_store
    invalidations = Invalidations(store)
    keys = [f"term/{index}" for index in range(8)]
    await asyncio.gather(*(store.save(key, index) for index, key in enumerate(keys)))
    async with contextlib.AsyncExitStack() as held:  # concurrent saves share one connection
        for _ in range(3):
            connection = await held.enter_async_context(store.engine.connect())
            await connection.execute(text("SELECT 1"))
    pooled = store.engine.sync_engine.pool.checkedin()  # type: ignore[attr-defined]
    assert pooled >= 2, "the pool should hold several live connections"
    assert await terminate(postgres_admin_url, name) >= pooled

    assert await store.load(keys[0]) == 0  # a dead connection, found dead, retried on a new one
    await store.save(keys[1], "after")
    assert await store.load(keys[1]) == "after"
    assert invalidations.count >= 1, "the dead connection was never noticed"

    # Again, with many calls at once on the pool's dead connections.
    assert await terminate(postgres_admin_url, name) >= 1
    loaded = await asyncio.gather(*(store.load(key) for key in keys))
    assert loaded == [0, "after", *range(2, 8)]
    await asyncio.gather(*(store.save(key, -index) for index, key in enumerate(keys)))
    assert list((await store.load_many(keys)).values()) == [-index for index in range(8)]


async def test_connections_killed_while_saving_lose_no_acknowledged_save(
    named_store: tuple[SqlStore, str], postgres_admin_url: URL
) -> None:
    """Saves racing one ``pg_terminate_backend`` of every connection: each save returns (after
    its one retry) and stays. (Kills repeated faster than a retry can finish can make a save
    fail with StorageError: the rule is one retry, not a loop.)"""
    store, name = named_store
    acknowledged: dict[str, int] = {}
    saves = 0
    saves_after_kill = 0
    halfway = asyncio.Event()
    killed = False

    async def writer(worker: int) -> None:
        """Save until the kill has landed and ten more of this writer's saves went through."""
        nonlocal saves, saves_after_kill
        step = mine_after_kill = 0
        while mine_after_kill < 10:
            assert step < 100_000, "the kill never landed"
            key = f"race/{worker}/{step % 5}"
            await store.save(key, step)
            acknowledged[key] = step
            saves += 1
            step += 1
            if killed:
                mine_after_kill += 1
                saves_after_kill += 1
            if saves == 40:
                halfway.set()

    async def killer() -> None:
        nonlocal killed
        await halfway.wait()  # the writers keep saving while the connections are killed
        assert await terminate(postgres_admin_url, name) >= 1
        killed = True

    await asyncio.gather(*(writer(worker) for worker in range(4)), killer())
    assert saves_after_kill == 40, "the writers stopped before the kill landed"
    assert await store.load_many(acknowledged) == acknowledged


async def _call(store: SqlStore, action: str) -> float:
    """Run ``action`` expecting StorageError; return how long it took to be refused."""
    started = time.monotonic()
    call = store.load("reach/k") if action == "load" else store.save("reach/k", "lost")
    with pytest.raises(StorageError) as caught:
        await asyncio.wait_for(call, HANG_GUARD)
    assert f"{action} 'reach/k'" in str(caught.value)
    return time.monotonic() - started


@pytest.mark.parametrize("fault", ["hangs", "refuses"])
async def test_unreachable_server_raises_storage_error_then_recovers(
    postgres_url: URL, fault: str
) -> None:
    """A server that stops answering (frozen proxy) or refuses connections (closed port):
    ``StorageError`` after the timeout, never a hang; once it is back the same store works."""
    upstream_port = postgres_url.port or 5432
    async with TcpProxy(postgres_url.host or "127.0.0.1", upstream_port) as proxy:
        store = SqlStore.from_url(postgres_url.set(port=proxy.port), timeout=0.5)
        try:
            await store.save("reach/k", "before")
            if fault == "hangs":
                proxy.freeze()
            else:
                await proxy.cut()
            waits = [await _call(store, "load"), await _call(store, "save")]
            print(f"{fault}: refused after {', '.join(f'{wait:.2f}' for wait in waits)} s")
            await proxy.restore()
            assert await store.load("reach/k") == "before"
            await store.save("reach/k", "after")
            assert await store.load("reach/k") == "after"
            assert store.engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        finally:
            await store.aclose()


async def test_timeout_error_message_says_it_timed_out(postgres_url: URL) -> None:
    async with TcpProxy(postgres_url.host or "127.0.0.1", postgres_url.port or 5432) as proxy:
        store = SqlStore.from_url(postgres_url.set(port=proxy.port), timeout=0.3)
        try:
            proxy.freeze()
            with pytest.raises(StorageError, match="timed out"):
                await asyncio.wait_for(store.load("k"), HANG_GUARD)
        finally:
            await proxy.restore()
            await store.aclose()


async def test_a_delete_on_a_dead_connection_is_retried_and_tells_the_truth(
    named_store: tuple[SqlStore, str], postgres_admin_url: URL
) -> None:
    """A delete whose connection died before it was sent is retried on a new one, and reports
    what it did: it removed the row."""
    store, name = named_store
    await store.save("gone/k", 1)
    assert await terminate(postgres_admin_url, name) >= 1
    assert await store.delete("gone/k") is True
    assert await store.load("gone/k") is None
    assert await store.delete("gone/k") is False


async def test_a_server_that_takes_no_writes_counts_as_a_lost_connection(
    fresh_postgres: URL, postgres_admin_url: URL
) -> None:
    """A failover can leave the pool on a standby ("read-only transaction"): the store drops
    those connections and retries until its deadline, so a save waiting for the new primary
    (here: the database made writable again) lands."""
    await upgrade(fresh_postgres)
    database = fresh_postgres.database
    admin = await asyncpg_connection(postgres_admin_url)
    store = SqlStore.from_url(fresh_postgres, timeout=HANG_GUARD)
    invalidations = Invalidations(store)
    try:
        await admin.execute(f'ALTER DATABASE "{database}" SET default_transaction_read_only = on')
        saving = asyncio.create_task(store.save("k", "after the failover"))
        seen = asyncio.create_task(invalidations.seen.wait())
        await asyncio.wait([saving, seen], return_when=asyncio.FIRST_COMPLETED)
        assert not saving.done(), saving
        await admin.execute(f'ALTER DATABASE "{database}" SET default_transaction_read_only = off')
        await saving
        assert await store.load("k") == "after the failover"
    finally:
        await admin.close()
        await store.aclose()


DEADLINE_SLACK = 1.5
"""How long a call may take, in timeouts: the worst overrun under a frozen link is a quarter of
the timeout, on PostgreSQL (docs/guarantees.md); the rest is room for a busy machine. Before one
deadline covered a call, the first call on a pooled PostgreSQL connection waited a second
timeout for the connection's clean-up."""


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ],
)
@pytest.mark.parametrize("operation", ["save", "load"])
async def test_a_call_through_a_frozen_link_ends_at_its_deadline(
    store_url: URL, backend: str, operation: str
) -> None:
    """The link freezes under a pooled connection: the call raises at its one deadline, not
    after a second wait for the connection's clean-up."""
    timeout = 2.0
    async with TcpProxy(store_url.host or "127.0.0.1", store_url.port or 0) as proxy:
        store = SqlStore.from_url(store_url.set(port=proxy.port), timeout=timeout)
        try:
            await store.save("deadline/k", 1)
            call = store.save("deadline/k", 2) if operation == "save" else store.load("deadline/k")
            proxy.freeze()
            started = time.monotonic()
            with pytest.raises(StorageError, match="timed out"):
                await asyncio.wait_for(call, HANG_GUARD)
            elapsed = time.monotonic() - started
            print(f"\n{backend} {operation}: raised {elapsed - timeout:+.3f} s from its deadline")
            assert elapsed < DEADLINE_SLACK * timeout
        finally:
            await proxy.restore()
            await store.aclose()
