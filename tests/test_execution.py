"""How the store executes: single statements in autocommit on engines it made, batches in one
transaction, concurrent saves in one statement, every statement through SQLAlchemy."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sqlite3
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import event, literal_column, select
from sqlalchemy.ext.asyncio import create_async_engine

from rustrade_store import (
    ClockSkewError,
    ConfigurationError,
    Snapshot,
    SqlStore,
    StorageError,
)
from rustrade_store._schema import snapshots

from .helpers import open_store

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from sqlalchemy import URL
    from sqlalchemy.ext.asyncio import AsyncEngine

    from rustrade_store import JSONValue

HANG_GUARD = 120.0
"""Seconds after which a call counts as hung, far above any timeout used here."""

SQLITE_TRIGGER = (
    "CREATE TRIGGER refuse_boom BEFORE INSERT ON snapshots WHEN NEW.key = 'boom' "
    "BEGIN SELECT RAISE(ABORT, 'boom refused'); END"
)
POSTGRES_TRIGGER = [
    "CREATE FUNCTION refuse_boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    "IF NEW.key = 'boom' THEN RAISE EXCEPTION 'boom refused'; END IF; RETURN NEW; END $$",
    "CREATE TRIGGER refuse_boom BEFORE INSERT ON snapshots FOR EACH ROW "
    "EXECUTE FUNCTION refuse_boom()",
]
MARIADB_TRIGGER = (
    "CREATE TRIGGER refuse_boom BEFORE INSERT ON snapshots FOR EACH ROW "
    "BEGIN IF NEW.`key` = 'boom' THEN "
    "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'boom refused'; END IF; END"
)
CREATES = {
    "memory": [SQLITE_TRIGGER],
    "sqlite": [SQLITE_TRIGGER],
    "postgres": POSTGRES_TRIGGER,
    "mariadb": [MARIADB_TRIGGER],
    "mariadb_scheme": [MARIADB_TRIGGER],
}
DROPS = {
    "memory": ["DROP TRIGGER refuse_boom"],
    "sqlite": ["DROP TRIGGER refuse_boom"],
    "postgres": ["DROP TRIGGER refuse_boom ON snapshots", "DROP FUNCTION refuse_boom()"],
    "mariadb": ["DROP TRIGGER refuse_boom"],
    "mariadb_scheme": ["DROP TRIGGER refuse_boom"],
}


@pytest.fixture
async def refusing(backend: str, store: SqlStore) -> AsyncIterator[SqlStore]:
    """The store, its table refusing (in the database, not in Python) any row keyed 'boom'."""
    await store.is_empty()
    async with store.engine.begin() as connection:
        for statement in CREATES[backend]:
            await connection.exec_driver_sql(statement)
    try:
        yield store
    finally:
        async with store.engine.begin() as connection:
            for statement in DROPS[backend]:
                await connection.exec_driver_sql(statement)


async def test_store_engine_autocommits_and_migrations_do_not(backend: str, store_url: URL) -> None:
    """Engines the store creates autocommit; the package's create_engine (migrations) does not."""
    from rustrade_store import create_engine

    async with open_store(backend, store_url) as store, store.engine.connect() as connection:
        raw = await connection.get_raw_connection()
        assert raw.dbapi_connection is not None
        assert connection.dialect.detect_autocommit_setting(raw.dbapi_connection)
    engine = create_engine(store_url)
    try:
        async with engine.connect() as connection:
            raw = await connection.get_raw_connection()
            assert raw.dbapi_connection is not None
            assert not connection.dialect.detect_autocommit_setting(raw.dbapi_connection)
    finally:
        await engine.dispose()


async def test_a_batch_the_database_refuses_writes_nothing(refusing: SqlStore) -> None:
    """save_many is one transaction on an autocommit engine: a row refused rolls back the rest."""
    await refusing.save("a", "old")
    with pytest.raises(StorageError, match="boom refused"):
        await refusing.save_many({"a": "new", "b": 2, "boom": 3, "c": 4})
    assert await refusing.load_many(["a", "b", "boom", "c"]) == {
        "a": "old",
        "b": None,
        "boom": None,
        "c": None,
    }
    # The connection went back to autocommit: a single save after the failure is kept.
    await refusing.save("d", 5)
    assert await refusing.load("d") == 5


async def test_a_single_save_the_database_refuses_is_a_storage_error(refusing: SqlStore) -> None:
    with pytest.raises(StorageError, match="save 'boom'"):
        await refusing.save("boom", 1)
    await refusing.save("fine", 1)
    assert await refusing.load_many(["boom", "fine"]) == {"boom": None, "fine": 1}


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
async def test_a_save_is_committed_when_it_returns(store: SqlStore, store_url: URL) -> None:
    """Another engine sees a save, and a failed batch's absence, as soon as the call returns."""
    async with SqlStore.from_url(store_url) as other:
        await store.save("k", {"v": 1})
        assert await other.load("k") == {"v": 1}
        await store.save_many({"k": {"v": 2}, "j": [1]})
        assert await other.load_many(["k", "j"]) == {"k": {"v": 2}, "j": [1]}


async def test_load_many_keeps_odd_and_repeated_keys(store: SqlStore) -> None:
    odd = ["бот/евро", "🤖/😀", "a b", "'; DROP TABLE snapshots; --", "100%_done\\", "A", "a"]
    values: dict[str, JSONValue] = {key: index for index, key in enumerate(odd)}
    values |= {f"bot/{index:02d}": [index] for index in range(20)}
    await store.save_many(values)
    asked = [*values, "missing", odd[0], "bot/03"]
    loaded = await store.load_many(asked)
    assert list(loaded) == list(dict.fromkeys(asked))
    assert loaded == values | {"missing": None}


def statements_through_sqlalchemy(engine: AsyncEngine) -> list[str]:
    """The statements SQLAlchemy executes on ``engine`` from now on."""
    seen: list[str] = []

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def _seen(*args: object) -> None:
        seen.append(str(args[2]))

    return seen


async def test_every_statement_goes_through_sqlalchemy(store: SqlStore) -> None:
    """Engine events (and so echo and instrumentation) see every statement of a save and a load."""
    await store.save("warm", 0)
    seen = statements_through_sqlalchemy(store.engine)
    await store.save("k", {"v": 1})
    assert await store.load("k") == {"v": 1}
    assert await store.load("missing") is None
    assert [statement.split()[0] for statement in seen] == ["INSERT", "SELECT", "SELECT"]


async def test_a_group_commit_refusal_reaches_only_its_own_caller(refusing: SqlStore) -> None:
    """In one batch of concurrent saves, a row the database refuses and a row refused by a
    stored time in the writer's future each fail their own caller; the others are written."""
    ahead = datetime.now(UTC) + timedelta(hours=1)
    await refusing.restore([Snapshot("ahead", "stored", ahead)])
    keys = ["a", "boom", "ahead", "b"]
    seen = statements_through_sqlalchemy(refusing.engine)
    results = await asyncio.gather(
        *(refusing.save(key, f"new {key}") for key in keys), return_exceptions=True
    )
    outcome = dict(zip(keys, results, strict=True))
    inserts = [statement for statement in seen if statement.startswith("INSERT")]
    # One batch, rejected; its halves and quarters down to the row at fault; and the row the
    # clock refused, written again in the transaction that reads why.
    assert len(inserts) == 1 + len(keys) + 1
    assert outcome["a"] is None
    assert outcome["b"] is None
    assert isinstance(outcome["boom"], StorageError)
    assert "boom refused" in str(outcome["boom"])
    assert isinstance(outcome["ahead"], ClockSkewError)
    assert ahead.isoformat() in str(outcome["ahead"])
    assert await refusing.load_many(keys) == {
        "a": "new a",
        "boom": None,
        "ahead": "stored",
        "b": "new b",
    }


HANDED_ENGINES = {
    "autocommit": lambda url: create_async_engine(url, isolation_level="AUTOCOMMIT"),
    # Autocommit as an execution option: the pool's own connections do not autocommit.
    "autocommit option, no rollback on return": lambda url: create_async_engine(
        url, skip_autocommit_rollback=True
    ).execution_options(isolation_level="AUTOCOMMIT"),
    "no autocommit": lambda url: create_async_engine(url),
}


@pytest.mark.parametrize("handed", list(HANDED_ENGINES))
async def test_a_handed_engine_keeps_every_save(store_url: URL, handed: str) -> None:
    """Whatever the settings of an engine handed to the store, every save is committed."""
    engine = HANDED_ENGINES[handed](store_url)
    try:
        async with SqlStore(engine) as store:
            await store.save("k", 1)
            await store.save_many({"j": 2})
            assert await store.load("k") == 1
            if store_url.get_backend_name() != "sqlite" or store_url.database:  # not :memory:
                async with SqlStore.from_url(store_url) as other:
                    assert await other.load_many(["k", "j"]) == {"k": 1, "j": 2}
    finally:
        await engine.dispose()


async def test_single_and_batch_writes_are_stored_alike(store: SqlStore) -> None:
    """A row written by save and one written by save_many hold the same column types and
    formats, and each is read back by the other's read."""
    value: JSONValue = {"pnl": [-0.0, 1e300, 5e-324, 2**100], "s": "\u0000🤖"}
    await store.save("direct", value)
    await store.save_many({"batch": value})
    async with store.engine.connect() as connection:
        rows: dict[str, object] = dict(
            (await connection.execute(select(snapshots.c.key, literal_column("updated_at")))).all()
        )
    direct, batch = rows["direct"], rows["batch"]
    assert type(direct) is type(batch)
    if isinstance(direct, str) and isinstance(batch, str):  # SQLite keeps the time as text
        assert len(direct) == len(batch), (direct, batch)
    assert await store.load("batch") == value
    assert await store.load_many(["direct"]) == {"direct": value}
    written = [await store.load_snapshot(key) for key in ("direct", "batch")]
    assert all(snapshot is not None and snapshot.value == value for snapshot in written)


@pytest.mark.postgres
async def test_connections_beyond_the_pool_size_are_closed_cleanly(
    postgres_url: URL, caplog: pytest.LogCaptureFixture
) -> None:
    """More concurrent calls than pooled connections: the extra ones are closed on return (I/O
    that must run where SQLAlchemy can await it, and that a cancellation must not cut short),
    with no error and none left open."""
    async with SqlStore.from_url(postgres_url, pool_size=1, max_overflow=8) as store:
        await store.save("warm", 0)
        with caplog.at_level(logging.ERROR, logger="sqlalchemy.pool"):
            await asyncio.gather(*(store.save(f"k{index}", index) for index in range(40)))
            loaded = await asyncio.gather(*(store.load(f"k{index}") for index in range(40)))
            rng = random.Random(1)
            for _ in range(30):  # and cancelled, so that some are mid-close
                saves = [asyncio.create_task(store.save(f"c{index}", index)) for index in range(30)]
                await asyncio.sleep(rng.uniform(0, 0.02))
                for save in saves:
                    save.cancel()
                await asyncio.gather(*saves, return_exceptions=True)
        assert loaded == list(range(40))
        pool_errors = [r.getMessage() for r in caplog.records if r.name.startswith("sqlalchemy")]
        assert pool_errors == []
        pool = store.engine.sync_engine.pool
        assert pool.checkedout() == 0  # type: ignore[attr-defined]
        assert pool.checkedin() <= 1  # type: ignore[attr-defined]


async def test_one_refused_row_costs_its_batch_a_few_statements(refusing: SqlStore) -> None:
    """A row the database refuses is found by halving its batch: a few statements more, not
    one per save, and the other 63 savers are written."""
    seen = statements_through_sqlalchemy(refusing.engine)
    keys = [f"k{index:02d}" for index in range(63)] + ["boom"]
    results = await asyncio.gather(*(refusing.save(key, 1) for key in keys), return_exceptions=True)
    assert [key for key, result in zip(keys, results, strict=True) if result] == ["boom"]
    inserts = [statement for statement in seen if statement.startswith("INSERT")]
    assert len(inserts) <= 1 + 2 * 6, f"{len(inserts)} statements for 64 saves"
    assert await refusing.count() == 63


@pytest.mark.parametrize("option", ["isolation_level", "skip_autocommit_rollback"])
def test_options_the_store_manages_are_refused(option: str) -> None:
    """An isolation level handed to from_url made every save return normally and vanish (the
    store ran it as autocommit, the engine rolled it back): it is refused by name instead."""
    options: dict[str, Any] = {option: "READ COMMITTED"}
    with pytest.raises(ConfigurationError, match=option):
        SqlStore.from_url("sqlite://", **options)


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_a_locked_database_times_out_once_for_a_whole_batch(store_url: URL) -> None:
    """Another process holds SQLite's write lock past the timeout: every save of the batch
    fails as a timeout after one attempt, not one attempt per save."""
    assert store_url.database is not None
    holder = sqlite3.connect(store_url.database, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        async with SqlStore.from_url(store_url, timeout=0.5) as store:
            await store.count()  # the schema check reads, which the lock allows
            seen = statements_through_sqlalchemy(store.engine)
            keys = [f"k{index}" for index in range(20)]
            results = await asyncio.gather(
                *(store.save(key, 1) for key in keys), return_exceptions=True
            )
            assert all(isinstance(result, StorageError) for result in results), results
            assert all("timed out" in str(result) for result in results)
            assert len([s for s in seen if s.startswith("INSERT")]) == 1
    finally:
        holder.execute("ROLLBACK")
        holder.close()


@contextlib.asynccontextmanager
async def writer_stalled(store: SqlStore) -> AsyncIterator[None]:
    """The store's one writer held, until the block ends, by a restore that never ends."""
    stalled = asyncio.Event()

    async def never_ending() -> AsyncIterator[list[Snapshot]]:
        yield [Snapshot("first", 1, datetime.now(UTC))]
        stalled.set()
        await asyncio.Event().wait()
        yield []

    restoring = asyncio.create_task(store.restore_stream(never_ending()))
    try:
        await stalled.wait()
        yield
    finally:
        restoring.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await restoring


@pytest.mark.parametrize("backend", ["sqlite", "memory"])
async def test_the_writer_lock_wait_is_bounded_by_the_timeout(backend: str, store_url: URL) -> None:
    """A save queued behind a restore that never ends gives up at its deadline."""
    store = open_store(backend, store_url, timeout=0.3)
    try:
        async with writer_stalled(store):
            with pytest.raises(StorageError, match="timed out"):
                await asyncio.wait_for(store.save("queued", 1), HANG_GUARD)
    finally:
        await store.aclose()


@pytest.mark.parametrize("backend", ["sqlite", "memory"])
async def test_each_queued_call_gives_up_at_its_own_deadline(backend: str, store_url: URL) -> None:
    """Calls queued at different moments behind a stalled writer each give up at their own
    deadline, not at the first one's; once the writer is free the queue serves again."""
    store = open_store(backend, store_url, timeout=1.0)
    try:
        async with writer_stalled(store):
            early = asyncio.create_task(store.save("early", 1))
            await asyncio.sleep(0.5)
            late = asyncio.create_task(store.save("late", 1))
            with pytest.raises(StorageError, match="timed out"):
                await asyncio.wait_for(early, HANG_GUARD)
            assert not late.done(), "the later call gave up at the earlier one's deadline"
            with pytest.raises(StorageError, match="timed out"):
                await asyncio.wait_for(late, HANG_GUARD)
        await asyncio.wait_for(store.save("after", 2), HANG_GUARD)
        assert await store.load("after") == 2
        assert await store.load("early") is None
    finally:
        await store.aclose()
