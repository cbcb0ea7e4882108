"""Moving state: ``export`` writes snapshots as JSON Lines, ``import`` writes an export back,
all or none, and ``copy`` moves every snapshot to another database and verifies it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from .._engine import masked
from .._errors import InvalidValueError
from .._lines import format_time
from .._restore import RestoreReport
from .._urls import is_memory_url
from ..transfer import copy, export, import_lines
from .exits import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_OK, PROG, CommandError
from .opening import checked_key, database_url, hosts_of
from .prompts import confirm
from .reaching import open_store

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Iterator

    from sqlalchemy import URL

    from .._sql import SqlStore
    from .._store import Snapshot
    from .output import Console

__all__ = ["cmd_copy", "cmd_export", "cmd_import", "interrupted_line", "same_database"]


def interrupted_line(report: RestoreReport, action: str, masked_url: str) -> str:
    """The last line of an import or copy stopped by Ctrl-C: what became of its transaction."""
    match report.state:
        case "writing" | "rolled back":
            return f"interrupted: rolled back, nothing was written to {masked_url}"
        case "committing":
            return (
                f"interrupted while the COMMIT was in flight: unknown whether the {action} took "
                f"effect in {masked_url}; look with `{PROG} ls` before running it again"
            )
        case "committed":
            return (
                f"interrupted after the commit: committed, {report.written:,} snapshot(s) "
                f"written to {masked_url}, but not verified"
            )


@contextlib.contextmanager
def _stopped_by_ctrl_c(
    console: Console, report: RestoreReport, action: str, masked_url: str
) -> Iterator[None]:
    """Turn the cancellation Ctrl-C sends the command's task into exit code 130 naming the
    outcome: rolled back, committed, or unknown (Ctrl-C while the COMMIT was in flight)."""
    console.on_interrupt = lambda: interrupted_line(report, action, masked_url)
    try:
        yield
    except asyncio.CancelledError:
        raise CommandError(EXIT_INTERRUPTED, interrupted_line(report, action, masked_url)) from None


def _restore_counts(report: RestoreReport, overwrite: bool, there: str) -> str:
    """How a restore met what was stored, in the words of import and copy."""
    fate = "overwritten" if overwrite else "kept"
    return (
        f"{report.added:,} added, {report.replaced:,} replaced (older {there}), "
        f"{report.unchanged:,} unchanged, {report.newer:,} {fate} (newer {there}), "
        f"{report.conflicting:,} {fate} (same time, another value {there})"
    )


def _note_kept(console: Console, report: RestoreReport, overwrite: bool, there: str) -> None:
    kept = report.newer + report.conflicting
    if kept and not overwrite:
        console.say(
            f"note: {kept:,} snapshot(s) {there} are newer than those given, or of the same time "
            "with another value, and were kept; --overwrite replaces them"
        )


async def cmd_export(args: argparse.Namespace, console: Console) -> int:
    to_file = args.file not in (None, "-")
    # The command runs one task: a blocking check stalls nothing else.
    if to_file and Path(args.file).exists():  # noqa: ASYNC240
        confirm(
            console,
            f"{args.file} exists; replace it?",
            yes=args.yes,
            refusal=f"export would replace {args.file}, which exists",
        )
    url = database_url(console, args.url)
    prefix = checked_key(args.prefix) if args.prefix else ""
    async with open_store(url, args.timeout) as store:
        progress = None
        if console.err.isatty():
            progress = console.progress("exported", await store.count(prefix))
        if to_file:
            count = await _export_file(store, Path(args.file), prefix, progress)
            destination = args.file
        else:
            count = await export(store, sys.stdout.buffer, prefix, progress)
            sys.stdout.buffer.flush()
            destination = "stdout"
    console.say(f"exported {count:,} snapshot(s) from {masked(url)} to {destination}")
    return EXIT_OK


async def _export_file(
    store: SqlStore, path: Path, prefix: str, progress: Callable[[int], None] | None
) -> int:
    """Write to a temporary file beside ``path``, then rename: a failed export leaves no file
    that looks complete."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with partial.open("wb") as out:
            count = await export(store, out, prefix, progress)
            out.flush()
            os.fsync(out.fileno())
        partial.replace(path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise CommandError(EXIT_BAD_INPUT, f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return count


async def cmd_import(args: argparse.Namespace, console: Console) -> int:
    name = "stdin" if args.file == "-" else args.file

    def bad(number: int, reason: str) -> None:
        console.say(f"{name}:{number}: {reason}")

    check = not args.no_trailer_check
    with contextlib.ExitStack() as stack:
        if args.file == "-":
            lines = sys.stdin.buffer
        else:
            try:
                # The command runs one task: a blocking open stalls nothing else.
                lines = stack.enter_context(Path(args.file).open("rb"))  # noqa: ASYNC230
            except OSError as exc:
                raise CommandError(EXIT_BAD_INPUT, f"cannot read {name}: {exc.strerror}") from None
        try:
            if args.dry_run:
                counts = await import_lines(None, lines, bad, check_trailer=check)
                console.say(f"{name}: {counts.snapshots:,} snapshot(s), all valid (dry run)")
                return EXIT_OK
            url = database_url(console, args.url)
            masked_url = masked(url)
            report = RestoreReport()
            with _stopped_by_ctrl_c(console, report, "import", masked_url):
                async with open_store(url, args.timeout, force=args.force) as store:
                    vet = None if args.allow_future_times else await _not_ahead(store)
                    counts = await import_lines(
                        store,
                        lines,
                        bad,
                        console.progress("imported", None),
                        overwrite=args.overwrite,
                        check_trailer=check,
                        report=report,
                        vet=vet,
                    )
        except InvalidValueError as exc:
            raise CommandError(EXIT_BAD_INPUT, f"{name}: {exc}") from None
    console.say(
        f"imported {counts.snapshots:,} snapshot(s) from {name} into {masked_url}: "
        + _restore_counts(report, args.overwrite, "there")
    )
    _note_kept(console, report, args.overwrite, "in the database")
    return EXIT_OK


FUTURE_TOLERANCE = timedelta(minutes=1)
"""How far past the database server's clock an imported time may be: clocks synchronised by NTP
differ by far less, a clock that ran ahead by more."""


async def _not_ahead(store: SqlStore) -> Callable[[Snapshot], None]:
    """``import``'s check of each snapshot's time against the database server's clock: a time
    past it would make every later save of the key refused until then."""
    latest = await store.server_time() + FUTURE_TOLERANCE

    def vet(snapshot: Snapshot) -> None:
        if snapshot.updated_at > latest:
            raise InvalidValueError(
                f"key {snapshot.key!r}: updated_at {format_time(snapshot.updated_at)} is later "
                f"than the database server's clock plus {FUTURE_TOLERANCE.seconds} s "
                f"({format_time(latest)}): stamped by a clock that ran ahead? every save of the "
                "key would be refused until then; fix the time in the file, or add "
                "--allow-future-times to import it as it is"
            )

    return vet


async def cmd_copy(args: argparse.Namespace, console: Console) -> int:
    if args.overwrite and not args.merge:
        raise CommandError(EXIT_BAD_INPUT, "--overwrite applies to a merge: add --merge")
    source_url = database_url(console, args.source)
    target_url = database_url(console, args.target)
    if same_database(source_url, target_url):
        shared = _shared_hosts(source_url, target_url)
        both = f", {source_url.database!r} on {', '.join(shared)}" if shared else ""
        raise CommandError(
            EXIT_BAD_INPUT, f"--from and --to name the same database{both}: give another --to"
        )
    source_shown, target_shown = masked(source_url), masked(target_url)
    started = time.monotonic()
    report = RestoreReport()
    with _stopped_by_ctrl_c(console, report, "copy", target_shown):
        async with (
            open_store(source_url, args.timeout) as source,
            open_store(target_url, args.timeout, force=args.force) as target,
        ):
            progress = None
            if console.err.isatty():
                progress = console.progress("copied", await source.count())
            await copy(
                source,
                target,
                merge=args.merge,
                overwrite=args.overwrite,
                on_batch=progress,
                report=report,
            )
    took = f"in {time.monotonic() - started:.1f} s"
    if not args.merge:
        console.say(
            f"copied {report.total:,} snapshot(s) from {source_shown} to {target_shown} {took}; "
            "verified: every key, value and updated_at is the same in both"
        )
        return EXIT_OK
    winner = "the source's replaced the target's" if args.overwrite else "the newer one won"
    console.say(
        f"merged {report.total:,} snapshot(s) from {source_shown} into {target_shown} {took}: "
        f"{_restore_counts(report, args.overwrite, 'in the target')}; verified: every source "
        f"snapshot is in the target as in the source, or {winner} as counted"
    )
    _note_kept(console, report, args.overwrite, "in the target")
    return EXIT_OK


def same_database(first: URL, second: URL) -> bool:
    """Whether two URLs may reach one database: one SQLite file, or one database name on a
    server both list (a multi-host URL's every host counts; any host in common is enough, since
    either URL may connect to it)."""
    if first.get_backend_name() != second.get_backend_name():
        return False
    if first.get_backend_name() == "sqlite":
        if is_memory_url(first) or is_memory_url(second):
            return False
        return Path(first.database or "").resolve() == Path(second.database or "").resolve()
    if first.database != second.database:
        return False
    return bool(_shared_hosts(first, second)) or not (hosts_of(first) or hosts_of(second))


def _shared_hosts(first: URL, second: URL) -> list[str]:
    theirs = set(hosts_of(second))
    return [host for host in hosts_of(first) if host in theirs]
