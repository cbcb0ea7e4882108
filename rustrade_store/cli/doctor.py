"""``doctor``: connect and report the database, its schema, the settings that decide what an
acknowledged save survives, on PostgreSQL its replication, and on a Galera node its cluster.

Each check reads what it needs on the one connection and adds lines to :class:`Findings`;
what the rows mean is decided by pure functions of them (:func:`replication_report`), so that
another check (another kind of cluster) is one more function in :data:`CHECKS`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from .. import __version__, _statements
from .._engine import masked, read_settings
from .._errors import SchemaError, StorageError
from .._galera import galera_report, is_mariadb, read_node
from .._migrate import schema_status
from .exits import EXIT_OK
from .opening import database_url, hosts_of
from .reaching import connection
from .schema import count_snapshots, revision_line

if TYPE_CHECKING:
    import argparse
    from collections.abc import Awaitable, Callable, Sequence

    from sqlalchemy import URL, Connection
    from sqlalchemy.ext.asyncio import AsyncConnection

    from .output import Console

__all__ = ["CHECKS", "Findings", "Replication", "cmd_doctor", "replication_report"]


@dataclass(slots=True)
class Findings:
    """What ``doctor`` found: the JSON object, the labelled lines it prints, and the problem
    that makes it exit 3."""

    url: URL
    report: dict[str, Any]
    lines: list[tuple[str, str]]
    problem: StorageError | None = None
    replication: Replication | None = None
    """PostgreSQL's replication rows, read first, judged once the settings are known."""

    @classmethod
    def start(cls, url: URL) -> Findings:
        hosts = hosts_of(url)
        report: dict[str, Any] = {
            "url": masked(url),
            "hosts": hosts,
            "package": f"rustrade-store {__version__}",
            "dialect": url.get_backend_name(),
            "driver": url.get_driver_name(),
            "server_version": None,
            "connected_to": None,
            "schema": None,
            "settings": {},
            "replication": None,
            "galera": None,
            "snapshots": None,
            "warnings": [],
        }
        lines = [("url", report["url"])]
        if url.get_backend_name() != "sqlite":
            lines.append(("hosts", ", ".join(hosts) or "the driver's default (local socket)"))
        lines += [(label, report[label]) for label in ("package", "dialect", "driver")]
        return cls(url, report, lines)

    def write(self, console: Console, *, as_json: bool) -> None:
        if as_json:
            self.report["status"] = "ok" if self.problem is None else "error"
            self.report["problem"] = None if self.problem is None else str(self.problem)
            console.out.write(console.scrub(json.dumps(self.report, ensure_ascii=False)) + "\n")
            return
        lines = self.lines + [("warning", warning) for warning in self.report["warnings"]]
        width = max(len(label) for label, _ in lines) + 1
        for label, value in lines:
            console.out.write(console.scrub(f"{label + ':':<{width}} {value}") + "\n")
        if self.problem is None:
            console.out.write(f"{'status:':<{width}} ok\n")


async def _server(connected: AsyncConnection, found: Findings) -> None:
    info = connected.dialect.server_version_info or ()
    found.report["server_version"] = ".".join(str(part) for part in info) or None
    found.lines.append(("server version", found.report["server_version"] or "unknown"))
    if connected.dialect.name == "postgresql":
        found.replication = await connected.run_sync(read_replication)
        found.report["connected_to"] = found.replication.connected_to
        if len(found.report["hosts"]) > 1:
            found.lines.append(("connected to", found.replication.connected_to))


async def _schema(connected: AsyncConnection, found: Findings) -> None:
    status = await schema_status(connected, found.report["url"])
    found.report["schema"] = {
        "revision": status.current,
        "head": status.head,
        "state": status.state,
    }
    found.lines.append(("schema revision", revision_line(status)))
    if status.state != "current":
        found.problem = SchemaError(status.message)


async def _settings(connected: AsyncConnection, found: Findings) -> None:
    settings = await connected.run_sync(read_settings)
    found.report["settings"] = dict(settings)
    found.lines.extend(settings)


async def _replication(connected: AsyncConnection, found: Findings) -> None:
    rows = found.replication
    if rows is None:
        return
    found.report["settings"]["synchronous_standby_names"] = rows.standby_names
    found.lines.append(("synchronous_standby_names", rows.standby_names or "(empty)"))
    verdict = replication_report(
        rows,
        found.report["settings"].get("synchronous_commit", "on"),
        user=found.url.username or "CURRENT_USER",
    )
    found.lines.append(("standbys", verdict.standbys))
    found.report["replication"] = {
        "in_recovery": rows.in_recovery,
        "standbys": [
            {"application_name": name, "sync_state": state} for name, state in rows.standbys
        ],
        "synchronous_standby_attached": verdict.attached,
    }
    found.report["warnings"] = verdict.warnings


async def _galera(connected: AsyncConnection, found: Findings) -> None:
    node = await read_node(connected) if is_mariadb(connected) else None
    if node is None:
        return
    lines, warnings = galera_report(node)
    found.report["galera"] = asdict(node) | {"synced": node.synced}
    found.lines.extend(lines)
    found.report["warnings"] += warnings


async def _snapshots(connected: AsyncConnection, found: Findings) -> None:
    rows = await connected.run_sync(count_snapshots)
    found.report["snapshots"] = rows
    found.lines.append(("snapshots", "no table" if rows is None else f"{rows:,}"))


CHECKS: list[Callable[[AsyncConnection, Findings], Awaitable[None]]] = [
    _server,
    _schema,
    _settings,
    _replication,
    _galera,
    _snapshots,
]
"""What ``doctor`` reads, in the order it prints it."""


async def cmd_doctor(args: argparse.Namespace, console: Console) -> int:
    url = database_url(console, args.url)
    found = Findings.start(url)
    try:
        async with connection(url, args.timeout, "doctor") as connected:
            for check in CHECKS:
                await check(connected, found)
    except StorageError as exc:
        found.problem = exc
    found.write(console, as_json=args.json)
    if found.problem is not None:
        raise found.problem
    return EXIT_OK


# -- PostgreSQL replication ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Replication:
    """What a PostgreSQL server said of its replication (:func:`_statements.server_replication`
    and :func:`_statements.standbys`)."""

    standby_names: str
    in_recovery: bool
    standbys: Sequence[tuple[str | None, str | None]] = field(default_factory=list)
    """Each attached standby's application_name and sync_state (null: hidden from this role)."""
    connected_to: str = "the local socket"


def read_replication(connected: Connection) -> Replication:
    names, in_recovery, address, port = connected.execute(_statements.server_replication()).one()
    standbys = [(name, state) for name, state in connected.execute(_statements.standbys())]
    return Replication(
        str(names or ""),
        bool(in_recovery),
        standbys,
        f"{address}:{port}" if address else "the local socket",
    )


class Verdict(NamedTuple):
    """``doctor``'s verdict on replication: the standbys line, whether a synchronous standby
    is attached (``None``: unknown, their state is hidden from this role), the warnings."""

    standbys: str
    attached: bool | None
    warnings: list[str]


def replication_report(rows: Replication, synchronous_commit: str, *, user: str) -> Verdict:
    """Whether an acknowledged save survives a failover, from the rows read: the first warning
    says when a failover can lose them. A server with no standby, and none named, has no
    failover to fear (a managed provider's own standby shows up in neither)."""
    if rows.in_recovery:
        return Verdict(
            "this server is itself a standby (in recovery)",
            None,
            [
                "this server is a standby in recovery and takes no writes: list the primary, or "
                "add target_session_attrs=read-write to a multi-host URL"
            ],
        )
    found, attached = _standbys_line(rows.standbys, user)
    if not rows.standbys and not rows.standby_names.strip():  # a single server: no failover
        return Verdict(found, attached, _single_server_warnings(synchronous_commit))
    return Verdict(found, attached, _failover_warnings(rows, synchronous_commit, found, attached))


def _single_server_warnings(synchronous_commit: str) -> list[str]:
    """A server with no standby has no failover to lose saves to; only a crash can."""
    if synchronous_commit != "off":
        return []
    return [
        "synchronous_commit = off: commits are acknowledged before they reach the disk, so a "
        "crash of the server can lose acknowledged saves"
    ]


def _standbys_line(
    standbys: Sequence[tuple[str | None, str | None]], user: str
) -> tuple[str, bool | None]:
    hidden = [name or "?" for name, state in standbys if state is None]
    found = ", ".join(f"{name or '?'} ({state})" for name, state in standbys if state is not None)
    attached: bool | None = any(state in ("sync", "quorum") for _, state in standbys)
    if hidden:  # no pg_monitor: the rows are there, their states null
        found = (found + ", " if found else "") + (
            f"{', '.join(hidden)} (sync_state hidden from this role: "
            f"GRANT pg_monitor TO {user} shows it)"
        )
        attached = attached or None
    return found or "none attached", attached


def _failover_warnings(
    rows: Replication, synchronous_commit: str, found: str, attached: bool | None
) -> list[str]:
    names = rows.standby_names
    early = []
    if not names.strip():
        early.append("synchronous_standby_names is empty")
    if synchronous_commit in ("off", "local"):
        early.append(f"synchronous_commit = {synchronous_commit}")
    if early:
        managed = (
            ", unless your provider replicates storage synchronously (a managed standby "
            "replicated at the storage level shows synchronous_standby_names empty)"
        )
        return [
            f"commits are acknowledged before any standby has them ({' and '.join(early)}): a "
            "failover can lose acknowledged saves" + (managed if not names.strip() else "")
        ]
    if attached is False:
        return [
            f"synchronous_standby_names is {names!r} but no synchronous standby is "
            f"attached (standbys: {found}): every commit waits for one, so saves time out "
            "until it is back"
        ]
    return []
