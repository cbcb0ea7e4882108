"""What only MariaDB (and MySQL) needs checking: the column types, the session settings, the
JSON check and its depth limit, and statements near the server's packet limit."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import delete, event, text
from sqlalchemy.exc import DBAPIError

from rustrade_store import MAX_DEPTH, MAX_KEY_LENGTH, MAX_VALUE_BYTES, SqlStore, StorageError
from rustrade_store._backends import backend_for
from rustrade_store._engine import DEFAULT_TIMEOUT
from rustrade_store._schema import snapshots
from rustrade_store.codec import encode
from rustrade_store.testing import EXACT_VALUES, assert_same_json, nested

from .helpers import IN_CI

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from sqlalchemy import URL, Connection

pytestmark = pytest.mark.mariadb

MIB = 1024 * 1024


@pytest.fixture
async def maria(mariadb_url: URL) -> AsyncIterator[SqlStore]:
    async with SqlStore.from_url(mariadb_url) as store:
        async with store.engine.begin() as connection:
            await connection.execute(delete(snapshots))
        yield store


async def scalar(store: SqlStore, sql: str, **params: object) -> object:
    async with store.engine.connect() as connection:
        return (await connection.execute(text(sql), params)).scalar()


def skip_or_fail(reason: str) -> None:
    """A server whose packet limit makes the case moot: skipped locally, a failure under CI,
    where the README's claim about that limit must be checked."""
    if IN_CI:
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def is_mariadb(store: SqlStore) -> bool:
    return bool(getattr(store.engine.dialect, "is_mariadb", False))


async def max_allowed_packet(store: SqlStore) -> int:
    return int(str(await scalar(store, "SELECT @@max_allowed_packet")))


async def test_columns_have_the_types_the_contract_needs(maria: SqlStore) -> None:
    async with maria.engine.connect() as connection:
        rows = await connection.execute(text("SHOW FULL COLUMNS FROM snapshots"))
        columns = {row.Field: (row.Type.lower(), row.Collation) for row in rows}
    nopad_bin = "utf8mb4_nopad_bin" if is_mariadb(maria) else "utf8mb4_0900_bin"
    assert columns["key"] == ("varchar(255)", nopad_bin)
    assert columns["value"] == ("longtext", "utf8mb4_bin")
    assert columns["updated_at"] == ("datetime(6)", None)


async def test_sessions_are_utc_strict_and_read_committed(maria: SqlStore) -> None:
    assert await scalar(maria, "SELECT @@session.time_zone") == "+00:00"
    assert "STRICT_ALL_TABLES" in str(await scalar(maria, "SELECT @@session.sql_mode"))
    # A row lock held by another session is waited for no longer than the store's timeout.
    assert await scalar(maria, "SELECT @@session.innodb_lock_wait_timeout") == DEFAULT_TIMEOUT
    # Single statements autocommit; a transaction of several (save_many) reads committed rows:
    # each transaction the store begins reports its session's level, read from the server.
    levels: list[str] = []

    def began(connection: Connection) -> None:
        levels.append(connection.get_isolation_level())

    event.listen(maria.engine.sync_engine, "begin", began)
    try:
        await maria.save_many({"a": 1, "b": 2})
    finally:
        event.remove(maria.engine.sync_engine, "begin", began)
    assert levels, "save_many began no transaction"
    assert set(levels) == {"READ COMMITTED"}


async def test_the_column_refuses_text_that_is_not_json(maria: SqlStore) -> None:
    with pytest.raises(DBAPIError, match="ck_snapshots_value_json"):
        async with maria.engine.begin() as connection:
            await connection.execute(
                text("INSERT INTO snapshots VALUES ('k', '{\"a\": ', UTC_TIMESTAMP(6))")
            )
    assert await maria.load("k") is None


async def test_json_valid_accepts_the_codec_depth_limit_and_no_more(maria: SqlStore) -> None:
    """Why ``MAX_DEPTH`` is 31: MariaDB's json_valid() refuses deeper documents, so a value
    any deeper could be stored elsewhere and never copied here."""
    deepest = json.dumps(nested(MAX_DEPTH))
    too_deep = json.dumps(nested(MAX_DEPTH + 1))
    assert await scalar(maria, "SELECT json_valid(:doc)", doc=deepest) == 1
    assert await scalar(maria, "SELECT json_valid(:doc)", doc=too_deep) == 0


async def test_save_many_larger_than_the_packet_limit_is_saved(maria: SqlStore) -> None:
    """The driver splits an executemany into statements of about 1 MB, one row at least."""
    packet = await max_allowed_packet(maria)
    if packet > 64 * MIB:
        skip_or_fail(f"max_allowed_packet is {packet} bytes: too large to exceed cheaply")
    size = 6 * MIB
    values = {f"big/{index}": f"{index}" * size for index in range(packet // size + 1)}
    assert sum(len(encode(value)) for value in values.values()) > packet
    await maria.save_many(values)
    assert await maria.load_many(values) == values


async def test_load_many_of_keys_larger_than_the_packet_limit(maria: SqlStore) -> None:
    """Keys are inlined in the query text too: the store asks for them in chunks that fit."""
    packet = await max_allowed_packet(maria)
    if packet > 64 * MIB:
        skip_or_fail(f"max_allowed_packet is {packet} bytes: too large to exceed cheaply")
    stem = "😀" * (MAX_KEY_LENGTH - 6)  # four bytes each in UTF-8
    keys = [f"{stem}{index:06d}" for index in range(packet // 1000 + 1000)]
    assert sum(len(key.encode()) for key in keys) > packet
    await maria.save_many({keys[0]: 0, keys[-1]: -1})
    found = await maria.load_many(keys)
    assert len(found) == len(keys)
    assert found[keys[0]] == 0
    assert found[keys[-1]] == -1
    assert sum(value is None for value in found.values()) == len(keys) - 2


async def test_value_too_large_once_escaped_is_a_clear_error(maria: SqlStore) -> None:
    """Quotes inside a string take two bytes of JSON and four once the driver escapes them:
    a value under MAX_VALUE_BYTES can still exceed the server's packet limit."""
    packet = await max_allowed_packet(maria)
    value = '"' * (MAX_VALUE_BYTES // 2 - 1)
    assert len(encode(value)) <= MAX_VALUE_BYTES
    if packet > 2 * MAX_VALUE_BYTES:
        skip_or_fail(f"max_allowed_packet is {packet} bytes: every escaped value fits")
    await maria.save("k", "kept")
    with pytest.raises(StorageError, match=r"save 'k'.*max_allowed_packet"):
        await maria.save("k", value)
    with pytest.raises(StorageError, match=r"save_many.*max_allowed_packet"):
        await maria.save_many({"other": 1, "k": value})
    assert await maria.load_many(["k", "other"]) == {"k": "kept", "other": None}


@pytest.fixture
def route(request: pytest.FixtureRequest) -> tuple[URL, URL]:
    """The migrated databases named by the test's ``(source, target)`` parameter."""
    source, target = request.param
    source_url: URL = request.getfixturevalue(f"{source}_url")
    target_url: URL = request.getfixturevalue(f"{target}_url")
    return source_url, target_url


@pytest.mark.postgres
@pytest.mark.parametrize(
    "route", [("sqlite", "mariadb"), ("mariadb", "postgres")], indirect=True, ids=str
)
async def test_snapshots_move_exactly_between_databases(route: tuple[URL, URL]) -> None:
    """What ``rustrade-store copy`` relies on: snapshots read from one database and restored
    into another keep every value, type and microsecond."""
    source_url, target_url = route
    values = {f"move/{name}": value for name, value in EXACT_VALUES.items()}
    values["move/a "] = "trailing space"
    async with SqlStore.from_url(source_url) as origin, SqlStore.from_url(target_url) as copy:
        await origin.save_many(values)
        moved = [snapshot async for snapshot in origin.snapshots("move/")]
        await copy.restore(moved)
        arrived = [snapshot async for snapshot in copy.snapshots("move/")]
        assert [snapshot.key for snapshot in arrived] == [snapshot.key for snapshot in moved]
        for sent, got in zip(moved, arrived, strict=True):
            assert got.updated_at == sent.updated_at
            assert_same_json(got.value, sent.value, got.key)
        for store in (origin, copy):
            for key in values:
                await store.delete(key)


@pytest.mark.parametrize("segment", [248, 249, MAX_KEY_LENGTH - 1])
def test_a_key_with_a_long_first_segment_is_written_without_a_word(
    mariadb_url: URL, segment: int
) -> None:
    """From 249 characters on, the first segment's lease row key is longer than a key: MariaDB
    printed ``Data truncated for column 'lk'`` at every write of such a key. The driver prints
    through C's buffered stdout, seen only when the process exits: hence a process of its own."""
    key = "a" * segment + "/" + "b" * (MAX_KEY_LENGTH - segment - 1)
    code = (
        "import asyncio, sys\n"
        "from rustrade_store import SqlStore\n"
        "async def main(url, key):\n"
        "    async with SqlStore.from_url(url) as store:\n"
        "        await store.save(key, 1)\n"
        "        await store.save_many({key: 2})\n"
        "        assert await store.load(key) == 2\n"
        "asyncio.run(main(*sys.argv[1:]))\n"
    )
    url = mariadb_url.render_as_string(hide_password=False)
    completed = subprocess.run(
        [sys.executable, "-c", code, url, key],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (completed.returncode, completed.stdout, completed.stderr) == (0, "", "")


def test_the_packet_hint_needs_a_write_large_enough_for_the_limit(mariadb_url: URL) -> None:
    """Any lost connection during a write got the max_allowed_packet hint, even for a few
    bytes. The server's drop of a statement too large and any other drop both reach the client
    as 2006 ("gone away"): only the write's size tells them apart, so the executor passes it."""
    from asyncmy.errors import OperationalError

    hint = backend_for(mariadb_url).failure_hint
    gone = OperationalError(2006, "MySQL server has gone away")
    assert hint(True, gone, written=40) == ""
    assert "max_allowed_packet" in hint(True, gone, written=8 * MIB)
    assert "max_allowed_packet" in hint(True, gone)  # size unknown: said, as before
    assert hint(False, gone, written=8 * MIB) == ""
