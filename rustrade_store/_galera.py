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

from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import queries
from .engine import GALERA_SYNC_WAIT
from .errors import LeaseError

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = ["LEASE_RULE", "GaleraNode", "galera_node", "galera_report", "read_node", "refuse_lease"]

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
    """The node that ``(name, value)`` rows of :func:`~rustrade_store.queries.galera_status`
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


async def read_node(connection: AsyncConnection) -> GaleraNode | None:
    """The Galera node ``connection`` is on, or None (MariaDB only)."""
    return galera_node((await connection.execute(queries.galera_status())).all())


async def refuse_lease(connection: AsyncConnection, prefix: str, where: str) -> None:
    """Raise :class:`~rustrade_store.LeaseError` naming :data:`LEASE_RULE` if ``connection``
    is on a Galera cluster of more than one node."""
    node = await read_node(connection)
    if node is not None and node.cluster_size > 1:
        raise LeaseError(
            f"lease on {prefix!r} refused on {where}, a Galera node of a cluster of "
            f"{node.cluster_size}: {LEASE_RULE}"
        )
