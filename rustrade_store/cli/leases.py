"""The lease commands: ``leases`` lists them, ``lease break`` ends a dead holder's; and the
refusal the repair commands share, before they ask or edit, of a key under a live lease."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from .._engine import masked
from .._errors import InvalidKeyError, KeyTypeError
from .._lease import check_prefix
from .._lines import format_time
from ..codec import LEASE_PREFIX, lease_key
from .exits import (
    EXIT_BAD_INPUT,
    EXIT_LEASED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    FORCE_HINT,
    PROG,
    CommandError,
)
from .opening import database_url
from .prompts import confirm
from .reaching import open_store

if TYPE_CHECKING:
    import argparse
    from typing import TextIO

    from .._lease import LeaseInfo
    from .._sql import SqlStore
    from .output import Console

__all__ = ["cmd_lease_break", "cmd_leases", "lease_text", "refuse_if_leased"]


def _holder_text(holder: dict[str, Any]) -> str:
    if "broken at" in holder:
        return f"nobody (broken at {holder['broken at']})"
    return (
        f"{holder.get('host')} pid {holder.get('pid')} (lease {holder.get('id')}) "
        f"since {holder.get('since')}"
    )


def lease_text(info: LeaseInfo) -> str:
    """A lease as the messages name it: state, prefix, token, holder, expiry."""
    until = format_time(info.expires_at)
    expiry = f"until {until} unless renewed" if info.live else f"expired at {until}"
    state = "live" if info.live else "expired"
    return (
        f"the {state} lease on {info.prefix!r} (token {info.token}) held by "
        f"{_holder_text(info.holder)}, {expiry}"
    )


async def refuse_if_leased(store: SqlStore, key: str, where: str, *, force: bool) -> None:
    """Refuse before asking or editing what the write would refuse anyway: a key under another
    store's live lease (unless ``--force``)."""
    row = lease_key(key)
    if force or row is None:
        return
    prefix = row.removeprefix(LEASE_PREFIX)
    for info in await store.leases():
        if info.prefix == prefix and info.live:
            raise CommandError(
                EXIT_LEASED,
                f"{key!r} in {where} is under {lease_text(info)}: stop that bot first (a running "
                f"bot saves over a repair), or if it is dead, `{PROG} lease break {prefix}`; "
                f"{FORCE_HINT}",
            )


def _json_lines(out: TextIO, found: list[LeaseInfo]) -> None:
    for info in found:
        line = {
            "prefix": info.prefix,
            "token": info.token,
            "live": info.live,
            "expires_at": format_time(info.expires_at),
            "holder": info.holder,
        }
        out.write(json.dumps(line, ensure_ascii=False) + "\n")


def _table(out: TextIO, found: list[LeaseInfo]) -> None:
    """Aligned columns, the holder last and unpadded; a header on a terminal."""
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


async def cmd_leases(args: argparse.Namespace, console: Console) -> int:
    url = database_url(console, args.url)
    async with open_store(url, args.timeout) as store:
        found = await store.leases()
    if args.json:
        _json_lines(console.out, found)
    elif found:
        _table(console.out, found)
    if console.err.isatty() or not found:
        live = sum(info.live for info in found)
        console.say(f"{len(found):,} lease(s) in {masked(url)}, {live:,} live")
    return EXIT_OK


async def cmd_lease_break(args: argparse.Namespace, console: Console) -> int:
    try:
        prefix = check_prefix(args.prefix)
    except (InvalidKeyError, KeyTypeError) as exc:
        raise CommandError(EXIT_BAD_INPUT, str(exc)) from None
    url = database_url(console, args.url)
    where = masked(url)
    async with open_store(url, args.timeout) as store:
        seen = next((info for info in await store.leases() if info.prefix == prefix), None)
        if seen is None:
            raise CommandError(
                EXIT_NOT_FOUND, f"no lease on {prefix!r} in {where} (`{PROG} leases` lists them)"
            )
        what = lease_text(seen)
        confirm(
            console,
            f"break {what}? Its holder's writes are refused from then on, even if it is alive",
            yes=args.yes,
            refusal=f"lease break ends {what} for good",
        )
        broken = await store.break_lease(prefix)
    if broken is None:  # lease rows are never deleted: only a dropped table gets here
        raise CommandError(EXIT_NOT_FOUND, f"no lease on {prefix!r} in {where} any more")
    if (broken.token, broken.holder) != (seen.token, seen.holder):
        console.say(f"note: the lease changed hands after it was shown, to token {broken.token}")
    console.say(
        f"broke {lease_text(broken)} in {where}: its writes under {prefix!r} are refused from "
        "now on, and the next holder gets a higher token"
    )
    return EXIT_OK
