"""The store's MariaDB sessions outside a cluster: the Galera session setting is accepted by a
plain server, a Galera node is read from its status rows (and doctor's report of it is a function
of them), and a pooled connection found dead when a write of several rows starts its transaction
is retried as a lost connection."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import text

from rustrade_store import SqlStore
from rustrade_store._backends.mariadb import GALERA_SYNC_WAIT, MYSQL_SQL_MODE
from rustrade_store._galera import LEASE_RULE, galera_node, galera_report

from .commandline import cli, ok
from .proxy import TcpProxy

if TYPE_CHECKING:
    from pathlib import Path

    from sqlalchemy import URL

SYNCED_NODE = [
    ("WSREP_ON", "ON"),
    ("WSREP_CLUSTER_SIZE", "3"),
    ("WSREP_CLUSTER_STATUS", "Primary"),
    ("WSREP_LOCAL_STATE", "4"),
    ("WSREP_LOCAL_STATE_COMMENT", "Synced"),
    ("WSREP_READY", "ON"),
    ("WSREP_SYNC_WAIT", "7"),
    ("TX_ISOLATION", "READ-COMMITTED"),
]


def rows(**changed: str) -> list[tuple[str, str]]:
    return [(name, changed.get(name.lower(), value)) for name, value in SYNCED_NODE]


def test_a_server_without_wsrep_is_no_galera_node() -> None:
    plain = [("WSREP_ON", "OFF"), ("WSREP_CLUSTER_SIZE", "0"), ("WSREP_SYNC_WAIT", "7")]
    assert galera_node(plain) is None
    assert galera_node([]) is None


def test_a_synced_node_of_three_is_reported_with_the_lease_rule() -> None:
    node = galera_node(rows())
    assert node is not None
    assert (node.cluster_size, node.state, node.synced) == (3, "Synced", True)
    lines, warnings = galera_report(node)
    shown = dict(lines)
    assert shown["galera"] == "3 node(s); this node Synced, primary component"
    assert shown["wsrep_sync_wait"] == "7"
    assert shown["isolation"] == "READ-COMMITTED"
    assert shown["leases"] == "refused (several nodes)"
    assert warnings == [LEASE_RULE]


@pytest.mark.parametrize(
    ("changed", "words"),
    [
        ({"wsrep_local_state": "2", "wsrep_local_state_comment": "Donor/Desynced"}, "Donor"),
        ({"wsrep_cluster_status": "non-Primary"}, "outside the primary component"),
        ({"wsrep_ready": "OFF"}, "not ready"),
    ],
)
def test_a_node_that_is_not_synced_is_warned_of(changed: dict[str, str], words: str) -> None:
    node = galera_node(rows(**changed))
    assert node is not None
    assert not node.synced
    _, warnings = galera_report(node)
    assert words in warnings[0]
    assert "the store counts it as lost" in warnings[0]


def test_a_session_without_sync_wait_is_warned_of_and_one_node_allows_leases() -> None:
    node = galera_node(rows(wsrep_sync_wait="0", wsrep_cluster_size="1"))
    assert node is not None
    lines, warnings = galera_report(node)
    assert dict(lines)["leases"] == "allowed (one node)"
    assert len(warnings) == 1
    assert "wsrep_sync_wait is 0" in warnings[0]


@pytest.mark.mariadb
async def test_a_plain_server_takes_the_galera_session_setting(mariadb_url: URL) -> None:
    async with SqlStore.from_url(mariadb_url) as store:
        async with store.engine.connect() as connection:
            found = await connection.execute(text("SELECT @@wsrep_sync_wait, @@wsrep_on"))
            assert tuple(found.one()) == (GALERA_SYNC_WAIT, 0)
        lease = await store.lease("sessions/", ttl=5).acquire()
        await store.save("sessions/k", 1)
        await lease.release()


@pytest.mark.mariadb
async def test_a_dead_pooled_connection_at_the_start_of_a_transaction_is_retried(
    mariadb_url: URL,
) -> None:
    """``save_many`` switches its pooled connection's isolation level before BEGIN; on a
    connection whose server went away, the driver's error reached the store unwrapped by
    SQLAlchemy ("Lost connection", 2013) and failed the call at once, with nothing sent."""
    async with TcpProxy(mariadb_url.host or "127.0.0.1", mariadb_url.port or 3306) as proxy:
        store = SqlStore.from_url(mariadb_url.set(port=proxy.port), timeout=5)
        try:
            await store.save_many({"sessions/a": 1, "sessions/b": 1})
            links = proxy.links
            proxy.reset()
            for link in links:
                await link.wait_closed()
            await store.save_many({"sessions/a": 2, "sessions/b": 2})
            assert await store.load_many(["sessions/a", "sessions/b"]) == {
                "sessions/a": 2,
                "sessions/b": 2,
            }
        finally:
            await store.aclose()


@pytest.mark.mariadb
def test_doctor_on_a_plain_server_says_nothing_of_galera(mariadb_url: URL, tmp_path: Path) -> None:
    report = json.loads(ok(cli("doctor", "--json", url=mariadb_url, cwd=tmp_path)).out)
    assert report["galera"] is None
    assert report["warnings"] == []


@pytest.mark.mariadb
async def test_a_multi_host_url_passes_every_session_setting_through_its_creator(
    mariadb_url: URL,
) -> None:
    """SQLAlchemy gives an ``async_creator`` no ``connect_args``: an ``init_command`` given
    there did not apply. The first host refuses; the session on the second has every
    setting of a single-host one."""
    served = f"{mariadb_url.host or '127.0.0.1'}:{mariadb_url.port or 3306}"
    url = f"mysql://{mariadb_url.username}@127.0.0.1:1,{served}/{mariadb_url.database}"
    settings = text(
        "SELECT @@time_zone, @@sql_mode, @@innodb_lock_wait_timeout, "
        "@@idle_transaction_timeout, @@wsrep_sync_wait, @@character_set_client"
    )
    async with SqlStore.from_url(url, timeout=4) as store:
        await store.save("sessions/multi", 1)
        assert await store.load("sessions/multi") == 1
        async with store.engine.connect() as connection:
            found = tuple((await connection.execute(settings)).one())
    assert found == ("+00:00", MYSQL_SQL_MODE, 4, 4, GALERA_SYNC_WAIT, "utf8mb4")
