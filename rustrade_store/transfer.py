"""Snapshots in and out of a store: JSON Lines export and import, and copy between databases.

Every path streams, so memory stays bounded whatever the number of snapshots: export and copy
read the source a page at a time, import reads its file a line at a time. Import and copy write
through :meth:`SqlStore.restore_stream`, one transaction for the whole stream: a bad line, a
failed connection or an interrupt leaves the target exactly as it was.

One line of the file is one snapshot, a JSON object with exactly three members::

    {"key":"bot1/BTCUSDT","value":{"halted":true},"updated_at":"2026-11-26T12:03:45.123456+00:00"}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, NoReturn

from .codec import check_key, encode, parse
from .errors import (
    BadFileError,
    CopyMismatchError,
    InvalidValueError,
    TargetNotEmptyError,
)
from .store import Snapshot

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator
    from typing import BinaryIO

    from .codec import JSONValue
    from .sql import SqlStore

__all__ = [
    "BATCH_BYTES",
    "BATCH_ROWS",
    "ImportCounts",
    "copy",
    "export",
    "format_line",
    "import_lines",
    "parse_json",
    "parse_line",
    "verify",
]

BATCH_ROWS = 1000
"""Snapshots written per statement by import and copy."""

BATCH_BYTES = 16 * 1024 * 1024
"""A batch is also cut once its values reach this many bytes, so large values stay bounded."""

_FIELDS = ("key", "value", "updated_at")
_BOM = b"\xef\xbb\xbf"


# -- strict JSON from outside --------------------------------------------------------------


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


# -- one line, one snapshot ----------------------------------------------------------------


def format_line(snapshot: Snapshot) -> str:
    """The JSON Lines form of ``snapshot``, newline included: compact, UTF-8, UTC time."""
    when = snapshot.updated_at.astimezone(UTC).isoformat(timespec="microseconds")
    key = json.dumps(snapshot.key, ensure_ascii=False)
    return f'{{"key":{key},"value":{encode(snapshot.value)},"updated_at":"{when}"}}\n'


def parse_line(raw: bytes) -> Snapshot:
    """Parse one line of an export; raise :class:`InvalidValueError` saying what is wrong."""
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
    return Snapshot(key, record["value"], _parse_time(record["updated_at"], key))


def _parse_time(stamp: object, key: str) -> datetime:
    if type(stamp) is not str:
        raise InvalidValueError(f"key {key!r}: updated_at must be an ISO 8601 string")
    try:
        when = datetime.fromisoformat(stamp)
    except ValueError:
        raise InvalidValueError(f"key {key!r}: updated_at {stamp!r} is not ISO 8601") from None
    if when.tzinfo is None:
        raise InvalidValueError(
            f"key {key!r}: updated_at {stamp!r} has no time zone (add +00:00 for UTC)"
        )
    return when.astimezone(UTC)


# -- export --------------------------------------------------------------------------------


async def export(store: SqlStore, out: BinaryIO, prefix: str = "") -> int:
    """Write every snapshot whose key starts with ``prefix`` to ``out``, in key order.

    The store is read a page at a time in separate transactions: a snapshot saved while the
    export runs may appear in its old or its new version. Returns the number written.
    """
    written = 0
    chunk: list[str] = []
    async for snapshot in store.snapshots(prefix):
        chunk.append(format_line(snapshot))
        if len(chunk) == BATCH_ROWS:
            out.write("".join(chunk).encode("utf-8"))
            written += len(chunk)
            chunk.clear()
    out.write("".join(chunk).encode("utf-8"))
    return written + len(chunk)


# -- import --------------------------------------------------------------------------------


@dataclass(slots=True)
class ImportCounts:
    """What an import found: valid snapshots and bad lines."""

    snapshots: int = 0
    bad_lines: int = 0


def _read_batches(
    lines: BinaryIO, counts: ImportCounts, on_bad: Callable[[int, str], None]
) -> Iterator[list[Snapshot]]:
    """Batches of valid snapshots, until the first bad line; every line is checked either way."""
    batch: list[Snapshot] = []
    size = 0
    for number, raw in enumerate(lines, 1):
        line = raw[len(_BOM) :] if number == 1 and raw.startswith(_BOM) else raw
        if not line.strip():
            continue
        try:
            snapshot = parse_line(line)
        except InvalidValueError as exc:
            counts.bad_lines += 1
            on_bad(number, str(exc))
            continue
        counts.snapshots += 1
        if counts.bad_lines:
            continue  # nothing will be written now; keep checking for the report
        batch.append(snapshot)
        size += len(line)
        if len(batch) == BATCH_ROWS or size >= BATCH_BYTES:
            yield batch
            batch = []
            size = 0
    if batch and not counts.bad_lines:
        yield batch


async def import_lines(
    store: SqlStore | None,
    lines: BinaryIO,
    on_bad: Callable[[int, str], None],
    on_batch: Callable[[int], None] | None = None,
) -> ImportCounts:
    """Check every line of ``lines`` and, with a ``store``, write them all in one transaction.

    ``on_bad(line_number, reason)`` hears of each bad line. If there is any, nothing is
    written and :class:`BadFileError` is raised after the whole file was checked. Without a
    store (a dry run) the lines are only checked. A key given twice ends with its last line.
    """
    counts = ImportCounts()
    if store is None:
        for _ in _read_batches(lines, counts, on_bad):
            pass
        _raise_if_bad(counts)
        return counts

    async def batches() -> AsyncIterator[list[Snapshot]]:
        done = 0
        for batch in _read_batches(lines, counts, on_bad):
            yield batch
            done += len(batch)
            if on_batch is not None:
                on_batch(done)
        _raise_if_bad(counts)  # inside the transaction: it rolls back

    await store.restore_stream(batches())
    return counts


def _raise_if_bad(counts: ImportCounts) -> None:
    if counts.bad_lines:
        raise BadFileError(f"{counts.bad_lines} bad line(s); nothing was imported")


# -- copy ----------------------------------------------------------------------------------


async def copy(
    source: SqlStore,
    target: SqlStore,
    *,
    merge: bool = False,
    on_batch: Callable[[int], None] | None = None,
) -> int:
    """Copy every snapshot of ``source`` into ``target``, ``updated_at`` kept; return the count.

    The target is written in one transaction (all or nothing), then both are read again and
    compared: same keys, values and timestamps, else :class:`CopyMismatchError`. A target that
    already holds snapshots is refused unless ``merge`` (source snapshots then replace those
    with the same key; the others stay and are left out of the comparison).
    """
    if not merge:
        present = await target.count()
        if present:
            raise TargetNotEmptyError(
                f"{target.url} already holds {present} snapshot(s); copy into an empty "
                "database, or merge into this one with --merge"
            )

    async def batches() -> AsyncIterator[list[Snapshot]]:
        batch: list[Snapshot] = []
        done = 0
        async for snapshot in source.snapshots():
            batch.append(snapshot)
            if len(batch) == BATCH_ROWS:
                yield batch
                done += len(batch)
                batch = []
                if on_batch is not None:
                    on_batch(done)
        yield batch
        if on_batch is not None:
            on_batch(done + len(batch))

    written = (await target.restore_stream(batches())).total
    await verify(source, target, merge=merge)
    return written


async def verify(source: SqlStore, target: SqlStore, *, merge: bool = False) -> int:
    """Check that ``target`` holds every snapshot of ``source`` exactly (and, without
    ``merge``, nothing else), reading both in key order; return how many were compared."""
    compared = 0
    theirs = aiter(target.snapshots())
    other = await anext(theirs, None)
    async for mine in source.snapshots():
        while other is not None and other.key < mine.key:
            if not merge:
                _mismatch(f"key {other.key!r} is in {target.url} but not in {source.url}")
            other = await anext(theirs, None)
        if other is None or other.key != mine.key:
            _mismatch(f"key {mine.key!r} is in {source.url} but not in {target.url}")
        if encode(other.value) != encode(mine.value):
            _mismatch(f"key {mine.key!r} has a different value in {target.url}")
        if other.updated_at != mine.updated_at:
            _mismatch(
                f"key {mine.key!r} has updated_at {other.updated_at.isoformat()} in "
                f"{target.url}, not {mine.updated_at.isoformat()}"
            )
        compared += 1
        other = await anext(theirs, None)
    if other is not None and not merge:
        _mismatch(f"key {other.key!r} is in {target.url} but not in {source.url}")
    return compared


def _mismatch(what: str) -> NoReturn:
    raise CopyMismatchError(
        f"verification failed: {what} (did something write to either database during the "
        "copy? stop the bots and copy again)"
    )
