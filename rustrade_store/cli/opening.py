"""What every command opens: the database its URL names, a connection or a store on it, and
the keys and times it was given, each refused with a usage error when it cannot be used."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .._engine import masked, refuse_memory_url, resolve_url
from .._errors import ConfigurationError, InvalidKeyError, InvalidValueError, KeyTypeError
from .._lines import parse_time
from .._urls import hosts_of, is_memory_url
from ..codec import check_key
from .exits import EXIT_BAD_INPUT, EXIT_STORAGE, PROG, CommandError

if TYPE_CHECKING:
    from datetime import datetime

    from sqlalchemy import URL

    from .output import Console

__all__ = [
    "checked_key",
    "database_url",
    "hosts_of",
    "option_time",
]


def database_url(console: Console, raw: str | None, *, must_exist: bool = True) -> URL:
    """Resolve a URL; an SQLite file must already exist unless the command creates it."""
    try:
        url = resolve_url(raw)
    except ValueError as exc:
        raise CommandError(EXIT_BAD_INPUT, str(exc)) from None
    console.hide(url)
    _refuse_no_database(url)
    try:
        refuse_memory_url(url, "this command")
    except ConfigurationError as exc:
        raise CommandError(EXIT_BAD_INPUT, str(exc)) from None
    if (
        must_exist
        and url.get_backend_name() == "sqlite"
        and not is_memory_url(url)
        and not url.query.get("uri")
        and not Path(url.database or "").exists()
    ):
        raise CommandError(
            EXIT_STORAGE,
            f"no SQLite database at {url.database} (is the path right? "
            f"`{PROG} --url {masked(url)} upgrade` creates it)",
        )
    return url


def _refuse_no_database(url: URL) -> None:
    """A server URL must name its database: PostgreSQL would quietly use the one named after
    the user (or ``postgres``), and the hint to create the table there would follow."""
    if url.get_backend_name() == "sqlite" or url.database:
        return
    example = url.set(database="rustrade", password=None).render_as_string()
    default = "PostgreSQL would use the one named after the user, or 'postgres'"
    if url.get_backend_name() != "postgresql":
        default = "the tables would go in no database"
    raise CommandError(
        EXIT_BAD_INPUT,
        f"{masked(url)} names no database ({default}): add its name to the URL, such as {example}",
    )


def checked_key(raw: str) -> str:
    """A key given on the command line, or a usage error naming what is wrong with it."""
    try:
        return check_key(raw)
    except (InvalidKeyError, KeyTypeError) as exc:
        raise CommandError(EXIT_BAD_INPUT, str(exc)) from None


def option_time(option: str, text: str) -> datetime:
    """A save time given to ``option``, exactly as ``ls`` and ``get`` print it."""
    try:
        return parse_time(text)
    except InvalidValueError as exc:
        raise CommandError(
            EXIT_BAD_INPUT,
            f"{option}: {exc}; give the time exactly as `{PROG} ls` prints it, "
            "e.g. 2026-11-26T12:22:53.277123+00:00",
        ) from None
