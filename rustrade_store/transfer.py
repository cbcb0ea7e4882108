"""Snapshots in and out of a store: JSON Lines export and import, and copy between databases.

Every path streams, so memory stays bounded whatever the number of snapshots: export and copy
read the source a page at a time, import reads its file a line at a time. Import and copy write
through :meth:`SqlStore.restore_stream`, one transaction for the whole stream: a bad line, a
failed connection or an interrupt leaves the target exactly as it was.

The file's format (a line per snapshot, then a trailer) is in :mod:`rustrade_store._lines`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NoReturn

from ._errors import BadFileError, CopyMismatchError, InvalidValueError, TargetNotEmptyError
from ._lines import BOM, Trailer, format_line, read_line, trailer_line
from ._restore import RestoreReport
from .codec import BATCH_ROWS, encode

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator
    from typing import BinaryIO

    from ._sql import SqlStore
    from ._store import Snapshot

__all__ = [
    "BATCH_BYTES",
    "ExportWriter",
    "ImportCounts",
    "copy",
    "export",
    "import_lines",
    "verify",
]

BATCH_BYTES = 16 * 1024 * 1024
"""A batch is also cut once its values reach this many bytes, so large values stay bounded."""


# -- export --------------------------------------------------------------------------------


class ExportWriter:
    """Writes an export to a binary file: lines of snapshots, then :meth:`close` writes the
    trailer with their count and the SHA-256 of every byte written before it."""

    __slots__ = ("_out", "_sha", "count")

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._sha = hashlib.sha256()
        self.count = 0

    def write(self, snapshots: list[Snapshot]) -> None:
        data = "".join(format_line(snapshot) for snapshot in snapshots).encode("utf-8")
        self._sha.update(data)
        self._out.write(data)
        self.count += len(snapshots)

    def close(self) -> None:
        self._out.write(trailer_line(self.count, self._sha.hexdigest()).encode("ascii"))


async def export(
    store: SqlStore,
    out: BinaryIO,
    prefix: str = "",
    on_batch: Callable[[int], None] | None = None,
) -> int:
    """Write every snapshot whose key starts with ``prefix`` to ``out``, in key order, then the
    trailer; return the number of snapshots written. ``on_batch(done)`` hears of progress.

    The store is read a page at a time in separate transactions: a snapshot saved while the
    export runs may appear in its old or its new version.
    """
    writer = ExportWriter(out)
    chunk: list[Snapshot] = []
    async for snapshot in store.snapshots(prefix):
        chunk.append(snapshot)
        if len(chunk) == BATCH_ROWS:
            writer.write(chunk)
            chunk.clear()
            if on_batch is not None:
                on_batch(writer.count)
    writer.write(chunk)
    writer.close()
    if on_batch is not None:
        on_batch(writer.count)
    return writer.count


# -- import --------------------------------------------------------------------------------


@dataclass(slots=True)
class ImportCounts:
    """What an import found: valid snapshots, bad lines, a problem with the file as a whole
    (empty, no trailer, a trailer that does not match), and what the restore did."""

    snapshots: int = 0
    bad_lines: int = 0
    problem: str | None = None
    report: RestoreReport = field(default_factory=RestoreReport)


class _Reader:
    """Reads an import file line by line: snapshots in batches, bad lines reported, the trailer
    checked against the bytes before it."""

    __slots__ = ("_check", "_counts", "_lines", "_on_bad", "_sha", "_vet")

    def __init__(
        self,
        lines: BinaryIO,
        counts: ImportCounts,
        on_bad: Callable[[int, str], None],
        check_trailer: bool,
        vet: Callable[[Snapshot], None] | None = None,
    ) -> None:
        self._vet = vet
        self._lines = lines
        self._counts = counts
        self._on_bad = on_bad
        self._check = check_trailer
        self._sha = hashlib.sha256()

    def _bad(self, number: int, reason: str) -> None:
        self._counts.bad_lines += 1
        self._on_bad(number, reason)

    def batches(self) -> Iterator[list[Snapshot]]:
        """Batches of valid snapshots, until the first bad line; every line is checked either
        way, and the file as a whole at its end."""
        counts = self._counts
        batch: list[Snapshot] = []
        size = 0
        entries = 0  # lines that are not blank and not a trailer
        trailer: tuple[int, Trailer, str, int] | None = None  # line, trailer, digest, entries
        seen_any = False
        for number, raw in enumerate(self._lines, 1):
            seen_any = True
            line = raw[len(BOM) :] if number == 1 and raw.startswith(BOM) else raw
            if not line.strip():
                self._sha.update(raw)
                continue
            if trailer is not None and self._check:
                self._bad(
                    trailer[0],
                    "an export's trailer before the end of the file (exports joined together? "
                    "import each one, or add --no-trailer-check)",
                )
                trailer = None
            try:
                parsed = read_line(line)
                if self._vet is not None and not isinstance(parsed, Trailer):
                    self._vet(parsed)
            except InvalidValueError as exc:
                self._sha.update(raw)
                entries += 1
                self._bad(number, str(exc))
                continue
            if isinstance(parsed, Trailer):
                trailer = (number, parsed, self._sha.hexdigest(), entries)
                self._sha.update(raw)
                continue
            self._sha.update(raw)
            entries += 1
            counts.snapshots += 1
            if counts.bad_lines:
                continue  # nothing will be written now; keep checking for the report
            batch.append(parsed)
            size += len(line)
            if len(batch) == BATCH_ROWS or size >= BATCH_BYTES:
                yield batch
                batch = []
                size = 0
        if not seen_any:
            counts.problem = "empty (not even an export trailer)"
        elif self._check:
            counts.problem = self._trailer_problem(trailer)
        if batch and not counts.bad_lines and counts.problem is None:
            yield batch

    @staticmethod
    def _trailer_problem(found: tuple[int, Trailer, str, int] | None) -> str | None:
        if found is None:
            return (
                "no export trailer at its end, so it may be cut short (an export that did not "
                "finish); if the file is whole (made before exports had a trailer, or by hand), "
                "add --no-trailer-check"
            )
        number, trailer, digest, entries = found
        if trailer.count != entries:
            return (
                f"the export trailer on line {number} counts {trailer.count:,} snapshot(s) but "
                f"the file holds {entries:,}: lines were lost or added since the export"
            )
        if trailer.sha256 != digest:
            return (
                f"the file's SHA-256 differs from the export trailer's on line {number}: the file "
                "changed since the export"
            )
        return None


async def import_lines(
    store: SqlStore | None,
    lines: BinaryIO,
    on_bad: Callable[[int, str], None],
    on_batch: Callable[[int], None] | None = None,
    *,
    overwrite: bool = False,
    check_trailer: bool = True,
    report: RestoreReport | None = None,
    vet: Callable[[Snapshot], None] | None = None,
) -> ImportCounts:
    """Check every line of ``lines`` and, with a ``store``, write them all in one transaction.

    ``on_bad(line_number, reason)`` hears of each bad line. If there is any, or the file is
    empty, or (with ``check_trailer``) its trailer is missing or does not match the lines
    before it, nothing is written and :class:`BadFileError` is raised after the whole file was
    checked. Without a store (a dry run) the lines are only checked. A key given twice keeps
    the line with the later ``updated_at``. A stored snapshot newer than the file's, or of the
    same time with another value, is kept unless ``overwrite`` (see
    :meth:`SqlStore.restore_stream`); the counts are in ``report`` (pass one to read it while
    the import runs). ``vet(snapshot)`` checks each snapshot further: an
    :class:`InvalidValueError` it raises makes a bad line.
    """
    counts = ImportCounts(report=report if report is not None else RestoreReport())
    reader = _Reader(lines, counts, on_bad, check_trailer, vet)
    if store is None:
        for _ in reader.batches():
            pass
        _raise_if_bad(counts)
        return counts

    async def batches() -> AsyncIterator[list[Snapshot]]:
        done = 0
        for batch in reader.batches():
            yield batch
            done += len(batch)
            if on_batch is not None:
                on_batch(done)
        _raise_if_bad(counts)  # inside the transaction: it rolls back

    await store.restore_stream(batches(), overwrite=overwrite, report=counts.report)
    return counts


def _raise_if_bad(counts: ImportCounts) -> None:
    reasons = []
    if counts.bad_lines:
        reasons.append(f"{counts.bad_lines} bad line(s)")
    if counts.problem is not None:
        reasons.append(counts.problem)
    if reasons:
        raise BadFileError(f"{'; '.join(reasons)}; nothing was imported")


# -- copy ----------------------------------------------------------------------------------


async def copy(
    source: SqlStore,
    target: SqlStore,
    *,
    merge: bool = False,
    overwrite: bool = False,
    on_batch: Callable[[int], None] | None = None,
    report: RestoreReport | None = None,
) -> RestoreReport:
    """Copy every snapshot of ``source`` into ``target``, ``updated_at`` kept; return the
    restore's report.

    The target is written in one transaction (all or nothing), then both are read again and
    compared, else :class:`CopyMismatchError`. A target that already holds snapshots is refused
    unless ``merge``. Merging, the newer snapshot of a key wins: a target's snapshot newer than
    the source's, or of the same time with another value, is kept and counted (``newer``,
    ``conflicting``), unless ``overwrite``: then the source's value replaces it at a time just
    past the stored one. The comparison checks exactly that: every source snapshot is in the
    target as it is in the source, or kept (or overwritten) as counted; the target's other
    keys are left out of it.
    """
    if overwrite and not merge:
        raise ValueError("overwrite applies to a merge only: give merge=True")
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

    report = report if report is not None else RestoreReport()
    await target.restore_stream(batches(), overwrite=overwrite, report=report)
    if merge:
        await _verify_merge(source, target, report, overwrite)
    else:
        await verify(source, target)
    return report


async def verify(source: SqlStore, target: SqlStore) -> int:
    """Check that ``target`` holds every snapshot of ``source`` exactly and nothing else,
    reading both in key order; return how many were compared."""
    compared = 0
    theirs = aiter(target.snapshots())
    other = await anext(theirs, None)
    async for mine in source.snapshots():
        if other is not None and other.key < mine.key:
            _mismatch(f"key {other.key!r} is in {target.url} but not in {source.url}")
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
    if other is not None:
        _mismatch(f"key {other.key!r} is in {target.url} but not in {source.url}")
    return compared


async def _verify_merge(
    source: SqlStore, target: SqlStore, report: RestoreReport, overwrite: bool
) -> None:
    """Check what a merge promised: each source snapshot is in the target as in the source, or
    (as many as the report counts) kept there because the target's is newer or of the same
    time with another value, or with ``overwrite`` written there at a later time."""
    kept_newer = kept_conflicting = overwritten = 0
    theirs = aiter(target.snapshots())
    other = await anext(theirs, None)
    async for mine in source.snapshots():
        while other is not None and other.key < mine.key:
            other = await anext(theirs, None)
        if other is None or other.key != mine.key:
            _mismatch(f"key {mine.key!r} is in {source.url} but not in {target.url}")
        same_value = encode(other.value) == encode(mine.value)
        if same_value and other.updated_at == mine.updated_at:
            pass
        elif overwrite and same_value and other.updated_at > mine.updated_at:
            overwritten += 1
        elif not overwrite and other.updated_at > mine.updated_at:
            kept_newer += 1
        elif not overwrite and other.updated_at == mine.updated_at:
            kept_conflicting += 1
        else:
            _mismatch(
                f"key {mine.key!r} has updated_at {other.updated_at.isoformat()} in "
                f"{target.url}{'' if same_value else ' and another value'}, where the merge "
                f"wrote {mine.updated_at.isoformat()}"
            )
        other = await anext(theirs, None)
    found = (kept_newer, kept_conflicting, overwritten)
    promised = (0, 0, report.overwritten) if overwrite else (report.newer, report.conflicting, 0)
    if found != promised:
        _mismatch(
            f"{target.url} holds {kept_newer} newer snapshot(s), {kept_conflicting} of the same "
            f"time with another value and {overwritten} overwritten, where the merge counted "
            f"{promised[0]}, {promised[1]} and {promised[2]}"
        )


def _mismatch(what: str) -> NoReturn:
    raise CopyMismatchError(
        f"verification failed: {what} (did something write to either database during the "
        "copy? stop the bots and copy again)"
    )
