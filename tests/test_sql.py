"""What the SQL store offers beyond the contract, on every backend."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import text

from rustrade_store import (
    InMemoryStore,
    InvalidKeyError,
    InvalidValueError,
    Snapshot,
    SqlStore,
    StorageError,
    ValueTypeError,
    create_engine,
)
from rustrade_store._statements import prefix_end
from rustrade_store.testing import assert_same_json

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from sqlalchemy import URL


async def test_load_snapshot_tells_stored_null_from_missing(store: SqlStore) -> None:
    assert await store.load_snapshot("k") is None
    await store.save("k", None)
    snapshot = await store.load_snapshot("k")
    assert snapshot is not None
    assert snapshot.key == "k"
    assert snapshot.value is None


async def test_updated_at_is_utc_and_moves_on_every_save(store: SqlStore) -> None:
    before = datetime.now(UTC)
    await store.save("k", 1)
    first = await store.load_snapshot("k")
    await asyncio.sleep(0.002)
    await store.save("k", 2)
    second = await store.load_snapshot("k")
    assert first is not None
    assert second is not None
    assert first.updated_at.tzinfo is UTC
    assert before - timedelta(seconds=1) <= first.updated_at < second.updated_at
    assert second.updated_at <= datetime.now(UTC) + timedelta(seconds=1)


async def test_delete_reports_whether_the_key_was_there(store: SqlStore) -> None:
    await store.save("k", 1)
    assert await store.delete("k") is True
    assert await store.delete("k") is False
    assert await store.load("k") is None


async def test_keys_stream_in_code_point_order(store: SqlStore) -> None:
    keys = ["b", "a", "B", "ä", "a/1", "a/0", "😀", "z"]
    await store.save_many(dict.fromkeys(keys, 0))
    assert [key async for key in store.keys()] == sorted(keys)


async def test_keys_page_through_more_than_one_page(store: SqlStore) -> None:
    keys = [f"bot/{index:05d}" for index in range(2500)]
    await store.save_many(dict.fromkeys(keys, 1))
    assert [key async for key in store.keys("bot/")] == keys
    assert await store.count("bot/") == 2500


async def test_prefix_is_matched_literally(store: SqlStore) -> None:
    keys = ["a_b", "axb", "a%b", "aXXb", "a\\b", "a\\xb", "A_b", "a_", "a_b/1"]
    await store.save_many(dict.fromkeys(keys, 0))
    assert [key async for key in store.keys("a_")] == ["a_", "a_b", "a_b/1"]
    assert [key async for key in store.keys("a_b")] == ["a_b", "a_b/1"]
    assert [key async for key in store.keys("a%")] == ["a%b"]
    assert [key async for key in store.keys("a\\")] == ["a\\b", "a\\xb"]
    assert [key async for key in store.keys("A")] == ["A_b"]
    assert await store.count("a_") == 3


def test_prefix_end_is_the_next_string_in_code_point_order() -> None:
    assert prefix_end("ab") == "ac"
    assert prefix_end("a\U0010ffff") == "b"
    assert prefix_end("\U0010ffff") is None
    assert prefix_end("\ud7ff") == "\ue000"


async def test_snapshots_yield_values_and_timestamps(store: SqlStore) -> None:
    await store.save_many({"x/1": {"a": 1.0}, "x/2": [None], "y": 0})
    found = [snapshot async for snapshot in store.snapshots("x/")]
    assert [snapshot.key for snapshot in found] == ["x/1", "x/2"]
    assert_same_json(found[0].value, {"a": 1.0})
    assert all(snapshot.updated_at.tzinfo is UTC for snapshot in found)


async def test_saving_while_listing_does_not_deadlock(store: SqlStore) -> None:
    await store.save_many({f"k{index}": index for index in range(5)})
    async for key in store.keys():
        await store.save(key, -1)
    assert set((await store.load_many([f"k{i}" for i in range(5)])).values()) == {-1}


async def test_restore_keeps_the_given_timestamps(store: SqlStore) -> None:
    when = datetime(2025, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)
    await store.restore([Snapshot("k", {"v": 1}, when)])
    snapshot = await store.load_snapshot("k")
    assert snapshot == Snapshot("k", {"v": 1}, when)


async def test_count_and_is_empty(store: SqlStore) -> None:
    assert await store.is_empty()
    await store.save_many({"a": 1, "b": 2})
    assert await store.count() == 2
    assert not await store.is_empty()


async def test_prefix_that_is_not_a_key_is_refused(store: SqlStore) -> None:
    with pytest.raises(InvalidKeyError):
        await store.count("a\x00")


def _family(store: SqlStore) -> str:
    """The dialect's family: SQLAlchemy names MariaDB "mysql" or "mariadb" by the URL used."""
    name = store.engine.dialect.name
    return "mysql" if name in ("mysql", "mariadb") else name


async def test_the_column_holds_the_json_document_itself(store: SqlStore) -> None:
    await store.save("k", {"pnl": -12.5, "halted": True})
    await store.save("n", None)
    key = store.engine.dialect.identifier_preparer.quote("key")  # reserved word in MySQL
    extract = {
        "sqlite": "SELECT json_extract(value, '$.pnl'), json_type(value) FROM snapshots "
        f"WHERE {key} = 'k'",
        "postgresql": "SELECT (value->>'pnl')::float, json_typeof(value) FROM snapshots "
        f"WHERE {key} = 'k'",
        "mysql": "SELECT CAST(json_value(value, '$.pnl') AS DOUBLE), lower(json_type(value)) "
        f"FROM snapshots WHERE {key} = 'k'",
    }[_family(store)]
    null_check = f"SELECT value IS NULL FROM snapshots WHERE {key} = 'n'"
    async with store.engine.connect() as connection:
        assert tuple((await connection.execute(text(extract))).one()) == (-12.5, "object")
        assert not (await connection.execute(text(null_check))).scalar()


async def test_closed_store_raises_storage_error(store: SqlStore) -> None:
    await store.aclose()
    with pytest.raises(StorageError, match="closed"):
        await store.load("k")


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ]
)
def durable_url(request: pytest.FixtureRequest) -> URL:
    """A migrated database that outlives its store: an SQLite file, PostgreSQL or MariaDB."""
    url: URL = request.getfixturevalue(f"{request.param}_url")
    return url


async def test_a_reopened_store_sees_earlier_saves(durable_url: URL) -> None:
    async with SqlStore.from_url(durable_url) as first:
        await first.save("reopen/BTCUSDT", {"halted": True})
    async with SqlStore.from_url(durable_url) as second:
        assert await second.load("reopen/BTCUSDT") == {"halted": True}
        await second.delete("reopen/BTCUSDT")


async def test_a_store_handed_an_engine_leaves_it_open(sqlite_url: URL) -> None:
    owner = SqlStore.from_url(sqlite_url)
    borrower = SqlStore(owner.engine)
    await borrower.save("k", 1)
    await borrower.aclose()
    assert await owner.load("k") == 1
    await owner.aclose()


async def test_concurrent_batches_over_the_same_keys_do_not_deadlock(store: SqlStore) -> None:
    """Batches name the same keys in opposite orders; rows are written in key order, so their
    row locks are always taken in one order and no two transactions wait on each other."""
    keys = [f"shared/{index:02d}" for index in range(20)]

    def batch(number: int) -> dict[str, int]:
        ordered = keys if number % 2 else keys[::-1]
        return dict.fromkeys(ordered, number)

    for _ in range(5):
        results = await asyncio.gather(
            *(store.save_many(batch(number)) for number in range(16)), return_exceptions=True
        )
        assert [error for error in results if error is not None] == []
    values = set((await store.load_many(keys)).values())
    assert len(values) == 1
    assert values <= set(range(16))


async def test_restore_stream_writes_every_batch_in_one_transaction(store: SqlStore) -> None:
    when = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)

    async def batches() -> AsyncIterator[list[Snapshot]]:
        for start in range(0, 2500, 1000):
            yield [Snapshot(f"k/{i:04d}", {"i": i}, when) for i in range(start, start + 1000)]
        yield [Snapshot("dup", 1, when), Snapshot("dup", 2, when)]  # the last one wins

    report = await store.restore_stream(batches())
    assert (report.added, report.total, report.state) == (3001, 3001, "committed")
    assert await store.count() == 3001
    assert await store.load_snapshot("dup") == Snapshot("dup", 2, when)
    assert await store.load_snapshot("k/2999") == Snapshot("k/2999", {"i": 2999}, when)


async def test_restore_stream_failing_late_leaves_everything_as_it_was(store: SqlStore) -> None:
    await store.save("kept", "old")
    when = datetime(2025, 1, 2, tzinfo=UTC)

    async def batches() -> AsyncIterator[list[Snapshot]]:
        yield [Snapshot(f"new/{i}", i, when) for i in range(1000)]
        yield [Snapshot("kept", "new", when)]
        raise InvalidKeyError("the source went bad after two batches")

    with pytest.raises(InvalidKeyError, match="went bad"):
        await store.restore_stream(batches())

    async def bad_value() -> AsyncIterator[list[Snapshot]]:
        yield [Snapshot("kept", "newer", when)]
        yield [Snapshot("nan", float("nan"), when)]

    with pytest.raises(InvalidValueError, match="'nan'"):
        await store.restore_stream(bad_value())
    assert await store.load("kept") == "old"
    assert await store.count() == 1


@pytest.mark.postgres
async def test_restore_stream_is_not_replayed_after_a_lost_connection(postgres_url: URL) -> None:
    """A connection killed mid-stream fails the whole stream: a retry would commit only the
    batches that were not consumed yet."""
    when = datetime(2025, 1, 2, tzinfo=UTC)
    async with SqlStore.from_url(postgres_url) as store:
        await store.is_empty()
        async with store.engine.begin() as connection:
            await connection.execute(text("DELETE FROM snapshots"))

        async def batches() -> AsyncIterator[list[Snapshot]]:
            yield [Snapshot(f"first/{i}", i, when) for i in range(10)]
            killer = create_engine(postgres_url)
            try:
                async with killer.connect() as connection:
                    await connection.execute(
                        text(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                        )
                    )
            finally:
                await killer.dispose()
            yield [Snapshot(f"second/{i}", i, when) for i in range(10)]

        with pytest.raises(StorageError, match="restore failed"):
            await store.restore_stream(batches())
        assert await store.count() == 0


@pytest.mark.parametrize(
    ("when", "error", "words"),
    [
        (
            datetime(2026, 1, 1),
            InvalidValueError,
            "updated_at 2026-01-01T00:00:00 has no time zone",
        ),
        ("2026-01-01T00:00:00+00:00", ValueTypeError, "updated_at is a str"),
        (None, ValueTypeError, "updated_at is a NoneType"),
    ],
)
async def test_restore_refuses_a_bad_timestamp_and_writes_nothing(
    store: SqlStore, when: object, error: type[Exception], words: str
) -> None:
    good = Snapshot("a", 1, datetime(2026, 1, 1, tzinfo=UTC))
    with pytest.raises(error, match=f"key 'b': {words}"):
        await store.restore([good, Snapshot("b", 2, when)])  # type: ignore[arg-type]
    assert await store.is_empty()


@pytest.fixture(params=["memory", "sqlite"])
async def one_writer_store(
    request: pytest.FixtureRequest, sqlite_url: URL
) -> AsyncIterator[SqlStore]:
    """A store that runs its operations one at a time: SQLite in memory or in a file."""
    opened = InMemoryStore() if request.param == "memory" else SqlStore.from_url(sqlite_url)
    async with opened:
        yield opened


async def test_an_operation_queued_behind_another_can_be_cancelled(
    one_writer_store: SqlStore,
) -> None:
    """Where operations run one at a time (SQLite), one still waiting its turn has touched
    nothing: cancelling it (here by a timeout) is immediate, and it never runs later."""
    store = one_writer_store
    release = asyncio.Event()
    started = asyncio.Event()
    when = datetime(2026, 1, 1, tzinfo=UTC)

    async def slow_batches() -> AsyncIterator[list[Snapshot]]:
        yield [Snapshot("first", 1, when)]
        started.set()
        await release.wait()

    holder = asyncio.create_task(store.restore_stream(slow_batches()))
    await started.wait()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(store.save("queued", 1), 0.2)
    release.set()
    assert (await holder).added == 1
    assert await store.load_many(["first", "queued"]) == {"first": 1, "queued": None}
