"""restore and restore_stream (import, copy): counted against what is stored, never replacing
newer state unless told to, and stopped by a cancellation at once, rolled back."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest

from rustrade_store import RestoreReport, Snapshot, SqlStore

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


async def test_a_restore_counts_what_it_found_and_keeps_newer_state(store: SqlStore) -> None:
    now = datetime.now(UTC)
    old, older = now - timedelta(hours=1), now - timedelta(hours=2)
    await store.restore(
        [
            Snapshot("replaced", "stored", older),
            Snapshot("newer", "stored", now),
            Snapshot("conflicting", "stored", old),
            Snapshot("unchanged", "same", old),
        ]
    )
    report = await store.restore(
        [
            Snapshot("added", "file", old),
            Snapshot("replaced", "file", old),
            Snapshot("newer", "file", old),
            Snapshot("conflicting", "file", old),
            Snapshot("unchanged", "same", old),
        ]
    )
    found = (report.added, report.replaced, report.newer, report.conflicting, report.unchanged)
    assert found == (1, 1, 1, 1, 1)
    assert (report.overwritten, report.written, report.total, report.state) == (
        0,
        2,
        5,
        "committed",
    )
    assert await store.load_many(["added", "replaced", "newer", "conflicting"]) == {
        "added": "file",
        "replaced": "file",
        "newer": "stored",
        "conflicting": "stored",
    }


async def test_overwrite_replaces_newer_state_at_a_time_past_it(store: SqlStore) -> None:
    """Forced rows never take a time back: each gets one past the stored time (or now)."""
    now = datetime.now(UTC)
    await store.restore([Snapshot("newer", "stored", now), Snapshot("same", "stored", now)])
    report = await store.restore(
        [Snapshot("newer", "file", now - timedelta(days=1)), Snapshot("same", "file", now)],
        overwrite=True,
    )
    assert (report.newer, report.conflicting, report.overwritten) == (1, 1, 2)
    for key in ("newer", "same"):
        snapshot = await store.load_snapshot(key)
        assert snapshot is not None
        assert snapshot.value == "file"
        assert snapshot.updated_at > now


async def test_times_before_the_year_1000_order_as_times(store: SqlStore) -> None:
    """A restored time with a year of fewer than four digits is kept and ordered as a time (on
    SQLite, where times are text, it was written unpadded and the restore failed reading it)."""
    ancient = datetime(5, 1, 2, 3, 4, 5, 6, UTC)
    report = await store.restore([Snapshot("ancient", "old", ancient)])
    assert report.written == 1
    assert await store.load_snapshot("ancient") == Snapshot("ancient", "old", ancient)
    await store.restore([Snapshot("ancient", "older", ancient - timedelta(days=1))])
    assert await store.load("ancient") == "old"
    await store.save("ancient", "new")
    assert await store.load("ancient") == "new"


async def test_a_cancelled_restore_stream_stops_at_once_and_rolls_back(store: SqlStore) -> None:
    """Cancelled while its source is slow (an import reading a file, a copy reading another
    database), a restore does not wait for the stream: it rolls back and the store works."""
    when = datetime.now(UTC) - timedelta(minutes=1)
    written = asyncio.Event()

    async def batches() -> AsyncIterator[list[Snapshot]]:
        yield [Snapshot(f"k/{index}", index, when) for index in range(500)]
        written.set()
        await asyncio.Event().wait()  # a source that never ends
        yield []

    report = RestoreReport()
    restoring = asyncio.create_task(store.restore_stream(batches(), report=report))
    await written.wait()
    restoring.cancel()
    with pytest.raises(asyncio.CancelledError):
        await restoring
    assert report.state == "rolled back"
    assert report.added == 500
    assert await store.count() == 0
    await store.save("after", 1)
    assert await store.load("after") == 1


@pytest.mark.parametrize("overwrite", [False, True], ids=["kept", "overwrite"])
async def test_a_key_given_again_in_a_later_batch_keeps_its_latest_time(
    store: SqlStore, overwrite: bool
) -> None:
    """A stream's own older line, 1,000 lines after the newer one of its key, loses to it,
    with ``overwrite`` too: overwrite forces the stream over what was stored before it, not
    over the stream's own lines (an import lost the newer line so)."""
    day, hour = datetime.now(UTC) - timedelta(days=1), timedelta(hours=1)
    await store.restore([Snapshot("kept", "stored", day), Snapshot("again", "stored", day)])

    async def batches() -> AsyncIterator[list[Snapshot]]:
        yield [
            Snapshot("k", "newer", day),
            Snapshot("kept", "file", day - hour),
            Snapshot("again", "file", day - 2 * hour),
        ]
        yield [Snapshot(f"filler/{index:04d}", index, day) for index in range(1000)]
        yield [
            Snapshot("k", "older", day - hour),
            Snapshot("kept", "file, older", day - 2 * hour),
            Snapshot("again", "file, newer", day - hour),
        ]

    report = await store.restore_stream(batches(), overwrite=overwrite)
    assert await store.load_snapshot("k") == Snapshot("k", "newer", day)
    assert await store.load_many(["kept", "again"]) == (
        {"kept": "file", "again": "file, newer"}
        if overwrite
        else {"kept": "stored", "again": "stored"}
    )
    if overwrite:  # a key given twice counts once (without overwrite: twice, as before)
        assert (report.added, report.newer, report.overwritten, report.total) == (1001, 2, 2, 1003)
        again = await store.load_snapshot("again")
        assert again is not None
        assert again.updated_at > datetime.now(UTC) - timedelta(minutes=1)
