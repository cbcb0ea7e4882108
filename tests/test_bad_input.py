"""The bad-input matrix: every way a caller or the environment can hand the store something
wrong, each refused with the right error type, a message naming the problem, and no stored state
changed.

Values and keys come from the packaged tables (``rustrade_store.testing.BAD_VALUES`` and
``BAD_KEYS``) and go through ``save``, ``save_many`` and ``load`` on every backend; the cases that
need a broken database or URL follow, each on the backends where it applies.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import text, update

from rustrade_store import SchemaError, SqlStore, StorageError, resolve_url, upgrade
from rustrade_store._schema import snapshots
from rustrade_store.testing import BAD_KEYS, BAD_VALUES

from .helpers import open_store

if TYPE_CHECKING:
    from pathlib import Path

    from sqlalchemy import URL

    from rustrade_store.codec import JSONValue

KEPT: dict[str, JSONValue] = {"bot/BTCUSDT": {"halted": True, "pnl": -12.5}, "bot/ETH": [1, 2]}
INJECTION_KEYS = [
    "'; DROP TABLE snapshots; --",
    '"; DROP TABLE snapshots; --',
    "k' OR '1'='1",
    "k%' OR key LIKE '%",
    "snapshots; DELETE FROM snapshots",
    "$1",
    ":key",
    "?",
    "\\'; --",
]


async def dump(store: SqlStore) -> list[tuple[str, Any, Any]]:
    """Everything stored, timestamps included: what "unchanged" is checked against."""
    return [(item.key, item.value, item.updated_at) async for item in store.snapshots()]


@pytest.fixture
async def kept(store: SqlStore) -> list[tuple[str, Any, Any]]:
    """The store with two snapshots saved; returns the state that must not change."""
    await store.save_many(KEPT)
    return await dump(store)


# -- values: 16 cases x (save, save_many) ---------------------------------------------------


@pytest.mark.parametrize("case", list(BAD_VALUES))
@pytest.mark.parametrize("call", ["save", "save_many"])
async def test_bad_value(
    store: SqlStore, kept: list[tuple[str, Any, Any]], case: str, call: str
) -> None:
    value, error, words = BAD_VALUES[case]
    attempt = (
        store.save("bot/BTCUSDT", value)  # type: ignore[arg-type]
        if call == "save"
        else store.save_many({"bot/ETH": "new", "bot/BTCUSDT": value})  # type: ignore[dict-item]
    )
    with pytest.raises(error) as caught:
        await attempt
    assert words in str(caught.value)
    if call == "save_many":
        assert "'bot/BTCUSDT'" in str(caught.value), "save_many names the key of the bad value"
    assert await dump(store) == kept


# -- keys: 7 cases x (save, save_many, load) ------------------------------------------------


@pytest.mark.parametrize("case", list(BAD_KEYS))
@pytest.mark.parametrize("call", ["save", "save_many", "load"])
async def test_bad_key(
    store: SqlStore, kept: list[tuple[str, Any, Any]], case: str, call: str
) -> None:
    key, error, words = BAD_KEYS[case]
    attempts: dict[str, Any] = {
        "save": lambda: store.save(key, 1),  # type: ignore[arg-type]
        "save_many": lambda: store.save_many({"bot/ETH": "new", key: 1}),  # type: ignore[dict-item]
        "load": lambda: store.load(key),  # type: ignore[arg-type]
    }
    with pytest.raises(error) as caught:
        await attempts[call]()
    assert words in str(caught.value)
    assert await dump(store) == kept


# -- injection-looking keys: stored and loaded verbatim -------------------------------------


async def test_injection_looking_keys_are_plain_keys(
    store: SqlStore, kept: list[tuple[str, Any, Any]]
) -> None:
    for index, key in enumerate(INJECTION_KEYS):
        await store.save(key, {"i": index})
    await store.save_many({f"{key}/many": index for index, key in enumerate(INJECTION_KEYS)})
    for index, key in enumerate(INJECTION_KEYS):
        assert await store.load(key) == {"i": index}
        assert await store.load(f"{key}/many") == index
        assert [found async for found in store.keys(key)] == [key, f"{key}/many"]
    assert await store.count() == len(KEPT) + 2 * len(INJECTION_KEYS)
    for key in INJECTION_KEYS:
        await store.delete(key)
        await store.delete(f"{key}/many")
    assert await dump(store) == kept


# -- a corrupt blob written by hand ----------------------------------------------------------


async def test_corrupt_blob_names_its_key_and_spares_the_others(
    store: SqlStore, kept: list[tuple[str, Any, Any]]
) -> None:
    await store.save("bad", 0)
    corrupt = update(snapshots).where(snapshots.c.key == "bad")
    async with store.engine.begin() as connection:
        if store.engine.dialect.name == "sqlite":
            await connection.execute(text("PRAGMA ignore_check_constraints = ON"))
            await connection.execute(corrupt.values(value='{"a": '))
            await connection.execute(text("PRAGMA ignore_check_constraints = OFF"))
        else:
            # Valid JSON to the database's own check; no float can hold it.
            await connection.execute(corrupt.values(value="[1e999]"))
    with pytest.raises(StorageError, match="stored value for key 'bad'") as caught:
        await store.load("bad")
    assert "JSON" in str(caught.value) or "float" in str(caught.value)
    assert await store.load_many(KEPT) == KEPT
    await store.delete("bad")
    assert await dump(store) == kept


# -- a table dropped under a running store ---------------------------------------------------


@pytest.fixture
def own_database(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> URL:
    """A migrated database this test alone uses, since it will break it."""
    if backend == "memory":
        return resolve_url("sqlite://")
    if backend == "sqlite":
        url = resolve_url(f"sqlite:///{tmp_path / 'own.db'}")
    else:
        url = request.getfixturevalue(f"fresh_{backend}")
    asyncio.run(upgrade(url))
    return url


async def test_table_dropped_under_a_running_store(backend: str, own_database: URL) -> None:
    store = open_store(backend, own_database)
    try:
        await store.save_many(KEPT)
        async with store.engine.begin() as connection:
            await connection.execute(text("DROP TABLE snapshots"))
        for call in (store.load("bot/BTCUSDT"), store.save("bot/BTCUSDT", 1)):
            with pytest.raises(StorageError) as caught:
                await call
            message = str(caught.value)
            assert "'bot/BTCUSDT'" in message
            assert "snapshots" in message, "the message names the missing table"
            assert any(words in message for words in ("does not exist", "doesn't exist", "no such"))
    finally:
        await store.aclose()


# -- URLs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("mssql://u@h/db", "unsupported database URL scheme 'mssql'"),
        ("redis://localhost:6379/0", "unsupported database URL scheme 'redis'"),
        ("postgresql+psycopg2://u@h/db", "driver 'psycopg2'"),
        ("not a url", "cannot parse database URL"),
    ],
)
def test_unusable_url_is_refused_before_connecting(url: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        SqlStore.from_url(url)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port  # closed again: nothing listens there


async def test_url_to_a_closed_port_raises_storage_error_in_time() -> None:
    port = closed_port()
    url = f"postgresql://u:s3cretpw@127.0.0.1:{port}/db"
    async with SqlStore.from_url(url, timeout=1.0) as store:
        for call in (store.load("k"), store.save("k", 1)):
            with pytest.raises(StorageError) as caught:
                await asyncio.wait_for(call, 120)  # a guard against a hang, not a timing check
            message = str(caught.value)
            assert f"127.0.0.1:{port}" in message, "the message names where it tried"
            assert "'k'" in message
            assert "s3cretpw" not in message


# -- a missing SQLite file -------------------------------------------------------------------


async def test_a_missing_sqlite_file_is_not_created_by_the_store(tmp_path: Path) -> None:
    """Every call on a mistyped path fails naming the file and the command that creates it, and
    leaves no file behind; only a migration creates one."""
    path = tmp_path / "mistyped.db"
    url = f"sqlite:///{path}"
    async with SqlStore.from_url(url) as store:
        for call in (store.load("k"), store.save("k", 1), store.count()):
            with pytest.raises(SchemaError) as caught:
                await call
            message = str(caught.value)
            assert f"{path} does not exist" in message
            assert "rustrade-store --url sqlite+aiosqlite:///" in message
            assert "upgrade" in message
    assert os.listdir(tmp_path) == []
    await upgrade(url)
    async with SqlStore.from_url(url) as store:
        await store.save("k", 1)
        assert await store.load("k") == 1


# -- a read-only SQLite file -----------------------------------------------------------------


async def test_read_only_sqlite_file_refuses_saves_and_still_loads(sqlite_url: URL) -> None:
    async with SqlStore.from_url(sqlite_url) as writer:
        await writer.save_many(KEPT)
        before = await dump(writer)
    path = sqlite_url.database
    assert path is not None
    os.chmod(path, 0o444)  # read-only for everyone but root, whom mode=ro below also binds
    read_only = resolve_url(f"sqlite:///file:{path}?mode=ro&uri=true")
    try:
        async with SqlStore.from_url(read_only) as store:
            assert await store.load("bot/BTCUSDT") == KEPT["bot/BTCUSDT"]
            with pytest.raises(StorageError, match=r"save 'bot/BTCUSDT' failed.*readonly"):
                await store.save("bot/BTCUSDT", "new")
            with pytest.raises(StorageError, match=r"save_many failed.*readonly"):
                await store.save_many({"bot/ETH": "new"})
            assert await store.load_many(KEPT) == KEPT
            assert await dump(store) == before
    finally:
        os.chmod(path, 0o644)
