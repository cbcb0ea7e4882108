"""Galera clusters (MariaDB): whether a server is a node, in which state, what ``doctor`` says
about it, and the refusal of leases on a cluster of several nodes.

Leases are refused there because a fenced write through one node can commit after a take-over
through another: the write reads the lease row before the take-over's write set is applied on
its node, and is certified after it. Galera certifies the rows a transaction writes, not the
lease row it only share-locks, so the write passes, and the node replays it without checking the
fence again (``tests/test_galera.py::test_a_fenced_write_can_commit_after_a_takeover_through_
another_node``). ``wsrep_sync_wait`` closes only the case of a take-over acknowledged before the
write began.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import _statements
from ._backends.mariadb import GALERA_SYNC_WAIT
from ._errors import LeaseError
from ._urls import listed_hosts

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Sequence

    from sqlalchemy import URL
    from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = [
    "LEASE_RULE",
    "GaleraNode",
    "first_synced_node",
    "galera_node",
    "galera_report",
    "is_mariadb",
    "read_node",
    "refuse_lease",
]

SYNCED = 4
"""``wsrep_local_state`` of a node in sync with its cluster (1-3: joining, donor, joined)."""

LEASE_RULE = (
    "leases are refused on a Galera cluster of more than one node: a fenced write through one "
    "node can commit after a take-over through another (Galera certifies the rows a write "
    "changes, not the lease row it reads, and replays such a write without checking the lease "
    "again); keep every writer of a prefix on one node, without a lease, or run the bots that "
    "need one on a single server or PostgreSQL"
)


@dataclass(frozen=True, slots=True)
class GaleraNode:
    """A Galera node as one connection sees it."""

    cluster_size: int
    state: str
    """``wsrep_local_state_comment``: Synced, Donor/Desynced, Joining, Joined, Initialized."""
    local_state: int
    primary: bool
    """The node is in the primary component (``wsrep_cluster_status`` Primary)."""
    ready: bool
    """``wsrep_ready``: the node accepts queries."""
    sync_wait: int
    """This session's ``wsrep_sync_wait``."""
    isolation: str

    @property
    def synced(self) -> bool:
        """The node serves reads and writes in step with the cluster: ready, in the primary
        component, and synced. A node that answers but is not is counted as lost."""
        return self.ready and self.primary and self.local_state == SYNCED


def galera_node(rows: Iterable[Sequence[object]]) -> GaleraNode | None:
    """The node that ``(name, value)`` rows of :func:`~rustrade_store._statements.galera_status`
    describe, or None if the server is not a Galera node (``wsrep_on`` off or absent)."""
    found = {str(name).lower(): str(value) for name, value in rows}
    if found.get("wsrep_on", "OFF").upper() != "ON":
        return None

    def number(name: str) -> int:
        value = found.get(name, "")
        return int(value) if value.lstrip("-").isdigit() else 0

    return GaleraNode(
        cluster_size=number("wsrep_cluster_size"),
        state=found.get("wsrep_local_state_comment", "unknown"),
        local_state=number("wsrep_local_state"),
        primary=found.get("wsrep_cluster_status") == "Primary",
        ready=found.get("wsrep_ready", "OFF").upper() == "ON",
        sync_wait=number("wsrep_sync_wait"),
        isolation=found.get("tx_isolation", "unknown"),
    )


def galera_report(node: GaleraNode) -> tuple[list[tuple[str, str]], list[str]]:
    """``doctor``'s lines about a Galera node, and its warnings."""
    component = "primary component" if node.primary else "NOT in the primary component"
    lines = [
        ("galera", f"{node.cluster_size} node(s); this node {node.state}, {component}"),
        ("wsrep_sync_wait", str(node.sync_wait)),
        ("isolation", node.isolation),
        ("leases", "refused (several nodes)" if node.cluster_size > 1 else "allowed (one node)"),
    ]
    warnings = []
    if not node.synced:
        warnings.append(
            f"this node is {node.state}"
            + ("" if node.primary else ", outside the primary component")
            + ("" if node.ready else ", not ready")
            + ": it serves no consistent reads or writes, and the store counts it as lost; "
            "list the other nodes in the URL (mysql://user@h1:3306,h2:3306,h3:3306/db)"
        )
    if node.sync_wait & GALERA_SYNC_WAIT != GALERA_SYNC_WAIT:
        warnings.append(
            f"wsrep_sync_wait is {node.sync_wait} in the store's session, not "
            f"{GALERA_SYNC_WAIT}: a load through this node can miss a save acknowledged through "
            "another; leave the store's session settings (init_command) as they are"
        )
    if node.cluster_size > 1:
        warnings.append(LEASE_RULE)
    return lines, warnings


def is_mariadb(connection: AsyncConnection) -> bool:
    """Whether ``connection`` is to MariaDB (whose status tables :func:`read_node` reads)."""
    return bool(getattr(connection.dialect, "is_mariadb", False))


async def read_node(connection: AsyncConnection) -> GaleraNode | None:
    """The Galera node ``connection`` is on, or None (MariaDB only)."""
    return galera_node((await connection.execute(_statements.galera_status())).all())


async def refuse_lease(connection: AsyncConnection, prefix: str, where: str) -> None:
    """Raise :class:`~rustrade_store.LeaseError` naming :data:`LEASE_RULE` if ``connection``
    is on a Galera cluster of more than one node."""
    node = await read_node(connection)
    if node is not None and node.cluster_size > 1:
        raise LeaseError(
            f"lease on {prefix!r} refused on {where}, a Galera node of a cluster of "
            f"{node.cluster_size}: {LEASE_RULE}"
        )


def first_synced_node(
    url: URL, connect_args: dict[str, Any], timeout: float
) -> Callable[[], Awaitable[Any]]:
    """SQLAlchemy's ``async_creator`` for a MySQL or MariaDB URL listing several hosts
    (``?host=h1:3306&host=h2:3306``): a connection to the first host, in order, that answers
    and, if it is a Galera node, is synced (:attr:`GaleraNode.synced`); others count as lost.

    Each host gets its share of ``timeout``. The driver's arguments are the dialect's own for
    that host (as SQLAlchemy would connect), with ``connect_args`` over them: SQLAlchemy
    passes none to a creator, so every session setting travels here. With no host left, the
    error is the driver's "can't connect" (2003), which the store retries as a lost connection.
    """
    dialect = url.get_dialect()()
    base = url.difference_update_query(["host"])
    nodes = [base.set(host=host.name, port=host.port) for host in listed_hosts(url)]
    status = str(
        _statements.galera_status().compile(dialect=dialect, compile_kwargs={"literal_binds": True})
    )
    share = timeout / max(1, len(nodes))

    async def connect() -> Any:
        import asyncmy
        from asyncmy.errors import Error, OperationalError

        passed = []
        for node in nodes:
            params: dict[str, Any] = {**dialect.create_connect_args(node)[1], **connect_args}
            try:
                async with asyncio.timeout(share):
                    connection = await asyncmy.connect(**params)
                    try:
                        async with connection.cursor() as cursor:
                            await cursor.execute(status)
                            found = galera_node(await cursor.fetchall())
                    except BaseException:
                        connection.close()
                        raise
            except (OSError, TimeoutError, Error) as exc:
                passed.append(f"{node.host}:{node.port} ({exc or type(exc).__name__})")
                continue
            if found is None or found.synced:
                return connection
            connection.close()
            passed.append(f"{node.host}:{node.port} ({found.state}, not synced)")
        raise OperationalError(2003, f"no host answered synced: {'; '.join(passed)}")

    return connect
