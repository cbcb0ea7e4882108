"""Changing state by hand: ``put`` stores a value, ``edit`` opens one in the editor and saves
it only over what it read, ``rm`` removes a key."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .._engine import masked
from .._errors import ConflictError, InvalidValueError, LeaseHeldError
from .._lines import format_time, parse_json
from ..codec import encode
from .exits import (
    EXIT_BAD_INPUT,
    EXIT_CONFLICT,
    EXIT_LEASED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    FORCE_HINT,
    PROG,
    CommandError,
)
from .leases import refuse_if_leased
from .opening import checked_key, database_url, option_time
from .output import diff, pretty, size
from .prompts import EditFile, confirm, run_editor
from .reaching import open_store

if TYPE_CHECKING:
    import argparse

    from .._store import Snapshot
    from ..codec import JSONValue
    from .output import Console

__all__ = ["cmd_edit", "cmd_put", "cmd_rm"]


def _read_value(key: str, raw: str) -> JSONValue:
    """``put``'s JSON argument, or stdin for ``-``; refused before any database is opened."""
    if raw == "-":
        raw = sys.stdin.read()
        if not raw.strip():
            raise CommandError(
                EXIT_BAD_INPUT,
                f"stdin is empty: nothing to store (pipe a JSON value into `{PROG} put KEY -`)",
            )
        return parse_json(raw)
    try:
        return parse_json(raw)
    except InvalidValueError:
        if raw.endswith(".json") or Path(raw).is_file():
            raise CommandError(
                EXIT_BAD_INPUT,
                f"put takes the JSON value itself, not a file name: to store what {raw} holds, "
                f"run `{PROG} put {key} - < {raw}`",
            ) from None
        raise


async def cmd_put(args: argparse.Namespace, console: Console) -> int:
    key = checked_key(args.key)
    value = _read_value(key, args.json)  # before the database is opened: bad input changes nothing
    expected = (
        option_time("--if-updated-at", args.if_updated_at)
        if args.if_updated_at is not None
        else None
    )
    if args.reset_time and expected is None:
        raise CommandError(
            EXIT_BAD_INPUT,
            "--reset-time goes with --if-updated-at TIME, the stored time exactly as "
            f"`{PROG} ls` prints it",
        )
    url = database_url(console, args.url)
    async with open_store(url, args.timeout, force=args.force) as store:
        if expected is not None and args.reset_time:
            written = await store.reset_time(key, value, stored_at=expected)
            console.say(
                f"saved {key!r} ({size(value):,} bytes) at {format_time(written)}, its time set "
                f"back from {format_time(expected)}: saves of it apply again"
            )
            return EXIT_OK
        if expected is not None:
            await store.save(key, value, if_updated_at=expected)
        elif args.if_absent:
            await store.save(key, value, if_absent=True)
        else:
            await store.save(key, value)
    console.say(f"saved {key!r} ({size(value):,} bytes)")
    return EXIT_OK


async def cmd_edit(args: argparse.Namespace, console: Console) -> int:
    key = checked_key(args.key)
    if not args.yes and not console.interactive:  # the editor and the question need one
        raise CommandError(
            EXIT_BAD_INPUT,
            "edit opens an editor and asks before saving, and there is no terminal here: run "
            "it on one, or add --yes to save the edit without asking (with VISUAL or EDITOR "
            "set to a program that edits the file); nothing was opened",
        )
    url = database_url(console, args.url)
    async with open_store(url, args.timeout) as store:
        read = await store.load_snapshot(key)
        if read is not None:  # refused before the editor opens, not after the typing
            await refuse_if_leased(store, key, masked(url), force=args.force)
    if read is None:
        raise CommandError(
            EXIT_NOT_FOUND,
            f"key {key!r} not found in {masked(url)} "
            f"(`{PROG} put {key} JSON --if-absent` creates it)",
        )
    original = pretty(read.value)
    edit = EditFile(key, original)
    await run_editor(edit.path)
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
        raise CommandError(
            EXIT_BAD_INPUT, f"{exc}; nothing was written, the edit is in {edit.path} ({later})"
        ) from None
    if encode(value) == encode(read.value):
        edit.discard()
        console.say(f"no change to {key!r}; nothing was written")
        return EXIT_OK
    console.say(diff(original, pretty(value), f"{key} ({stamp})", f"{key} (edited)").rstrip())
    confirm(
        console,
        f"save this to {key!r}?",
        yes=args.yes,
        refusal=f"edit saves only once confirmed; the edit is in {edit.path} ({later})",
    )
    async with open_store(url, args.timeout, force=args.force) as store:
        try:
            await store.save(key, value, if_updated_at=read.updated_at)
        except ConflictError:
            now = await store.load_snapshot(key)
            refusal = _changed_meanwhile(console, key, read, now, edit.path)
            raise CommandError(EXIT_CONFLICT, refusal) from None
        except LeaseHeldError as exc:  # a lease taken while the editor was open
            raise CommandError(
                EXIT_LEASED, f"{exc}; {FORCE_HINT}; the edit is in {edit.path} ({later})"
            ) from None
    edit.discard()
    console.say(f"saved {key!r} ({size(value):,} bytes)")
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
        diff(
            pretty(read.value),
            pretty(now.value),
            f"{key} ({stamp}, as read)",
            f"{key} ({format_time(now.updated_at)}, stored now)",
        ).rstrip()
        or "(the same value, saved again)"
    )
    return (
        f"{key!r} changed since {stamp}; nothing was written, the edit is in {path} "
        f"(run `{PROG} edit {key}` again)"
    )


async def cmd_rm(args: argparse.Namespace, console: Console) -> int:
    url = database_url(console, args.url)
    key = checked_key(args.key)
    async with open_store(url, args.timeout, force=args.force) as store:
        found = await store.load_snapshot(key)
        if found is None:
            raise CommandError(EXIT_NOT_FOUND, f"key {key!r} not found in {masked(url)}")
        await refuse_if_leased(store, key, masked(url), force=args.force)
        what = f"{key!r} (saved at {format_time(found.updated_at)}, {size(found.value):,} bytes)"
        confirm(
            console,
            f"remove {what}?",
            yes=args.yes,
            refusal=f"rm removes {what} for good (`{PROG} get {key}` shows it)",
        )
        if not await store.delete(key):
            raise CommandError(EXIT_NOT_FOUND, f"key {key!r} not found in {masked(url)}")
    console.say(f"removed {key!r}")
    return EXIT_OK
