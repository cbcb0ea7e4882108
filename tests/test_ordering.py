"""The write-ordering rule: a write carrying an older save time than the stored one never
replaces it, on every path; save times strictly increase; a refusal by a time in the writer's
future is a clock skew, named as such."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest

from rustrade_store import ClockSkewError, Snapshot, SqlStore, clock

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable


def stepped_back(by: timedelta) -> Callable[[], datetime]:
    """A wall clock running ``by`` behind the real one."""

    def behind() -> datetime:
        return datetime.now(UTC) - by

    return behind


async def stored_time(store: SqlStore, key: str) -> datetime:
    snapshot = await store.load_snapshot(key)
    assert snapshot is not None
    return snapshot.updated_at


async def test_save_times_increase_when_the_wall_clock_steps_back(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.save("k", 1)
    first = await stored_time(store, "k")
    monkeypatch.setattr(clock, "now", stepped_back(timedelta(hours=1)))
    await store.save("k", 2)
    await store.save("k", 3)
    assert await store.load("k") == 3
    assert await stored_time(store, "k") > first


async def test_an_older_snapshot_never_replaces_a_newer_one(store: SqlStore) -> None:
    """restore (import, copy) writes its snapshots' own times: an older one is kept out."""
    base = datetime.now(UTC) - timedelta(minutes=1)
    await store.restore([Snapshot("k", "newer", base), Snapshot("j", "j1", base)])
    await store.restore([Snapshot("k", "older", base - timedelta(seconds=1))])
    await store.restore([Snapshot("j", "j2", base + timedelta(seconds=1))])
    assert await store.load_many(["k", "j"]) == {"k": "newer", "j": "j2"}
    assert await stored_time(store, "k") == base


async def test_a_write_ordered_before_a_newer_one_returns_normally(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stored time later than the write's own but not in the writer's future: the write was
    ordered before the newer one, so it returns normally and changes nothing."""
    stored = datetime.now(UTC) - timedelta(seconds=1)
    await store.restore([Snapshot("k", "newer", stored), Snapshot("j", "newer", stored)])
    monkeypatch.setattr(clock, "next_save_time", stepped_back(timedelta(seconds=30)))
    await store.save("k", "older")
    await store.save_many({"j": "older", "fresh": 1})
    assert not await store.delete("k")
    monkeypatch.undo()
    assert await store.load_many(["k", "j", "fresh"]) == {"k": "newer", "j": "newer", "fresh": 1}


@pytest.mark.parametrize("write", ["save", "save_many", "delete"])
async def test_a_stored_time_in_the_writers_future_is_a_clock_skew(
    store: SqlStore, write: str
) -> None:
    """Another writer's clock is ahead: the write is refused, names both times, and writes
    nothing (save_many: none of its items)."""
    ahead = datetime.now(UTC) + timedelta(hours=1)
    await store.restore([Snapshot("k", "from the future", ahead)])
    writes: dict[str, Callable[[], Awaitable[object]]] = {
        "save": lambda: store.save("k", "now"),
        "save_many": lambda: store.save_many({"other": 1, "k": "now"}),
        "delete": lambda: store.delete("k"),
    }
    with pytest.raises(ClockSkewError) as refused:
        await writes[write]()
    message = str(refused.value)
    assert ahead.isoformat() in message
    assert "clock" in message
    assert await store.load_many(["k", "other"]) == {"k": "from the future", "other": None}
