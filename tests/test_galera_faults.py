"""Faults of a three-node Galera cluster under the store: a node killed (SIGKILL), isolated from
the others (``gmcast.isolate``), restarted; stores on a multi-host URL
(``mysql://root@h1:p1,h2:p2,h3:p3/db``) move to the next synced node, and the history checker
holds writers and readers over the three nodes to the store's register.

One cluster for the module (:mod:`tests.galera`); ``make galera`` runs it. The figures printed
(how long writers saw no acknowledgement, acknowledged saves lost, the checker's counts) are the
ones in docs/replication.md.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
import time
from collections import Counter
from random import Random
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import text

from rustrade_store import SqlStore, StorageError

from .galera import running_cluster
from .history import ACKNOWLEDGED, FAILED, TIMED_OUT, check, clients
from .test_failover import NotedHistory, lost_saves, read_all

if TYPE_CHECKING:
    from collections.abc import Iterator

    from .galera import GaleraCluster, Node
    from .history import History

pytestmark = [pytest.mark.mariadb, pytest.mark.galera]

TIMEOUT = 10.0
"""Each call's deadline: a lost node's calls are retried on the next node until then."""
WRITERS = 8
READERS = 4
OPERATIONS = int(os.environ.get("RUSTRADE_GALERA_OPS", "5000"))
"""Store calls the checked history holds at least, across every fault."""
HANG_GUARD = 60.0


def load() -> dict[str, Any]:
    """The clients' arguments: a key prefix of the test's own (one cluster serves the module)."""
    return {"prefix": f"galera/{secrets.token_hex(4)}", "writers": WRITERS, "readers": READERS}


@pytest.fixture(scope="module")
def cluster() -> Iterator[GaleraCluster]:
    yield from running_cluster()


async def served_by(store: SqlStore) -> int:
    """The port of the node the store's next connection is on."""
    async with store.engine.connect() as connection:
        port: int = (await connection.execute(text("SELECT @@port"))).scalar_one()
    return port


def rotated(cluster: GaleraCluster, first: int) -> str:
    """The multi-host URL listing every node, node ``first`` first."""
    nodes = cluster.nodes[first:] + cluster.nodes[:first]
    return cluster.multi_host_url(*nodes)


async def recover(cluster: GaleraCluster, node: Node) -> float:
    """Restart a killed node from its recovered position; seconds until all are synced."""
    began = time.monotonic()
    await asyncio.to_thread(node.restart)
    await asyncio.to_thread(cluster.wait_synced)
    return time.monotonic() - began


async def test_a_multi_host_url_moves_to_the_next_node_when_its_node_is_killed(
    cluster: GaleraCluster,
) -> None:
    first, second = cluster.nodes[:2]
    async with SqlStore.from_url(cluster.multi_host_url(), timeout=TIMEOUT) as store:
        await store.save("moves/key", 1)
        assert await served_by(store) == first.port
        await asyncio.to_thread(first.kill)
        killed = time.monotonic()
        await store.save("moves/key", 2)
        took = time.monotonic() - killed
        assert await served_by(store) == second.port
        assert await store.load("moves/key") == 2
    rejoined = await recover(cluster, first)
    print(
        f"\nnode 1 killed: the next save returned through node 2 after {took:.2f} s; node 1 "
        f"restarted and synced in {rejoined:.1f} s"
    )


async def test_an_isolated_node_is_passed_over_and_counts_as_lost(cluster: GaleraCluster) -> None:
    """Cut off from the others, node 1 still answers but is outside the primary component:
    the store on the multi-host URL (``mariadb://`` here) moves to node 2; one on node 1 alone
    fails its call as a lost connection (retried until its deadline), never serving from the
    isolated node."""
    first = cluster.nodes[0]
    multi = SqlStore.from_url(cluster.multi_host_url(scheme="mariadb"), timeout=TIMEOUT)
    pinned = SqlStore.from_url(cluster.url(first), timeout=2.0)
    try:
        await multi.save("isolated/key", 1)
        assert await pinned.load("isolated/key") == 1
        assert await served_by(multi) == first.port
        await asyncio.to_thread(first.isolate, True)
        try:
            await asyncio.to_thread(first.wait_outside_primary)
            # A write of several rows first switches its pooled connection's isolation level,
            # whose COMMIT gets 1047 from the isolated node, unwrapped by SQLAlchemy.
            await multi.save_many({"isolated/key": 2, "isolated/other": 2})
            assert await served_by(multi) != first.port
            assert await multi.load("isolated/key") == 2
            with pytest.raises(StorageError, match="WSREP"):
                await pinned.load("isolated/key")
        finally:
            await asyncio.to_thread(first.isolate, False)
            await asyncio.to_thread(cluster.wait_synced)
        assert await pinned.load("isolated/key") == 2
    finally:
        await multi.aclose()
        await pinned.aclose()


def silence_after(history: History, fault: float) -> float:
    """The longest time, from ``fault`` on, in which no save was acknowledged: how long the
    writers waited for the cluster to go on without the node."""
    ends = sorted(w.end for w in history.writes if w.acknowledged and w.end > fault)
    marks = [fault, *ends]
    return max(later - earlier for earlier, later in itertools.pairwise(marks))


async def test_a_node_killed_under_eight_writers_loses_no_acknowledged_save(
    cluster: GaleraCluster,
) -> None:
    """Eight writers and four readers on one store through the multi-host URL, node 1 (the
    one it uses) killed after 2 s: calls in flight are retried on node 2 and return; every
    acknowledged save is there afterwards (a commit is certified cluster-wide before it is
    acknowledged), and the checker finds no anomaly."""
    first = cluster.nodes[0]
    history = NotedHistory(guard=HANG_GUARD)
    stop = asyncio.Event()
    async with SqlStore.from_url(cluster.multi_host_url(), timeout=TIMEOUT) as store:
        running = asyncio.ensure_future(clients([store], history, stop, Random(7), **load()))
        try:
            await asyncio.sleep(2.0)
            killed = time.monotonic()
            await asyncio.to_thread(first.kill)
            while not any(w.acknowledged and w.end > killed for w in history.writes):
                assert not running.done(), "the clients stopped"
                assert time.monotonic() - killed < TIMEOUT + HANG_GUARD, "no save after the kill"
                await asyncio.sleep(0.05)
            await asyncio.sleep(2.0)
        finally:
            stop.set()
            await running
    keys = sorted({w.key for w in history.writes})
    finals = await read_all(cluster.url(cluster.nodes[1]), keys)
    lost = lost_saves(history, finals)
    anomalies = check(history.writes, [*history.reads, *finals.values()])
    silence = silence_after(history, killed)
    outcomes = history.outcomes()
    rejoined = await recover(cluster, first)
    print(
        f"\nnode killed under {WRITERS} writers: {history.calls} calls, outcomes "
        f"{dict(outcomes)}; no save acknowledged for {silence:.2f} s after the kill; "
        f"acknowledged saves lost: {len(lost)}; anomalies: {len(anomalies)}; the node "
        f"restarted and synced in {rejoined:.1f} s"
    )
    assert not lost, f"{len(lost)} acknowledged saves lost, the first: {lost[0]}"
    assert not anomalies, "\n".join(str(anomaly) for anomaly in anomalies[:20])
    assert not outcomes["hung"], f"{outcomes['hung']} calls hung"
    failed = outcomes[FAILED] + outcomes[TIMED_OUT]
    assert not failed, "calls failed:\n" + "\n".join(dict.fromkeys(history.errors))


async def test_the_history_through_every_fault_has_no_anomaly(cluster: GaleraCluster) -> None:
    """Writers and readers over three stores, each listing every node with a different one
    first, through a node killed and restarted (by IST, from its recovered position), then a
    node isolated and let back, until the history holds ``OPERATIONS`` calls: every key
    behaved as one register (:func:`tests.history.check`)."""
    seed = secrets.randbelow(2**32)
    history = NotedHistory(guard=HANG_GUARD)
    stop = asyncio.Event()
    stores = [SqlStore.from_url(rotated(cluster, n), timeout=TIMEOUT) for n in range(3)]
    faults: list[str] = []
    try:
        running = asyncio.ensure_future(clients(stores, history, stop, Random(seed), **load()))
        try:
            await asyncio.sleep(2.0)
            victim, cut_off = cluster.nodes[2], cluster.nodes[1]
            await asyncio.to_thread(victim.kill)
            faults.append(f"node 3 killed at {history.calls} calls")
            await asyncio.sleep(2.0)
            took = await recover(cluster, victim)
            faults.append(f"node 3 restarted, synced in {took:.1f} s, at {history.calls} calls")
            await asyncio.to_thread(cut_off.isolate, True)
            faults.append(f"node 2 isolated at {history.calls} calls")
            await asyncio.sleep(3.0)
            await asyncio.to_thread(cut_off.isolate, False)
            await asyncio.to_thread(cluster.wait_synced)
            faults.append(f"node 2 back and synced at {history.calls} calls")
            while history.calls < OPERATIONS:
                assert not running.done(), "the clients stopped"
                await asyncio.sleep(0.2)
        finally:
            stop.set()
            await running
    finally:
        for store in stores:
            await store.aclose()
    keys = sorted({w.key for w in history.writes})
    finals = await read_all(cluster.url(cluster.nodes[0]), keys)
    anomalies = check(history.writes, [*history.reads, *finals.values()])
    lost = lost_saves(history, finals)
    outcomes = history.outcomes()
    print(
        f"\nhistory through every fault (seed {seed}): {history.calls} calls, "
        f"{len(history.writes)} key writes, {len(history.reads)} reads, outcomes "
        f"{dict(outcomes)}; {'; '.join(faults)}; acknowledged saves lost: {len(lost)}; "
        f"anomalies: {len(anomalies)} {dict(Counter(a.rule for a in anomalies))}"
    )
    for error in dict.fromkeys(history.errors):
        print(f"  failed: {error}")
    assert history.calls >= OPERATIONS
    assert not anomalies, "\n".join(str(anomaly) for anomaly in anomalies[:20])
    assert not lost, f"{len(lost)} acknowledged saves lost"
    assert not outcomes["hung"], f"{outcomes['hung']} calls hung"
    assert outcomes[ACKNOWLEDGED] > 0
