"""Looking at state: ``ls`` lists keys (with a ``--where`` condition on their values), ``get``
prints snapshots."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._condition import compile_condition
from .._engine import masked
from .._lines import Raw, format_line, format_time, json_line
from ..codec import BATCH_ROWS, encode
from .exits import EXIT_BAD_INPUT, EXIT_NOT_FOUND, EXIT_OK, PROG, CommandError
from .opening import checked_key, database_url
from .output import pretty, shown_key, size
from .reaching import open_store

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable
    from typing import TextIO

    from .._sql import SqlStore
    from .._store import Snapshot
    from ..codec import JSONValue
    from .output import Console

__all__ = ["cmd_get", "cmd_ls"]


def _condition(text: str | None) -> Callable[[JSONValue], bool] | None:
    """``--where``, compiled, or a usage error pointing at the grammar."""
    if text is None:
        return None
    try:
        return compile_condition(text)
    except ValueError as exc:
        raise CommandError(EXIT_BAD_INPUT, f"--where: {exc} (see `{PROG} ls --help`)") from None


async def cmd_ls(args: argparse.Namespace, console: Console) -> int:
    if args.values and not args.json:
        raise CommandError(EXIT_BAD_INPUT, "--values goes with --json: `ls --json --values`")
    condition = _condition(args.where)
    url = database_url(console, args.url)
    prefix = checked_key(args.prefix) if args.prefix else ""
    async with open_store(url, args.timeout) as store:
        if args.keys_only and condition is None:
            shown = await _keys(store, prefix, console.out)
        else:
            shown = await _listing(store, prefix, condition, args, console.out)
    if console.err.isatty():
        matching = f" starting with {prefix!r}" if prefix else ""
        matching += f" where {args.where}" if args.where is not None else ""
        console.say(f"{shown:,} key(s){matching}")
    return EXIT_OK


async def _keys(store: SqlStore, prefix: str, out: TextIO) -> int:
    """``ls --keys``: one key a line, as stored (quoted where ambiguous on a terminal)."""
    show = shown_key if out.isatty() else str
    shown = 0
    async for key in store.keys(prefix):
        out.write(show(key) + "\n")
        shown += 1
    return shown


async def _listing(
    store: SqlStore,
    prefix: str,
    condition: Callable[[JSONValue], bool] | None,
    args: argparse.Namespace,
    out: TextIO,
) -> int:
    """``ls`` reading values: the snapshots meeting ``condition``, as keys, JSON or a table."""
    show = shown_key if out.isatty() else str
    table = _Table(out, header=out.isatty())
    shown = 0
    async for snapshot in store.snapshots(prefix):
        if condition is not None and not condition(snapshot.value):
            continue
        shown += 1
        if args.keys_only:
            out.write(show(snapshot.key) + "\n")
        elif args.json:
            out.write(_ls_line(snapshot, args.values))
        else:
            table.add(snapshot)
    table.flush()
    return shown


def _ls_line(snapshot: Snapshot, values: bool) -> str:
    """``ls --json``: one object a line, with the value's JSON text exactly as stored."""
    text = encode(snapshot.value)
    members: dict[str, str | int | Raw] = {
        "key": snapshot.key,
        "updated_at": format_time(snapshot.updated_at),
        "size": size(snapshot.value, text),
    }
    if values:
        members["value"] = Raw(text)
    return json_line(members)


class _Table:
    """``ls``'s aligned columns: key (quoted where ambiguous), updated_at, size in bytes,
    written a block at a time."""

    __slots__ = ("_header", "_out", "_rows")

    def __init__(self, out: TextIO, *, header: bool) -> None:
        self._out = out
        self._header = header
        self._rows: list[tuple[str, str, str]] = []

    def add(self, snapshot: Snapshot) -> None:
        self._rows.append(
            (
                shown_key(snapshot.key),
                format_time(snapshot.updated_at),
                str(size(snapshot.value)),
            )
        )
        if len(self._rows) == BATCH_ROWS:
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
                f"{k:<{key_width}}  {when:<32}  {bytes_:>{size_width}}\n"
                for k, when, bytes_ in rows
            )
        )
        self._rows = []


def _get_keys(args: argparse.Namespace) -> list[str]:
    """``get``'s keys, checked; a usage error unless KEYs or ``--prefix`` is given, not both."""
    keys = [checked_key(key) for key in args.keys]
    if keys and args.prefix is not None:
        raise CommandError(EXIT_BAD_INPUT, "give KEYs or --prefix, not both")
    if not keys and args.prefix is None:
        raise CommandError(EXIT_BAD_INPUT, f"give a KEY, several, or --prefix P (`{PROG} get KEY`)")
    return keys


async def cmd_get(args: argparse.Namespace, console: Console) -> int:
    keys = _get_keys(args)
    url = database_url(console, args.url)
    masked_url = masked(url)
    async with open_store(url, args.timeout) as store:
        if len(keys) == 1 and not args.json:
            await _get_one(store, keys[0], masked_url, args.compact, console)
        elif args.prefix is not None:
            prefix = checked_key(args.prefix) if args.prefix else ""
            async for snapshot in store.snapshots(prefix):
                console.out.write(format_line(snapshot))
        else:
            await _get_lines(store, keys, masked_url, console.out)
    return EXIT_OK


async def _get_one(
    store: SqlStore, key: str, masked_url: str, compact: bool, console: Console
) -> None:
    """One value as JSON (indented unless ``compact``), its time on a terminal's stderr."""
    snapshot = await store.load_snapshot(key)
    if snapshot is None:
        raise CommandError(EXIT_NOT_FOUND, f"key {key!r} not found in {masked_url}")
    console.out.write(encode(snapshot.value) + "\n" if compact else pretty(snapshot.value))
    if console.err.isatty():
        console.say(f"updated_at {format_time(snapshot.updated_at)}")


async def _get_lines(store: SqlStore, keys: list[str], masked_url: str, out: TextIO) -> None:
    """Several keys as JSON Lines, those found; then exit 1 naming the missing."""
    missing = []
    for key in keys:
        found = await store.load_snapshot(key)
        if found is None:
            missing.append(key)
        else:
            out.write(format_line(found))
    if missing:
        names = ", ".join(repr(key) for key in missing)
        raise CommandError(EXIT_NOT_FOUND, f"key(s) {names} not found in {masked_url}")
