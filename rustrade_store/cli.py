"""The ``rustrade-store`` command: migrate, inspect and repair state, move it between databases.

Exit codes: 0 ok, 1 key not found, 2 usage or bad input, 3 storage error (the database failed,
or has no schema at this release's revision). Errors are one line on stderr; ``--debug`` adds
the traceback. Results go to stdout, confirmations and progress to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from sqlalchemy import func, inspect, select
from sqlalchemy.exc import SQLAlchemyError

from . import __version__
from .codec import check_key, encode
from .engine import (
    DEFAULT_TIMEOUT,
    ENV_VAR,
    check_timeout,
    create_engine,
    is_memory_url,
    masked,
    passwords,
    read_settings,
    resolve_url,
)
from .errors import (
    InvalidKeyError,
    InvalidValueError,
    KeyTypeError,
    SchemaError,
    StorageError,
    StoreError,
    storage_error,
)
from .migrate import downgrade, refuse_unknown_revision, schema_status, upgrade
from .schema import snapshots
from .sql import SqlStore
from .transfer import copy, export, import_lines, parse_json

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Coroutine, Sequence

    from sqlalchemy import URL, Connection
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

    from .migrate import SchemaStatus

__all__ = ["EXIT_BAD_INPUT", "EXIT_NOT_FOUND", "EXIT_OK", "EXIT_STORAGE", "main"]

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_BAD_INPUT = 2
EXIT_STORAGE = 3
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141

PROG = "rustrade-store"

_EPILOG = f"""\
The database URL comes from --url, else ${ENV_VAR}, else ./rustrade_state.db.
Plain URLs get the async drivers: sqlite:///bot.db, postgresql://user:pw@host/db.

exit codes: 0 ok, 1 key not found, 2 usage or bad input, 3 storage error
"""


class Failure(Exception):
    """A handled failure: one line for stderr and the exit code that goes with it."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, like every other error of the command."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# -- output --------------------------------------------------------------------------------


class _Console:
    """stdout for results, stderr for everything else; any password is masked on the way out."""

    __slots__ = ("_drawn", "_secrets", "err", "out")

    def __init__(self, out: TextIO, err: TextIO) -> None:
        self.out = out
        self.err = err
        self._secrets: set[str] = set()
        self._drawn = False  # a progress line is on screen, not yet ended

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


# -- helpers -------------------------------------------------------------------------------


def _url(console: _Console, raw: str | None, *, must_exist: bool = True) -> URL:
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


def _open(url: URL, timeout: float) -> SqlStore:
    return SqlStore.from_url(url, timeout=timeout)


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
    return int(connection.execute(select(func.count()).select_from(snapshots)).scalar_one())


# -- schema commands -----------------------------------------------------------------------


async def cmd_upgrade(args: argparse.Namespace, console: _Console) -> int:
    url = _url(console, args.url, must_exist=False)
    await _migrate(upgrade, url, args.revision, args.timeout)
    return await _report_revision(url, args.timeout, console, "upgrade")


async def cmd_downgrade(args: argparse.Namespace, console: _Console) -> int:
    url = _url(console, args.url)
    where = masked(url)
    async with _connection(url, args.timeout, "downgrade") as connection:
        await connection.run_sync(refuse_unknown_revision)
        rows = await connection.run_sync(_count_rows)
    # Any step down may drop the table (`-1` from the first revision is `base`), so every
    # downgrade of a table holding snapshots needs --yes.
    if rows and not args.yes:
        raise Failure(
            EXIT_BAD_INPUT,
            f"downgrade to {args.revision} may drop the snapshots table of {where} with its "
            f"{rows} snapshot(s): `{PROG} export` them first, then add --yes",
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


async def _report_revision(url: URL, wait: float, console: _Console, action: str) -> int:
    async with _connection(url, wait, action) as connection:
        status = await schema_status(connection, masked(url))
    console.say(f"{masked(url)}: schema revision {_revision_line(status)}")
    return EXIT_OK


async def cmd_current(args: argparse.Namespace, console: _Console) -> int:
    url = _url(console, args.url)
    async with _connection(url, args.timeout, "current") as connection:
        status = await schema_status(connection, masked(url))
    console.out.write(_revision_line(status) + "\n")
    if status.state != "current":
        raise SchemaError(status.message)
    return EXIT_OK


async def cmd_doctor(args: argparse.Namespace, console: _Console) -> int:
    url = _url(console, args.url)
    where = masked(url)
    lines: list[tuple[str, str]] = [
        ("url", where),
        ("package", f"rustrade-store {__version__}"),
        ("dialect", url.get_backend_name()),
        ("driver", url.get_driver_name()),
    ]
    problem: str | None = None
    try:
        async with _connection(url, args.timeout, "doctor") as connection:
            info = connection.dialect.server_version_info or ()
            lines.append(("server version", ".".join(str(part) for part in info) or "unknown"))
            status = await schema_status(connection, where)
            lines.append(("schema revision", _revision_line(status)))
            if status.state != "current":
                problem = status.message
            lines.extend(await connection.run_sync(read_settings))
            rows = await connection.run_sync(_count_rows)
            lines.append(("snapshots", "no table" if rows is None else f"{rows:,}"))
    except StorageError as exc:
        problem = str(exc)
    width = max(len(label) for label, _ in lines) + 1
    for label, value in lines:
        console.out.write(console.scrub(f"{label + ':':<{width}} {value}") + "\n")
    if problem is not None:
        raise StorageError(problem)
    console.out.write(f"{'status:':<{width}} ok\n")
    return EXIT_OK


# -- snapshot commands ---------------------------------------------------------------------


def _key(raw: str) -> str:
    try:
        return check_key(raw)
    except (InvalidKeyError, KeyTypeError) as exc:
        raise Failure(EXIT_BAD_INPUT, str(exc)) from None


async def cmd_ls(args: argparse.Namespace, console: _Console) -> int:
    url = _url(console, args.url)
    prefix = _key(args.prefix) if args.prefix else ""
    out = console.out
    shown = 0
    async with _open(url, args.timeout) as store:
        if args.keys_only:
            async for key in store.keys(prefix):
                out.write(key + "\n")
                shown += 1
        else:
            rows: list[tuple[str, str, str]] = [("KEY", "UPDATED_AT (UTC)", "BYTES")]
            header = out.isatty()
            async for snapshot in store.snapshots(prefix):
                text = encode(snapshot.value)
                size = len(text) if text.isascii() else len(text.encode("utf-8"))
                when = snapshot.updated_at.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
                rows.append((snapshot.key, when, str(size)))
                shown += 1
                if len(rows) > 1000:
                    _write_rows(out, rows, header)
                    rows, header = [rows[0]], False
            if len(rows) > 1:
                _write_rows(out, rows, header)
    if console.err.isatty():
        console.say(f"{shown:,} key(s)" + (f" starting with {prefix!r}" if prefix else ""))
    return EXIT_OK


def _write_rows(out: TextIO, rows: list[tuple[str, str, str]], header: bool) -> None:
    """One aligned block: key, updated_at, size in bytes (the header row only if asked)."""
    body = rows if header else rows[1:]
    key_width = max(len(row[0]) for row in body)
    size_width = max(len(row[2]) for row in body)
    out.write(
        "".join(f"{k:<{key_width}}  {when:<23}  {size:>{size_width}}\n" for k, when, size in body)
    )


async def cmd_get(args: argparse.Namespace, console: _Console) -> int:
    url = _url(console, args.url)
    key = _key(args.key)
    async with _open(url, args.timeout) as store:
        snapshot = await store.load_snapshot(key)
    if snapshot is None:
        raise Failure(EXIT_NOT_FOUND, f"key {key!r} not found in {masked(url)}")
    if args.compact:
        text = encode(snapshot.value)
    else:
        text = json.dumps(snapshot.value, indent=2, ensure_ascii=False)
    console.out.write(text + "\n")
    return EXIT_OK


async def cmd_put(args: argparse.Namespace, console: _Console) -> int:
    key = _key(args.key)
    raw = sys.stdin.read() if args.json == "-" else args.json
    value = parse_json(raw)  # before the database is opened: bad input changes nothing
    url = _url(console, args.url)
    async with _open(url, args.timeout) as store:
        await store.save(key, value)
    console.say(f"saved {key!r} ({len(encode(value).encode('utf-8')):,} bytes)")
    return EXIT_OK


async def cmd_rm(args: argparse.Namespace, console: _Console) -> int:
    url = _url(console, args.url)
    key = _key(args.key)
    async with _open(url, args.timeout) as store:
        removed = await store.delete(key)
    if not removed:
        raise Failure(EXIT_NOT_FOUND, f"key {key!r} not found in {masked(url)}")
    console.say(f"removed {key!r}")
    return EXIT_OK


# -- moving state --------------------------------------------------------------------------


async def cmd_export(args: argparse.Namespace, console: _Console) -> int:
    url = _url(console, args.url)
    prefix = _key(args.prefix) if args.prefix else ""
    async with _open(url, args.timeout) as store:
        if args.file in (None, "-"):
            count = await export(store, sys.stdout.buffer, prefix)
            sys.stdout.buffer.flush()
            destination = "stdout"
        else:
            count = await _export_file(store, Path(args.file), prefix)
            destination = args.file
    console.say(f"exported {count:,} snapshot(s) from {masked(url)} to {destination}")
    return EXIT_OK


async def _export_file(store: SqlStore, path: Path, prefix: str) -> int:
    """Write to a temporary file beside ``path``, then rename: a failed export leaves no file
    that looks complete."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with partial.open("wb") as out:
            count = await export(store, out, prefix)
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


async def cmd_import(args: argparse.Namespace, console: _Console) -> int:
    name = "stdin" if args.file == "-" else args.file

    def bad(number: int, reason: str) -> None:
        console.say(f"{name}:{number}: {reason}")

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
                counts = await import_lines(None, lines, bad)
                console.say(f"{name}: {counts.snapshots:,} snapshot(s), all valid (dry run)")
                return EXIT_OK
            url = _url(console, args.url)
            async with _open(url, args.timeout) as store:
                progress = console.progress("imported", None)
                counts = await import_lines(store, lines, bad, progress)
        except InvalidValueError as exc:
            raise Failure(EXIT_BAD_INPUT, f"{name}: {exc}") from None
    console.say(f"imported {counts.snapshots:,} snapshot(s) from {name} into {masked(url)}")
    return EXIT_OK


async def cmd_copy(args: argparse.Namespace, console: _Console) -> int:
    source_url = _url(console, args.source)
    target_url = _url(console, args.target)
    if _same_database(source_url, target_url):
        raise Failure(EXIT_BAD_INPUT, "--from and --to name the same database")
    started = time.monotonic()
    async with _open(source_url, args.timeout) as source, _open(target_url, args.timeout) as target:
        total = await source.count()
        progress = console.progress("copied", total)
        count = await copy(source, target, merge=args.merge, on_batch=progress)
    console.say(
        f"copied {count:,} snapshot(s) from {masked(source_url)} to {masked(target_url)} "
        f"in {time.monotonic() - started:.1f} s; verified: every key, value and updated_at "
        "is the same in both"
    )
    return EXIT_OK


def _same_database(first: URL, second: URL) -> bool:
    if first.get_backend_name() != second.get_backend_name():
        return False
    if first.get_backend_name() == "sqlite":
        if is_memory_url(first) or is_memory_url(second):
            return False
        return Path(first.database or "").resolve() == Path(second.database or "").resolve()
    return (first.host, first.port, first.database) == (second.host, second.port, second.database)


# -- the parser ----------------------------------------------------------------------------


def _timeout(text: str) -> float:
    """``--timeout``: seconds in the range the store accepts, else a usage error naming it."""
    try:
        return check_timeout(float(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    """The command's parser; global options are accepted before or after the command."""
    common = _Parser(add_help=False)
    common.add_argument(
        "--url", default=argparse.SUPPRESS, help=f"database URL (default: ${ENV_VAR})"
    )
    common.add_argument(
        "--timeout",
        type=_timeout,
        default=argparse.SUPPRESS,
        metavar="SECONDS",
        help=f"wait at most this long for a connection or a lock (default {DEFAULT_TIMEOUT:g})",
    )
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print the traceback of an error",
    )
    parser = _Parser(
        prog=PROG,
        parents=[common],
        description="Look at, repair and move rustrade-store state.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )

    def add(name: str, handler: Callable[..., Any], summary: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            parents=[common],
            help=summary,
            description=summary,
            epilog=_EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.set_defaults(handler=handler)
        return sub

    sub = add("upgrade", cmd_upgrade, "migrate the schema up (creates an SQLite file)")
    sub.add_argument("revision", nargs="?", default="head", metavar="REV", help="default: head")
    sub = add("downgrade", cmd_downgrade, "migrate the schema down ('base' drops the table)")
    sub.add_argument("revision", metavar="REV")
    sub.add_argument("--yes", action="store_true", help="drop stored snapshots if REV is base")
    add("current", cmd_current, "show the schema revision against this release's head")
    add("doctor", cmd_doctor, "connect and report the database, schema and settings")
    sub = add("ls", cmd_ls, "list keys with their updated_at and size, in key order")
    sub.add_argument("prefix", nargs="?", default="", metavar="PREFIX", help="literal prefix")
    sub.add_argument("--keys", dest="keys_only", action="store_true", help="keys only")
    sub = add("get", cmd_get, "print a snapshot's JSON value on stdout")
    sub.add_argument("key", metavar="KEY")
    sub.add_argument("--compact", action="store_true", help="one line, no indentation")
    sub = add("put", cmd_put, "store a JSON value under KEY (strict JSON, '-' reads stdin)")
    sub.add_argument("key", metavar="KEY")
    sub.add_argument("json", metavar="JSON")
    sub = add("rm", cmd_rm, "remove KEY")
    sub.add_argument("key", metavar="KEY")
    sub = add("export", cmd_export, "write snapshots as JSON Lines to FILE (default: stdout)")
    sub.add_argument("file", nargs="?", metavar="FILE")
    sub.add_argument("--prefix", default="", help="only keys starting with PREFIX")
    sub = add("import", cmd_import, "write the snapshots of a JSON Lines FILE, all or none")
    sub.add_argument("file", metavar="FILE", help="'-' reads stdin")
    sub.add_argument("--dry-run", action="store_true", help="check every line, write nothing")
    sub = add("copy", cmd_copy, "copy every snapshot to another database and verify it")
    sub.add_argument("--from", dest="source", required=True, metavar="URL")
    sub.add_argument("--to", dest="target", required=True, metavar="URL")
    sub.add_argument("--merge", action="store_true", help="allow a target holding snapshots")
    return parser


# -- entry point ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; return its exit code (the console script exits with it)."""
    args = build_parser().parse_args(argv)
    args.url = getattr(args, "url", None)
    args.timeout = getattr(args, "timeout", DEFAULT_TIMEOUT)
    debug = getattr(args, "debug", False)
    console = _Console(sys.stdout, sys.stderr)
    try:
        code: int = asyncio.run(args.handler(args, console))
        return code
    except Failure as exc:
        return _fail(console, exc.code, str(exc), debug)
    except StorageError as exc:
        return _fail(console, EXIT_STORAGE, str(exc), debug)
    except StoreError as exc:  # every other error of the package is bad input
        return _fail(console, EXIT_BAD_INPUT, str(exc), debug)
    except KeyboardInterrupt:
        return _fail(console, EXIT_INTERRUPTED, "interrupted; nothing half-written", debug)
    except BrokenPipeError:
        # The reader went away (`ls | head`): stop quietly, as Unix tools do.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except Exception as exc:
        hint = "" if debug else " (--debug shows the traceback)"
        detail = f"unexpected error: {type(exc).__name__}: {exc}{hint}"
        return _fail(console, EXIT_STORAGE, detail, debug)


def _fail(console: _Console, code: int, message: str, debug: bool) -> int:
    if debug:
        console.err.write(console.scrub(traceback.format_exc()))
    first = message.strip().splitlines()[0] if message.strip() else "failed"
    console.say(f"{PROG}: {first}")
    return code


if __name__ == "__main__":
    sys.exit(main())
