"""The write-ordering rule: a write carrying an older save time than the stored one never
replaces it, on every path; save times strictly increase; a refusal by a time in the writer's
future is a clock skew, named as such."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest

from rustrade_store import (
    ClockSkewError,
    ConflictError,
    Snapshot,
    SqlStore,
    StorageError,
    _clock,
)

from .helpers import BACKENDS_AND_POSTGRES_18

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from sqlalchemy import URL


@pytest.fixture(params=BACKENDS_AND_POSTGRES_18)
def backend(request: pytest.FixtureRequest) -> str:
    """Every backend, and PostgreSQL 18."""
    name: str = request.param
    return name


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
    monkeypatch.setattr(_clock, "now", stepped_back(timedelta(hours=1)))
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
    monkeypatch.setattr(_clock, "next_save_time", stepped_back(timedelta(seconds=30)))
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


async def test_compare_and_set_writes_only_over_the_snapshot_it_read(store: SqlStore) -> None:
    """A save based on a snapshot applies only while that snapshot is still stored: the bot's
    save in between makes the operator's write a ConflictError naming the stored time."""
    await store.save("bot1/breaker", {"halted": True})
    read = await store.load_snapshot("bot1/breaker")
    assert read is not None
    await store.save("bot1/breaker", {"halted": True, "losses": 4})
    newer = await stored_time(store, "bot1/breaker")
    with pytest.raises(ConflictError) as refused:
        await store.save("bot1/breaker", {"halted": False}, if_updated_at=read.updated_at)
    assert refused.value.stored_at == newer
    assert newer.isoformat() in str(refused.value)
    assert await store.load("bot1/breaker") == {"halted": True, "losses": 4}

    await store.save("bot1/breaker", {"halted": False}, if_updated_at=newer)
    assert await store.load("bot1/breaker") == {"halted": False}
    assert await stored_time(store, "bot1/breaker") > newer


async def test_compare_and_set_on_a_missing_key_and_only_if_absent(store: SqlStore) -> None:
    gone = datetime.now(UTC) - timedelta(seconds=1)
    with pytest.raises(ConflictError, match="deleted") as refused:
        await store.save("k", 1, if_updated_at=gone)
    assert refused.value.stored_at is None
    assert await store.load_snapshot("k") is None

    await store.save("k", 1, if_absent=True)
    with pytest.raises(ConflictError, match="exists"):
        await store.save("k", 2, if_absent=True)
    assert await store.load("k") == 1
    with pytest.raises(ValueError, match="not both"):
        await store.save("k", 3, if_absent=True, if_updated_at=gone)


async def test_every_save_of_a_key_in_one_batch_hears_a_clock_skew(store: SqlStore) -> None:
    """Two saves of one key written together, refused by a stored time in the writers'
    future: neither returns normally, since neither value was stored."""
    ahead = datetime.now(UTC) + timedelta(hours=1)
    await store.restore([Snapshot("k", "from the future", ahead)])
    results = await asyncio.gather(store.save("k", 1), store.save("k", 2), return_exceptions=True)
    assert all(isinstance(result, ClockSkewError) for result in results), results
    assert await store.load("k") == "from the future"


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_a_time_in_a_form_the_store_never_writes_is_an_error(
    store: SqlStore, store_url: URL
) -> None:
    """SQLite compares times as text: a row another program wrote with a 'T' sorts after every
    time the store writes, so saves over it would be refused for ever. Each says so."""
    await store.save("k", "stored")
    assert store_url.database is not None
    today = datetime.now(UTC).strftime("%Y-%m-%dT00:00:00")  # earlier, yet sorts after
    with sqlite3.connect(store_url.database) as raw:
        raw.execute("UPDATE snapshots SET updated_at = ? WHERE key = 'k'", (today,))
    with pytest.raises(StorageError, match="form"):
        await store.save("k", "new")
