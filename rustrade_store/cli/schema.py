"""The schema commands: ``upgrade`` and ``downgrade`` migrate, ``current`` shows the revision
against this release's head."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import inspect

from .. import __version__, _statements
from .._engine import create_engine, masked
from .._errors import SchemaError
from .._migrate import downgrade, refuse_unknown_revision, schema_status, upgrade
from .._schema import snapshots
from .exits import EXIT_BAD_INPUT, EXIT_OK, PROG, CommandError
from .opening import database_url
from .prompts import confirm
from .reaching import connection

if TYPE_CHECKING:
    import argparse
    from collections.abc import Coroutine

    from sqlalchemy import URL, Connection
    from sqlalchemy.ext.asyncio import AsyncEngine

    from .._migrate import SchemaStatus
    from .output import Console

__all__ = ["cmd_current", "cmd_downgrade", "cmd_upgrade", "count_snapshots", "revision_line"]


def revision_line(status: SchemaStatus) -> str:
    """The schema's revision against this release's head, in one line."""
    current, head = status.current, status.head
    match status.state:
        case "current":
            return f"{current} (head)"
        case "missing":
            return f"none: never migrated (head is {head})"
        case "behind":
            return f"{current}: older than head {head}"
        case "ahead-unknown":
            return f"{current}: unknown to rustrade-store {__version__} (its head is {head})"


def count_snapshots(connection: Connection) -> int | None:
    """How many snapshots the table holds, as the store counts them (lease rows are not
    snapshots), or ``None`` when there is no table."""
    if not inspect(connection).has_table(snapshots.name):
        return None
    return int(connection.execute(_statements.count("")).scalar_one())


async def cmd_upgrade(args: argparse.Namespace, console: Console) -> int:
    url = database_url(console, args.url, must_exist=False)
    await _migrate(upgrade, url, args.revision, args.timeout)
    return await _report_revision(url, args.timeout, console, "upgrade")


async def cmd_downgrade(args: argparse.Namespace, console: Console) -> int:
    url = database_url(console, args.url)
    masked_url = masked(url)
    async with connection(url, args.timeout, "downgrade") as connected:
        await connected.run_sync(refuse_unknown_revision)
        rows = await connected.run_sync(count_snapshots)
    # Any step down may drop the table (`-1` from the first revision is `base`), so every
    # downgrade of a table holding snapshots needs confirming.
    if rows:
        confirm(
            console,
            f"downgrade to {args.revision} may drop the snapshots table of {masked_url} with its "
            f"{rows} snapshot(s); go on?",
            yes=args.yes,
            refusal=f"downgrade to {args.revision} may drop the snapshots table of {masked_url} "
            f"with its {rows} snapshot(s): `{PROG} export` them first, then confirm",
        )
    await _migrate(downgrade, url, args.revision, args.timeout)
    return await _report_revision(url, args.timeout, console, "downgrade")


class _Step(Protocol):
    """:func:`~rustrade_store.upgrade` or :func:`~rustrade_store.downgrade`."""

    def __call__(
        self, target: AsyncEngine, revision: str, /, *, wait: float
    ) -> Coroutine[Any, Any, None]: ...


async def _migrate(step: _Step, url: URL, revision: str, wait: float) -> None:
    """Run ``step``, waiting up to ``wait`` (``--timeout``) for another process's migration of
    the database as for each statement."""
    from alembic.util import CommandError as AlembicCommandError

    engine = create_engine(url, timeout=wait)
    try:
        await step(engine, revision, wait=wait)  # driver errors come translated, as StorageError
    except AlembicCommandError as exc:
        raise CommandError(EXIT_BAD_INPUT, f"revision {revision!r}: {exc}") from None
    finally:
        await engine.dispose()


async def _report_revision(url: URL, wait: float, console: Console, action: str) -> int:
    async with connection(url, wait, action) as connected:
        status = await schema_status(connected, masked(url))
    console.say(f"{masked(url)}: schema revision {revision_line(status)}")
    return EXIT_OK


async def cmd_current(args: argparse.Namespace, console: Console) -> int:
    url = database_url(console, args.url)
    async with connection(url, args.timeout, "current") as connected:
        status = await schema_status(connected, masked(url))
    console.out.write(revision_line(status) + "\n")
    if status.state != "current":
        raise SchemaError(status.message)
    return EXIT_OK
