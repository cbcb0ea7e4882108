"""What each ``rustrade-store`` command does; :mod:`rustrade_store.cli` parses the command line
and maps the outcome to an exit code. Results go to stdout, confirmations, progress and notes to
stderr, through one :class:`Console` that masks every password on the way out."""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import json
import os
import re
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from sqlalchemy import inspect, text
from sqlalchemy.exc import SQLAlchemyError

from . import __version__, queries
from .cli import (
    EXIT_BAD_INPUT,
    EXIT_CONFLICT,
    EXIT_INTERRUPTED,
    EXIT_LEASED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_STORAGE,
    FORCE_HINT,
    PROG,
    Failure,
)
from .codec import LEASE_PREFIX, check_key, encode, lease_key
from .condition import compile_condition
from .engine import create_engine, is_memory_url, masked, passwords, read_settings, resolve_url
from .errors import (
    ConflictError,
    InvalidKeyError,
    InvalidValueError,
    KeyTypeError,
    LeaseHeldError,
    SchemaError,
    StorageError,
    storage_error,
)
from .lease import check_prefix
from .migrate import downgrade, refuse_unknown_revision, schema_status, upgrade
from .restore import RestoreReport
from .schema import snapshots
from .sql import SqlStore
from .transfer import (
    copy,
    export,
    format_line,
    format_time,
    import_lines,
    parse_json,
    parse_time,
)

if TYPE_CHECKING:
    import argparse
    from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
    from datetime import datetime

    from sqlalchemy import URL, Connection
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

    from .codec import JSONValue
    from .lease import LeaseInfo
    from .migrate import SchemaStatus
    from .store import Snapshot

__all__ = ["Console", "hosts_of", "interrupted_line", "replication_report", "same_database"]


# -- output --------------------------------------------------------------------------------


class Console:
    """stdout for results, stderr for everything else; any password is masked on the way out."""

    __slots__ = ("_drawn", "_secrets", "err", "on_interrupt", "out")

    def __init__(self, out: TextIO, err: TextIO) -> None:
        self.out = out
        self.err = err
        self._secrets: set[str] = set()
        self._drawn = False  # a progress line is on screen, not yet ended
        self.on_interrupt: Callable[[], str] | None = None
        """What an interrupt (Ctrl-C) left behind, for the command's last line."""

    def hide(self, url: URL) -> None:
        self._secrets.update(passwords(url))

    def scrub(self, text: str) -> str:
        # Whole words only: a password such as "postgres" must not garble "postgresql".
        for secret in self._secrets:
            text = re.sub(rf"(?<!\w){re.escape(secret)}(?!\w)", "***", text)
        return text

    def say(self, message: str) -> None:
        """A confirmation or a note, on stderr."""
        if self._drawn:
            self.err.write("\n")
            self._drawn = False
        self.err.write(self.scrub(message) + "\n")
        self.err.flush()

    @property
    def interactive(self) -> bool:
        """Whether there is a person to ask: stdin and stderr are terminals."""
        return sys.stdin.isatty() and self.err.isatty()

    def ask(self, question: str) -> bool:
        """Ask on stderr, read the answer from stdin; only y or yes is yes."""
        if self._drawn:
            self.err.write("\n")
            self._drawn = False
        self.err.write(self.scrub(f"{question} [y/N] "))
        self.err.flush()
        # Ctrl-C at the prompt must stop the command now, not after the next Enter.
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            answer = sys.stdin.readline()
        finally:
            signal.signal(signal.SIGINT, previous)
        return answer.strip().lower() in ("y", "yes")

    def progress(self, label: str, total: int | None) -> Callable[[int], None] | None:
        """A progress callback that redraws one stderr line, or None if stderr is no terminal."""
        if not self.err.isatty():
            return None
        last = 0.0

        def show(done: int) -> None:
            nonlocal last
            now = time.monotonic()
            if now - last < 0.2 and done != total:
                return
            last = now
            of = f" of {total:,} ({100 * done / total:.0f}%)" if total else ""
            self.err.write(f"\r{label} {done:,}{of}")
            self._drawn = True
            self.err.flush()

        return show


def confirm(console: Console, question: str, *, yes: bool, refusal: str) -> None:
    """Go on with ``--yes``, or when the person at the terminal answers yes; else stop with exit
    code 2 (``refusal`` says what would have happened)."""
    if yes:
        return
    if not console.interactive:
        raise Failure(EXIT_BAD_INPUT, f"{refusal}: add --yes to confirm (no terminal to ask on)")
    if not console.ask(question):
        raise Failure(EXIT_BAD_INPUT, "not confirmed; nothing was changed")


# -- helpers -------------------------------------------------------------------------------


def _url(console: Console, raw: str | None, *, must_exist: bool = True) -> URL:
    """Resolve a URL; an SQLite file must already exist unless the command creates it."""
    try:
        url = resolve_url(raw)
    except ValueError as exc:
        raise Failure(EXIT_BAD_INPUT, str(exc)) from None
    console.hide(url)
    if (
        must_exist
        and url.get_backend_name() == "sqlite"
        and not is_memory_url(url)
        and not url.query.get("uri")
        and not Path(url.database or "").exists()
    ):
        raise Failure(
            EXIT_STORAGE,
            f"no SQLite database at {url.database} (is the path right? "
            f"`{PROG} --url {masked(url)} upgrade` creates it)",
        )
    return url


@contextlib.asynccontextmanager
async def _connection(url: URL, wait: float, action: str) -> AsyncIterator[AsyncConnection]:
    """A plain connection for the schema command ``action``; driver failures become
    StorageError."""
    engine = create_engine(url, timeout=wait)
    try:
        async with engine.connect() as connection:
            yield connection
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        raise storage_error(action, None, masked(url), exc) from exc
    finally:
        await engine.dispose()


def _open(url: URL, timeout: float, *, force: bool = False) -> SqlStore:
    """The command's store; ``force`` (``--force``) writes under other stores' live leases."""
    return SqlStore.from_url(url, timeout=timeout, ignore_leases=force)


def _key(raw: str) -> str:
    try:
        return check_key(raw)
    except (InvalidKeyError, KeyTypeError) as exc:
        raise Failure(EXIT_BAD_INPUT, str(exc)) from None


def _pretty(value: JSONValue) -> str:
    """A value as ``get`` and ``edit`` show it: indented JSON, one member a line."""
    return json.dumps(value, indent=2, ensure_ascii=False) + "\n"


def _size(value: JSONValue, text: str | None = None) -> int:
    """Bytes of the stored JSON text (``text``, if already encoded)."""
    text = encode(value) if text is None else text
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def _diff(before: str, after: str, old: str, new: str) -> str:
    return "".join(difflib.unified_diff(before.splitlines(True), after.splitlines(True), old, new))


def interrupted_line(report: RestoreReport, action: str, where: str) -> str:
    """The last line of an import or copy stopped by Ctrl-C: what became of its transaction."""
    match report.state:
        case "writing" | "rolled back":
            return f"interrupted: rolled back, nothing was written to {where}"
        case "committing":
            return (
                f"interrupted while the COMMIT was in flight: unknown whether the {action} took "
                f"effect in {where}; look with `{PROG} ls` before running it again"
            )
        case "committed":
            return (
                f"interrupted after the commit: committed, {report.written:,} snapshot(s) "
                f"written to {where}, but not verified"
            )


@contextlib.contextmanager
def _stopped_by_ctrl_c(
    console: Console, report: RestoreReport, action: str, where: str
) -> Iterator[None]:
    """Turn the cancellation Ctrl-C sends the command's task into exit code 130 naming the
    outcome: rolled back, committed, or unknown (Ctrl-C while the COMMIT was in flight)."""
    console.on_interrupt = lambda: interrupted_line(report, action, where)
    try:
        yield
    except asyncio.CancelledError:
        raise Failure(EXIT_INTERRUPTED, interrupted_line(report, action, where)) from None


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


# -- schema commands -----------------------------------------------------------------------


def _revision_line(status: SchemaStatus) -> str:
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


def _count_rows(connection: Connection) -> int | None:
    if not inspect(connection).has_table(snapshots.name):
        return None
    return int(connection.execute(queries.count("")).scalar_one())


async def cmd_upgrade(args: argparse.Namespace, console: Console) -> int:
    url = _url(console, args.url, must_exist=False)
    await _migrate(upgrade, url, args.revision, args.timeout)
    return await _report_revision(url, args.timeout, console, "upgrade")


async def cmd_downgrade(args: argparse.Namespace, console: Console) -> int:
    url = _url(console, args.url)
    where = masked(url)
    async with _connection(url, args.timeout, "downgrade") as connection:
        await connection.run_sync(refuse_unknown_revision)
        rows = await connection.run_sync(_count_rows)
    # Any step down may drop the table (`-1` from the first revision is `base`), so every
    # downgrade of a table holding snapshots needs confirming.
    if rows:
        confirm(
            console,
            f"downgrade to {args.revision} may drop the snapshots table of {where} with its "
            f"{rows} snapshot(s); go on?",
            yes=args.yes,
            refusal=f"downgrade to {args.revision} may drop the snapshots table of {where} with "
            f"its {rows} snapshot(s): `{PROG} export` them first, then confirm",
        )
    await _migrate(downgrade, url, args.revision, args.timeout)
    return await _report_revision(url, args.timeout, console, "downgrade")


async def _migrate(
    step: Callable[[AsyncEngine, str], Coroutine[Any, Any, None]],
    url: URL,
    revision: str,
    wait: float,
) -> None:
    from alembic.util import CommandError

    engine = create_engine(url, timeout=wait)
    try:
        await step(engine, revision)  # its driver errors come translated, as StorageError
    except CommandError as exc:
        raise Failure(EXIT_BAD_INPUT, f"revision {revision!r}: {exc}") from None
    finally:
        await engine.dispose()


async def _report_revision(url: URL, wait: float, console: Console, action: str) -> int:
    async with _connection(url, wait, action) as connection:
        status = await schema_status(connection, masked(url))
    console.say(f"{masked(url)}: schema revision {_revision_line(status)}")
    return EXIT_OK


async def cmd_current(args: argparse.Namespace, console: Console) -> int:
    url = _url(console, args.url)
    async with _connection(url, args.timeout, "current") as connection:
        status = await schema_status(connection, masked(url))
    console.out.write(_revision_line(status) + "\n")
    if status.state != "current":
        raise SchemaError(status.message)
    return EXIT_OK


async def cmd_doctor(args: argparse.Namespace, console: Console) -> int:
    url = _url(console, args.url)
    where = masked(url)
    hosts = hosts_of(url)
    report: dict[str, Any] = {
        "url": where,
        "hosts": hosts,
        "package": f"rustrade-store {__version__}",
        "dialect": url.get_backend_name(),
        "driver": url.get_driver_name(),
        "server_version": None,
        "connected_to": None,
        "schema": None,
        "settings": {},
        "replication": None,
        "snapshots": None,
        "warnings": [],
    }
    lines: list[tuple[str, str]] = [("url", where)]
    if url.get_backend_name() != "sqlite":
        lines.append(("hosts", ", ".join(hosts) or "the driver's default (local socket)"))
    lines += [(label, report[label]) for label in ("package", "dialect", "driver")]
    problem: str | None = None
    try:
        async with _connection(url, args.timeout, "doctor") as connection:
            info = connection.dialect.server_version_info or ()
            report["server_version"] = ".".join(str(part) for part in info) or None
            lines.append(("server version", report["server_version"] or "unknown"))
            replication = None
            if connection.dialect.name == "postgresql":
                replication = await connection.run_sync(_read_replication)
                report["connected_to"] = replication.pop("connected_to")
                if len(hosts) > 1:
                    lines.append(("connected to", report["connected_to"]))
            status = await schema_status(connection, where)
            report["schema"] = {
                "revision": status.current,
                "head": status.head,
                "state": status.state,
            }
            lines.append(("schema revision", _revision_line(status)))
            if status.state != "current":
                problem = status.message
            settings = await connection.run_sync(read_settings)
            report["settings"] = dict(settings)
            lines.extend(settings)
            if replication is not None:
                names = replication["standby_names"]
                report["settings"]["synchronous_standby_names"] = names
                lines.append(("synchronous_standby_names", names or "(empty)"))
                found, attached, warnings = replication_report(
                    report["settings"].get("synchronous_commit", "on"),
                    names,
                    in_recovery=replication["in_recovery"],
                    standbys=replication["standbys"],
                    user=url.username or "CURRENT_USER",
                )
                lines.append(("standbys", found))
                report["replication"] = {
                    "in_recovery": replication["in_recovery"],
                    "standbys": [
                        {"application_name": name, "sync_state": state}
                        for name, state in replication["standbys"]
                    ],
                    "synchronous_standby_attached": attached,
                }
                report["warnings"] = warnings
            rows = await connection.run_sync(_count_rows)
            report["snapshots"] = rows
            lines.append(("snapshots", "no table" if rows is None else f"{rows:,}"))
    except StorageError as exc:
        problem = str(exc)
    if args.json:
        report["status"] = "ok" if problem is None else "error"
        report["problem"] = problem
        console.out.write(console.scrub(json.dumps(report, ensure_ascii=False)) + "\n")
    else:
        lines += [("warning", warning) for warning in report["warnings"]]
        width = max(len(label) for label, _ in lines) + 1
        for label, value in lines:
            console.out.write(console.scrub(f"{label + ':':<{width}} {value}") + "\n")
        if problem is None:
            console.out.write(f"{'status:':<{width}} ok\n")
    if problem is not None:
        raise StorageError(problem)
    return EXIT_OK


_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306}


def hosts_of(url: URL) -> list[str]:
    """Every ``host:port`` a server URL names, in order: its host, then those of a multi-host
    URL's ``?host=`` (the default port where none is given); empty for SQLite, or when the URL
    leaves the host to the driver."""
    backend = url.get_backend_name()
    if backend == "sqlite":
        return []
    port = url.port or _DEFAULT_PORTS.get(backend)
    listed = [f"{url.host}:{port}"] if url.host else []
    given = url.query.get("host", ())
    for host in (given,) if isinstance(given, str) else given:
        listed.append(host if re.search(r":\d+$", host) else f"{host}:{port}")
    return listed


def _read_replication(connection: Connection) -> dict[str, Any]:
    """PostgreSQL: what decides whether an acknowledged commit survives a failover."""
    names = str(connection.exec_driver_sql("SHOW synchronous_standby_names").scalar() or "")
    in_recovery, address, port = connection.execute(
        text("SELECT pg_is_in_recovery(), host(inet_server_addr()), inet_server_port()")
    ).one()
    # Without pg_monitor (pg_read_all_stats) each WAL sender's row is there, its state null.
    standbys = connection.execute(
        text(
            "SELECT application_name, sync_state FROM pg_stat_replication ORDER BY application_name"
        )
    ).all()
    return {
        "standby_names": names,
        "in_recovery": bool(in_recovery),
        "standbys": [(name, state) for name, state in standbys],
        "connected_to": f"{address}:{port}" if address else "the local socket",
    }


def replication_report(
    synchronous_commit: str,
    standby_names: str,
    *,
    in_recovery: bool,
    standbys: Sequence[tuple[str | None, str | None]],
    user: str,
) -> tuple[str, bool | None, list[str]]:
    """``doctor``'s verdict on a PostgreSQL server's replication: the standbys line, whether a
    synchronous standby is attached (``None``: unknown, their state is hidden from this role),
    and the warnings, the first of which is that a failover can lose acknowledged saves."""
    if in_recovery:
        return (
            "this server is itself a standby (in recovery)",
            None,
            [
                "this server is a standby in recovery and takes no writes: list the primary, or "
                "add target_session_attrs=read-write to a multi-host URL"
            ],
        )
    hidden = [name or "?" for name, state in standbys if state is None]
    found = ", ".join(f"{name or '?'} ({state})" for name, state in standbys if state is not None)
    attached: bool | None = any(state in ("sync", "quorum") for _, state in standbys)
    if hidden:  # no pg_monitor: the rows are there, their states null
        found = (found + ", " if found else "") + (
            f"{', '.join(hidden)} (sync_state hidden from this role: "
            f"GRANT pg_monitor TO {user} shows it)"
        )
        attached = attached or None
    found = found or "none attached"
    warnings = []
    early = []
    if not standby_names.strip():
        early.append("synchronous_standby_names is empty")
    if synchronous_commit in ("off", "local"):
        early.append(f"synchronous_commit = {synchronous_commit}")
    if early:
        warnings.append(
            f"commits are acknowledged before any standby has them ({' and '.join(early)}): a "
            "failover can lose acknowledged saves"
            + (
                ", unless your provider replicates storage synchronously (a managed standby "
                "replicated at the storage level shows synchronous_standby_names empty)"
                if not standby_names.strip()
                else ""
            )
        )
    elif attached is False:
        warnings.append(
            f"synchronous_standby_names is {standby_names!r} but no synchronous standby is "
            f"attached (standbys: {found}): every commit waits for one, so saves time out "
            "until it is back"
        )
    return found, attached, warnings


# -- snapshot commands ---------------------------------------------------------------------


async def cmd_ls(args: argparse.Namespace, console: Console) -> int:
    if args.values and not args.json:
        raise Failure(EXIT_BAD_INPUT, "--values goes with --json: `ls --json --values`")
    try:
        where = compile_condition(args.where) if args.where is not None else None
    except ValueError as exc:
        raise Failure(EXIT_BAD_INPUT, f"--where: {exc} (see `{PROG} ls --help`)") from None
    url = _url(console, args.url)
    prefix = _key(args.prefix) if args.prefix else ""
    out = console.out
    shown = 0
    async with _open(url, args.timeout) as store:
        if args.keys_only and where is None:
            async for key in store.keys(prefix):
                out.write(key + "\n")
                shown += 1
        else:
            table = _Table(out, header=out.isatty())
            async for snapshot in store.snapshots(prefix):
                if where is not None and not where(snapshot.value):
                    continue
                shown += 1
                if args.keys_only:
                    out.write(snapshot.key + "\n")
                elif args.json:
                    out.write(_ls_line(snapshot, args.values))
                else:
                    table.add(snapshot)
            table.flush()
    if console.err.isatty():
        matching = f" starting with {prefix!r}" if prefix else ""
        matching += f" where {args.where}" if args.where is not None else ""
        console.say(f"{shown:,} key(s){matching}")
    return EXIT_OK


def _ls_line(snapshot: Snapshot, values: bool) -> str:
    """``ls --json``: one object a line, with the value's JSON text exactly as stored."""
    text = encode(snapshot.value)
    key = json.dumps(snapshot.key, ensure_ascii=False)
    when = format_time(snapshot.updated_at)
    line = f'{{"key":{key},"updated_at":"{when}","size":{_size(snapshot.value, text)}'
    return line + (f',"value":{text}}}\n' if values else "}\n")


class _Table:
    """``ls``'s aligned columns: key, updated_at, size in bytes, written a block at a time."""

    __slots__ = ("_header", "_out", "_rows")

    def __init__(self, out: TextIO, *, header: bool) -> None:
        self._out = out
        self._header = header
        self._rows: list[tuple[str, str, str]] = []

    def add(self, snapshot: Snapshot) -> None:
        self._rows.append(
            (snapshot.key, format_time(snapshot.updated_at), str(_size(snapshot.value)))
        )
        if len(self._rows) == 1000:
            self.flush()

    def flush(self) -> None:
        if not self._rows:
            return
        rows = self._rows
        if self._header:
            rows = [("KEY", "UPDATED_AT", "BYTES"), *rows]
            self._header = False
        key_width = max(len(row[0]) for row in rows)
        size_width = max(len(row[2]) for row in rows)
        self._out.write(
            "".join(
                f"{k:<{key_width}}  {when:<32}  {size:>{size_width}}\n" for k, when, size in rows
            )
        )
        self._rows = []


async def cmd_get(args: argparse.Namespace, console: Console) -> int:
    keys = [_key(key) for key in args.keys]
    if keys and args.prefix is not None:
        raise Failure(EXIT_BAD_INPUT, "give KEYs or --prefix, not both")
    if not keys and args.prefix is None:
        raise Failure(EXIT_BAD_INPUT, f"give a KEY, several, or --prefix P (`{PROG} get KEY`)")
    url = _url(console, args.url)
    where = masked(url)
    async with _open(url, args.timeout) as store:
        if len(keys) == 1 and not args.json:
            snapshot = await store.load_snapshot(keys[0])
            if snapshot is None:
                raise Failure(EXIT_NOT_FOUND, f"key {keys[0]!r} not found in {where}")
            text = encode(snapshot.value) + "\n" if args.compact else _pretty(snapshot.value)
            console.out.write(text)
            if console.err.isatty():
                console.say(f"updated_at {format_time(snapshot.updated_at)}")
            return EXIT_OK
        if args.prefix is not None:
            async for snapshot in store.snapshots(_key(args.prefix) if args.prefix else ""):
                console.out.write(format_line(snapshot))
            return EXIT_OK
        missing = []
        for key in keys:
            found = await store.load_snapshot(key)
            if found is None:
                missing.append(key)
            else:
                console.out.write(format_line(found))
    if missing:
        names = ", ".join(repr(key) for key in missing)
        raise Failure(EXIT_NOT_FOUND, f"key(s) {names} not found in {where}")
    return EXIT_OK


def _read_value(key: str, raw: str) -> JSONValue:
    """``put``'s JSON argument, or stdin for ``-``; refused before any database is opened."""
    if raw == "-":
        raw = sys.stdin.read()
        if not raw.strip():
            raise Failure(
                EXIT_BAD_INPUT,
                f"stdin is empty: nothing to store (pipe a JSON value into `{PROG} put KEY -`)",
            )
        return parse_json(raw)
    try:
        return parse_json(raw)
    except InvalidValueError:
        if raw.endswith(".json") or Path(raw).is_file():
            raise Failure(
                EXIT_BAD_INPUT,
                f"put takes the JSON value itself, not a file name: to store what {raw} holds, "
                f"run `{PROG} put {key} - < {raw}`",
            ) from None
        raise


def _token(text: str) -> datetime:
    """``--if-updated-at``: the time exactly as ``ls`` and ``get`` print it."""
    try:
        return parse_time(text)
    except InvalidValueError as exc:
        raise Failure(
            EXIT_BAD_INPUT,
            f"--if-updated-at: {exc}; give the time exactly as `{PROG} ls` prints it, "
            "e.g. 2026-11-26T12:22:53.277123+00:00",
        ) from None


async def cmd_put(args: argparse.Namespace, console: Console) -> int:
    key = _key(args.key)
    value = _read_value(key, args.json)  # before the database is opened: bad input changes nothing
    expected = _token(args.if_updated_at) if args.if_updated_at is not None else None
    url = _url(console, args.url)
    async with _open(url, args.timeout, force=args.force) as store:
        if expected is not None:
            await store.save(key, value, if_updated_at=expected)
        elif args.if_absent:
            await store.save(key, value, if_absent=True)
        else:
            await store.save(key, value)
    console.say(f"saved {key!r} ({_size(value):,} bytes)")
    return EXIT_OK


class _EditFile:
    """The temporary file ``edit`` opens in the editor; kept, and named, when the edit is not
    saved, so that no typing is lost."""

    __slots__ = ("path",)

    def __init__(self, key: str, text: str) -> None:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", key)[:40]
        handle, name = tempfile.mkstemp(prefix=f"rustrade-store-{safe}-", suffix=".json")
        self.path = Path(name)
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)

    def read(self) -> str:
        return self.path.read_text(encoding="utf-8")

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


async def cmd_edit(args: argparse.Namespace, console: Console) -> int:
    key = _key(args.key)
    url = _url(console, args.url)
    async with _open(url, args.timeout) as store:
        read = await store.load_snapshot(key)
        if read is not None:  # refused before the editor opens, not after the typing
            await _refuse_if_leased(store, key, masked(url), force=args.force)
    if read is None:
        raise Failure(
            EXIT_NOT_FOUND,
            f"key {key!r} not found in {masked(url)} "
            f"(`{PROG} put {key} JSON --if-absent` creates it)",
        )
    original = _pretty(read.value)
    edit = _EditFile(key, original)
    await _run_editor(edit.path)
    text = edit.read()
    if not text.strip():
        edit.discard()
        console.say("the file is empty: edit cancelled, nothing was written")
        return EXIT_OK
    stamp = format_time(read.updated_at)
    later = f"`{PROG} put {key} - --if-updated-at {stamp} < {edit.path}` saves it"
    try:
        value = parse_json(text)
    except InvalidValueError as exc:
        raise Failure(
            EXIT_BAD_INPUT, f"{exc}; nothing was written, the edit is in {edit.path} ({later})"
        ) from None
    if encode(value) == encode(read.value):
        edit.discard()
        console.say(f"no change to {key!r}; nothing was written")
        return EXIT_OK
    console.say(_diff(original, _pretty(value), f"{key} ({stamp})", f"{key} (edited)").rstrip())
    confirm(
        console,
        f"save this to {key!r}?",
        yes=args.yes,
        refusal=f"edit saves only once confirmed; the edit is in {edit.path} ({later})",
    )
    async with _open(url, args.timeout, force=args.force) as store:
        try:
            await store.save(key, value, if_updated_at=read.updated_at)
        except ConflictError:
            now = await store.load_snapshot(key)
            refusal = _changed_meanwhile(console, key, read, now, edit.path)
            raise Failure(EXIT_CONFLICT, refusal) from None
        except LeaseHeldError as exc:  # a lease taken while the editor was open
            raise Failure(
                EXIT_LEASED, f"{exc}; {FORCE_HINT}; the edit is in {edit.path} ({later})"
            ) from None
    edit.discard()
    console.say(f"saved {key!r} ({_size(value):,} bytes)")
    return EXIT_OK


def _changed_meanwhile(
    console: Console, key: str, read: Snapshot, now: Snapshot | None, path: Path
) -> str:
    """Show what changed in the database while the editor was open; return the error line."""
    stamp = format_time(read.updated_at)
    if now is None:
        return (
            f"{key!r} was removed while you edited it; nothing was written, the edit is in {path}"
        )
    console.say(f"{key!r} was saved again while you edited it; what changed meanwhile:")
    console.say(
        _diff(
            _pretty(read.value),
            _pretty(now.value),
            f"{key} ({stamp}, as read)",
            f"{key} ({format_time(now.updated_at)}, stored now)",
        ).rstrip()
        or "(the same value, saved again)"
    )
    return (
        f"{key!r} changed since {stamp}; nothing was written, the edit is in {path} "
        f"(run `{PROG} edit {key}` again)"
    )


async def _run_editor(path: Path) -> None:
    """Open ``path`` in $VISUAL, else $EDITOR, else vi, through the shell as git does (so an
    editor given with arguments works); Ctrl-C belongs to the editor meanwhile."""
    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    # A Python handler (unlike SIG_IGN) is reset to the default in the editor's process.
    previous = signal.signal(signal.SIGINT, lambda _signal, _frame: None)
    try:
        process = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", f'{editor} "$@"', editor, str(path)
        )
        code = await process.wait()
    finally:
        signal.signal(signal.SIGINT, previous)
    if code != 0:
        raise Failure(
            EXIT_BAD_INPUT,
            f"the editor {editor!r} exited with status {code}; nothing was written"
            + (" (not found? set VISUAL or EDITOR)" if code == 127 else ""),
        )


async def cmd_rm(args: argparse.Namespace, console: Console) -> int:
    url = _url(console, args.url)
    key = _key(args.key)
    async with _open(url, args.timeout, force=args.force) as store:
        found = await store.load_snapshot(key)
        if found is None:
            raise Failure(EXIT_NOT_FOUND, f"key {key!r} not found in {masked(url)}")
        await _refuse_if_leased(store, key, masked(url), force=args.force)
        what = f"{key!r} (saved at {format_time(found.updated_at)}, {_size(found.value):,} bytes)"
        confirm(
            console,
            f"remove {what}?",
            yes=args.yes,
            refusal=f"rm removes {what} for good (`{PROG} get {key}` shows it)",
        )
        if not await store.delete(key):
            raise Failure(EXIT_NOT_FOUND, f"key {key!r} not found in {masked(url)}")
    console.say(f"removed {key!r}")
    return EXIT_OK


# -- leases --------------------------------------------------------------------------------


def _holder_text(holder: dict[str, Any]) -> str:
    if "broken at" in holder:
        return f"nobody (broken at {holder['broken at']})"
    return (
        f"{holder.get('host')} pid {holder.get('pid')} (lease {holder.get('id')}) "
        f"since {holder.get('since')}"
    )


def _lease_text(info: LeaseInfo) -> str:
    """A lease as the messages name it: state, prefix, token, holder, expiry."""
    until = format_time(info.expires_at)
    expiry = f"until {until} unless renewed" if info.live else f"expired at {until}"
    state = "live" if info.live else "expired"
    return (
        f"the {state} lease on {info.prefix!r} (token {info.token}) held by "
        f"{_holder_text(info.holder)}, {expiry}"
    )


async def _refuse_if_leased(store: SqlStore, key: str, where: str, *, force: bool) -> None:
    """Refuse before asking or editing what the write would refuse anyway: a key under another
    store's live lease (unless ``--force``)."""
    row = lease_key(key)
    if force or row is None:
        return
    prefix = row.removeprefix(LEASE_PREFIX)
    for info in await store.leases():
        if info.prefix == prefix and info.live:
            raise Failure(
                EXIT_LEASED,
                f"{key!r} in {where} is under {_lease_text(info)}: stop that bot first (a running "
                f"bot saves over a repair), or if it is dead, `{PROG} lease break {prefix}`; "
                f"{FORCE_HINT}",
            )


async def cmd_leases(args: argparse.Namespace, console: Console) -> int:
    url = _url(console, args.url)
    async with _open(url, args.timeout) as store:
        found = await store.leases()
    out = console.out
    if args.json:
        for info in found:
            line = {
                "prefix": info.prefix,
                "token": info.token,
                "live": info.live,
                "expires_at": format_time(info.expires_at),
                "holder": info.holder,
            }
            out.write(json.dumps(line, ensure_ascii=False) + "\n")
    elif found:
        rows = [
            (
                info.prefix,
                str(info.token),
                "live" if info.live else "expired",
                format_time(info.expires_at),
                _holder_text(info.holder),
            )
            for info in found
        ]
        if out.isatty():
            rows.insert(0, ("PREFIX", "TOKEN", "STATE", "EXPIRES_AT", "HOLDER"))
        widths = [max(len(row[column]) for row in rows) for column in range(4)]
        for row in rows:
            cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
            out.write("  ".join([*cells, row[4]]) + "\n")
    if console.err.isatty() or not found:
        live = sum(info.live for info in found)
        console.say(f"{len(found):,} lease(s) in {masked(url)}, {live:,} live")
    return EXIT_OK


async def cmd_lease_break(args: argparse.Namespace, console: Console) -> int:
    try:
        prefix = check_prefix(args.prefix)
    except (InvalidKeyError, KeyTypeError) as exc:
        raise Failure(EXIT_BAD_INPUT, str(exc)) from None
    url = _url(console, args.url)
    where = masked(url)
    async with _open(url, args.timeout) as store:
        seen = next((info for info in await store.leases() if info.prefix == prefix), None)
        if seen is None:
            raise Failure(
                EXIT_NOT_FOUND, f"no lease on {prefix!r} in {where} (`{PROG} leases` lists them)"
            )
        what = _lease_text(seen)
        confirm(
            console,
            f"break {what}? Its holder's writes are refused from then on, even if it is alive",
            yes=args.yes,
            refusal=f"lease break ends {what} for good",
        )
        broken = await store.break_lease(prefix)
    if broken is None:  # lease rows are never deleted: only a dropped table gets here
        raise Failure(EXIT_NOT_FOUND, f"no lease on {prefix!r} in {where} any more")
    if (broken.token, broken.holder) != (seen.token, seen.holder):
        console.say(f"note: the lease changed hands after it was shown, to token {broken.token}")
    console.say(
        f"broke {_lease_text(broken)} in {where}: its writes under {prefix!r} are refused from "
        "now on, and the next holder gets a higher token"
    )
    return EXIT_OK


# -- moving state --------------------------------------------------------------------------


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
    url = _url(console, args.url)
    prefix = _key(args.prefix) if args.prefix else ""
    async with _open(url, args.timeout) as store:
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
        raise Failure(EXIT_BAD_INPUT, f"cannot write {path}: {exc.strerror or exc}") from None
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
                raise Failure(EXIT_BAD_INPUT, f"cannot read {name}: {exc.strerror}") from None
        try:
            if args.dry_run:
                counts = await import_lines(None, lines, bad, check_trailer=check)
                console.say(f"{name}: {counts.snapshots:,} snapshot(s), all valid (dry run)")
                return EXIT_OK
            url = _url(console, args.url)
            where = masked(url)
            report = RestoreReport()
            with _stopped_by_ctrl_c(console, report, "import", where):
                async with _open(url, args.timeout, force=args.force) as store:
                    counts = await import_lines(
                        store,
                        lines,
                        bad,
                        console.progress("imported", None),
                        overwrite=args.overwrite,
                        check_trailer=check,
                        report=report,
                    )
        except InvalidValueError as exc:
            raise Failure(EXIT_BAD_INPUT, f"{name}: {exc}") from None
    console.say(
        f"imported {counts.snapshots:,} snapshot(s) from {name} into {where}: "
        + _restore_counts(report, args.overwrite, "there")
    )
    _note_kept(console, report, args.overwrite, "in the database")
    return EXIT_OK


async def cmd_copy(args: argparse.Namespace, console: Console) -> int:
    if args.overwrite and not args.merge:
        raise Failure(EXIT_BAD_INPUT, "--overwrite applies to a merge: add --merge")
    source_url = _url(console, args.source)
    target_url = _url(console, args.target)
    if same_database(source_url, target_url):
        shared = _shared_hosts(source_url, target_url)
        both = f", {source_url.database!r} on {', '.join(shared)}" if shared else ""
        raise Failure(
            EXIT_BAD_INPUT, f"--from and --to name the same database{both}: give another --to"
        )
    source_where, target_where = masked(source_url), masked(target_url)
    started = time.monotonic()
    report = RestoreReport()
    with _stopped_by_ctrl_c(console, report, "copy", target_where):
        async with (
            _open(source_url, args.timeout) as source,
            _open(target_url, args.timeout, force=args.force) as target,
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
            f"copied {report.total:,} snapshot(s) from {source_where} to {target_where} {took}; "
            "verified: every key, value and updated_at is the same in both"
        )
        return EXIT_OK
    winner = "the source's replaced the target's" if args.overwrite else "the newer one won"
    console.say(
        f"merged {report.total:,} snapshot(s) from {source_where} into {target_where} {took}: "
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
