"""Which database servers a run tested against, read from the servers themselves: the version
SQLAlchemy's dialect reads at an engine's first connection, for every engine of the run.

``make test`` ends with one line naming them (``servers: PostgreSQL 15.20, PostgreSQL 18.6,
MariaDB 10.11.14, SQLite 3.40.1``); under pytest-xdist each worker sends what it saw to the
controller, which prints the line once."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import Engine, event

if TYPE_CHECKING:
    from collections.abc import Iterable

    from sqlalchemy import Connection

__all__ = ["KEY", "line", "seen", "watch"]

KEY = "rustrade_servers"
"""Where a worker's servers go in its ``workeroutput``."""
_ORDER = ("PostgreSQL", "MariaDB", "MySQL", "SQLite")

seen: set[tuple[str, tuple[int, ...]]] = set()
"""The servers of this process's engines: product and version."""


def _record(connection: Connection) -> None:
    dialect = connection.dialect
    version = dialect.server_version_info
    if not version:
        return
    product = {"postgresql": "PostgreSQL", "sqlite": "SQLite"}.get(dialect.name)
    if dialect.name == "mysql":
        product = "MariaDB" if getattr(dialect, "is_mariadb", False) else "MySQL"
    if product is not None:
        seen.add((product, tuple(part for part in version if isinstance(part, int))))


def watch() -> None:
    """Record the server of every engine's connections from now on."""
    if not event.contains(Engine, "engine_connect", _record):
        event.listen(Engine, "engine_connect", _record)


def line(servers: Iterable[tuple[str, tuple[int, ...]]]) -> str:
    """``servers: ...``, PostgreSQL first, each product's versions in ascending order."""
    ordered = sorted(set(servers), key=lambda server: (_ORDER.index(server[0]), server[1]))
    names = [f"{product} {'.'.join(map(str, version))}" for product, version in ordered]
    return f"servers: {', '.join(names) or 'none'}"
