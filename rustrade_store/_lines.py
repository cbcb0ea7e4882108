"""The JSON Lines form of snapshots: times, one line per snapshot, an export's trailer, and the
strict parsing of JSON and times typed by a person.

One line of a file is one snapshot, a JSON object with exactly three members::

    {"key":"bot1/BTCUSDT","value":{"halted":true},"updated_at":"2026-11-26T12:03:45.123456+00:00"}

An export ends with a trailer, one more JSON line holding the number of snapshot lines and the
SHA-256 of every byte before it, so that a file cut short is refused rather than imported as a
whole backup (``head -n -1 FILE | sha256sum`` recomputes it)::

    {"rustrade_store_export":{"count":2,"sha256":"9f86d081884c7d65..."}}
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import TYPE_CHECKING

from ._errors import InvalidValueError
from ._store import Snapshot
from .codec import check_key, encode, parse

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .codec import JSONValue

__all__ = [
    "BOM",
    "TRAILER",
    "Raw",
    "Trailer",
    "format_line",
    "format_time",
    "json_line",
    "parse_json",
    "parse_time",
    "read_line",
    "trailer_line",
]

TRAILER = "rustrade_store_export"
"""The one member of an export's last line: ``{"count": N, "sha256": "..."}``."""

BOM = b"\xef\xbb\xbf"
"""A UTF-8 byte order mark, which some editors put before a file's first line."""

_FIELDS = ("key", "value", "updated_at")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_dumps = json.JSONEncoder(ensure_ascii=False).encode


# -- strict JSON and times from outside ----------------------------------------------------


def parse_json(text: str) -> JSONValue:
    """Parse JSON typed by a person as strictly as the store writes it; raise naming the fault.

    Refused: anything not JSON, ``NaN`` and ``Infinity`` (which Python's ``json`` accepts),
    numbers no float can hold, an object member given twice, and whatever the store itself
    refuses (too deep, too large, lone surrogates).
    """
    try:
        value = parse(text)
    except ValueError as exc:
        hint = ""
        stripped = text.strip()
        if str(exc).startswith("Expecting value") and stripped and stripped[0] not in '{["-':
            hint = f" (a string must be quoted: '{json.dumps(stripped)}')"
        raise InvalidValueError(f"not valid JSON: {exc}{hint}") from None
    encode(value)
    return value


def parse_time(stamp: str) -> datetime:
    """An ISO 8601 time with a zone, in UTC; raise :class:`InvalidValueError` saying why not."""
    try:
        when = datetime.fromisoformat(stamp)
    except ValueError:
        raise InvalidValueError(f"updated_at {stamp!r} is not ISO 8601") from None
    if when.tzinfo is None:
        raise InvalidValueError(f"updated_at {stamp!r} has no time zone (add +00:00 for UTC)")
    try:
        return when.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00:00+01:00 is valid ISO 8601 but before year 1 in UTC
        raise InvalidValueError(
            f"updated_at {stamp!r} is out of range once converted to UTC"
        ) from None


def format_time(when: datetime) -> str:
    """A save time as exports, ``ls`` and ``get`` print it and ``--if-updated-at`` takes it:
    ISO 8601 in UTC with microseconds, ``2026-11-26T12:03:45.123456+00:00``."""
    return when.astimezone(UTC).isoformat(timespec="microseconds")


# -- writing lines -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Raw:
    """JSON text that goes into a line as it is: a value's text exactly as stored, never
    decoded and encoded again."""

    text: str


def json_line(members: Mapping[str, str | int | Raw]) -> str:
    """One compact JSON object and a newline, its members in the order given: strings UTF-8,
    not escaped to ASCII; :class:`Raw` texts as they are."""
    return (
        "{"
        + ",".join(
            f"{_name(name)}:{text.text if type(text) is Raw else _dumps(text)}"
            for name, text in members.items()
        )
        + "}\n"
    )


@cache
def _name(name: str) -> str:
    return json.dumps(name)


def format_line(snapshot: Snapshot) -> str:
    """The JSON Lines form of ``snapshot``, newline included: compact, UTF-8, UTC time."""
    return json_line(
        {
            "key": snapshot.key,
            "value": Raw(encode(snapshot.value)),
            "updated_at": format_time(snapshot.updated_at),
        }
    )


def trailer_line(count: int, sha256: str) -> str:
    """An export's last line: how many snapshot lines come before it, and their SHA-256."""
    return json.dumps({TRAILER: {"count": count, "sha256": sha256}}, separators=(",", ":")) + "\n"


# -- reading lines -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Trailer:
    """An export's last line, read: how many snapshot lines come before it, and their SHA-256."""

    count: int
    sha256: str


def read_line(raw: bytes) -> Snapshot | Trailer:
    """One line of an import file, a snapshot or the trailer; raise
    :class:`InvalidValueError` saying what is wrong."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidValueError(f"not UTF-8 (byte {exc.start + 1})") from None
    try:
        record = parse(text)
    except ValueError as exc:
        raise InvalidValueError(f"not valid JSON: {exc}") from None
    if type(record) is not dict:
        raise InvalidValueError(f"a line must be a JSON object, not {type(record).__name__}")
    if TRAILER in record:
        return _read_trailer(record)
    missing = [name for name in _FIELDS if name not in record]
    extra = [name for name in record if name not in _FIELDS]
    if missing or extra:
        parts = []
        if missing:
            parts.append("missing " + ", ".join(missing))
        if extra:
            parts.append("unexpected " + ", ".join(json.dumps(name) for name in extra))
        raise InvalidValueError(f"{'; '.join(parts)} (a line has key, value, updated_at)")
    try:
        key = check_key(record["key"])
    except (ValueError, TypeError) as exc:
        raise InvalidValueError(str(exc)) from None
    try:
        encode(record["value"])
    except (ValueError, TypeError) as exc:
        raise InvalidValueError(f"key {key!r}: {exc}") from None
    stamp = record["updated_at"]
    if type(stamp) is not str:
        raise InvalidValueError(f"key {key!r}: updated_at must be an ISO 8601 string")
    try:
        when = parse_time(stamp)
    except InvalidValueError as exc:
        raise InvalidValueError(f"key {key!r}: {exc}") from None
    return Snapshot(key, record["value"], when)


def _read_trailer(record: dict[str, JSONValue]) -> Trailer:
    body = record[TRAILER]
    if (
        len(record) != 1
        or type(body) is not dict
        or set(body) != {"count", "sha256"}
        or type(body["count"]) is not int
        or body["count"] < 0
        or type(body["sha256"]) is not str
        or not _SHA256.fullmatch(body["sha256"])
    ):
        raise InvalidValueError(
            f'malformed export trailer (expected {{"{TRAILER}":{{"count":N,"sha256":"64 hex '
            'digits"}})'
        )
    return Trailer(body["count"], body["sha256"])
