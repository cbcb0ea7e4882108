"""Writing snapshots with their own times (import, copy), all in one transaction.

Each snapshot replaces only an older stored one of its key; a newer one, or one of the same time
with another value, is kept and counted, unless ``overwrite``: then it is replaced at a time
just past the stored one (never back in time). Overwrite forces the snapshots over what was
stored before the restore, not over the stream's own: of a key given again in a later batch the
later time still wins, so a restore that overwrites remembers the time of each key it wrote.
Batches are written as they come and nothing is committed until the last one is in, so an error
anywhere (a bad snapshot, one raised by the batches, a cancellation) leaves the database as it
was. A stream is not retried on a lost connection: its batches cannot be replayed. A restore
whose COMMIT's answer was lost is not retried either: it raises
:class:`~rustrade_store.OutcomeUnknownError`, its report left at ``"committing"``. The batches
must not use the same store.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Literal

from . import _clock, _statements
from ._errors import OutcomeUnknownError
from ._executor import Attempt
from .codec import encode_rows

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
    from datetime import datetime

    from sqlalchemy.ext.asyncio import AsyncConnection

    from ._executor import Executor, Row
    from ._store import Snapshot
    from ._writes import Writes

__all__ = ["RestoreReport", "restore", "restore_stream"]

_TICK = timedelta(microseconds=1)


@dataclass(slots=True)
class RestoreReport:
    """What a restore found for each snapshot it was given, and how far it got.

    ``added``: the key was missing. ``replaced``: the stored snapshot was older. ``newer``: the
    stored snapshot was newer. ``conflicting``: same time, different value. ``unchanged``: same
    time, same value. With ``overwrite``, the ``newer`` and ``conflicting`` ones were written
    too (``overwritten``), at a time just past the stored one; without it they were kept.

    ``state`` is ``"writing"`` until the transaction is committed (``"committed"``) or rolled
    back (``"rolled back"``); ``"committing"`` while the COMMIT is in flight, and after it if
    the COMMIT failed or was interrupted: then whether it took effect is unknown.
    """

    added: int = 0
    replaced: int = 0
    newer: int = 0
    conflicting: int = 0
    unchanged: int = 0
    overwritten: int = 0
    state: Literal["writing", "committing", "committed", "rolled back"] = "writing"

    def _start(self) -> None:
        self.added = self.replaced = self.newer = self.conflicting = 0
        self.unchanged = self.overwritten = 0
        self.state = "writing"

    @property
    def total(self) -> int:
        """How many snapshots were counted: a key given twice in one batch counts once, and so
        does one given again in a later batch with ``overwrite`` (the stream's own older line
        is dropped); without, each batch's line is counted."""
        return self.added + self.replaced + self.newer + self.conflicting + self.unchanged

    @property
    def written(self) -> int:
        """How many snapshots were written."""
        return self.added + self.replaced + self.overwritten


async def restore(
    executor: Executor, writes: Writes, items: Iterable[Snapshot], *, overwrite: bool
) -> RestoreReport:
    """Write ``items`` as one batch, which a lost connection can replay."""
    batch = list(items)

    async def one_batch() -> AsyncIterator[Iterable[Snapshot]]:
        yield batch

    return await _restore(executor, writes, one_batch, overwrite, RestoreReport(), retry=True)


async def restore_stream(
    executor: Executor,
    writes: Writes,
    batches: AsyncIterable[Iterable[Snapshot]],
    *,
    overwrite: bool,
    report: RestoreReport | None,
) -> RestoreReport:
    """Write ``batches``, counting into ``report`` (a new one if ``None``)."""
    report = report if report is not None else RestoreReport()
    return await _restore(executor, writes, lambda: batches, overwrite, report, retry=False)


async def _restore(
    executor: Executor,
    writes: Writes,
    batches: Callable[[], AsyncIterable[Iterable[Snapshot]]],
    overwrite: bool,
    report: RestoreReport,
    *,
    retry: bool,
) -> RestoreReport:
    """Write the batches ``batches()`` gives in one transaction, counting into ``report``; a
    cancellation waits at most for the statement in flight, then rolls back."""
    attempt = Attempt()
    stored_rows = _statements.stored(executor.backend)

    async def work(connection: AsyncConnection) -> None:
        if attempt.maybe_applied:
            raise OutcomeUnknownError(
                f"restore on {executor.where}: the answer to its COMMIT was lost, so whether it "
                "was written is unknown; list or load the keys to see what is stored"
            )
        report._start()  # an attempt retried after a lost connection counts afresh
        streamed: dict[str, datetime] | None = {} if overwrite else None
        async for batch in batches():
            rows = encode_rows((item.key, item.value, item.updated_at) for item in batch)
            if rows:
                params = {"keys": executor.backend.keys_param([row["key"] for row in rows])}
                found = await executor.execute(connection, stored_rows, params)
                rows = _weigh(rows, {row[0]: (row[1], row[2]) for row in found}, report, streamed)
                await writes.restore_in(connection, rows, attempt)
        report.state = "committing"

    try:
        await executor.run(
            "restore",
            None,
            work,
            transaction=True,
            retry=retry,
            per_statement=True,
            attempt=attempt,
        )
    except BaseException:
        if report.state == "writing":
            report.state = "rolled back"
        raise
    report.state = "committed"
    return report


def _weigh(
    rows: list[Row],
    stored: dict[str, tuple[datetime, str]],
    report: RestoreReport,
    streamed: dict[str, datetime] | None,
) -> list[Row]:
    """Count each row against what is stored and return the rows to write.

    With ``overwrite``, ``streamed`` holds the time each key had in the stream's batches so
    far: a row no later than it is the stream's own older line and is dropped, uncounted, as
    it would lose without ``overwrite``; a row that would be refused gets a time just past the
    stored one, so that it applies and times never go back.
    """
    chosen = []
    for row in rows:
        key, given = row["key"], row["updated_at"]
        found = stored.get(key)
        if streamed is not None:
            earlier = streamed.get(key)
            if earlier is not None and given <= earlier:
                continue
            streamed[key] = given
            if earlier is not None:  # counted with its first line; forced again if that was
                if found is not None and found[0] >= given:
                    row["updated_at"] = _past(found[0])
                chosen.append(row)
                continue
        chosen.append(row)
        if found is None:
            report.added += 1
            continue
        when, text = found
        if when < given:
            report.replaced += 1
            continue
        if when == given and text == row["value"]:
            report.unchanged += 1
            continue
        if when == given:
            report.conflicting += 1
        else:
            report.newer += 1
        if streamed is not None:
            row["updated_at"] = _past(when)
            report.overwritten += 1
    return chosen


def _past(when: datetime) -> datetime:
    """A save time past ``when``: now, or one microsecond after it if it is not behind now."""
    return max(_clock.next_save_time(), when + _TICK)
