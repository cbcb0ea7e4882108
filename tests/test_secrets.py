"""The database password never shows: not in repr/str, log records, or exception messages.

The local PostgreSQL server uses trust authentication, so a URL carrying a password still
connects: real operations and real failures run with the password in the URL.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import traceback
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import text

from rustrade_store import SchemaError, SqlStore, StorageError, upgrade
from rustrade_store.engine import create_engine

from .proxy import TcpProxy

if TYPE_CHECKING:
    from sqlalchemy import URL

PASSWORD = "Hunter2-s3cret"


def everything_said(exc: BaseException) -> str:
    """The exception as a user could ever see it: message, chained causes, traceback."""
    return "".join(traceback.format_exception(exc))


def with_password(url: URL) -> URL:
    return url.set(password=PASSWORD)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_repr_str_and_url_of_a_store_hide_the_password() -> None:
    url = f"postgresql://trader:{PASSWORD}@127.0.0.1:{closed_port()}/db"
    owned = SqlStore.from_url(url)
    handed = SqlStore(create_engine(url))
    try:
        for store in (owned, handed):
            for shown in (repr(store), str(store), store.url, f"{store!r} {store}"):
                assert PASSWORD not in shown
            assert "***" in store.url
    finally:
        await owned.aclose()
        await handed.aclose()
        await handed.engine.dispose()


@pytest.mark.postgres
async def test_log_records_at_debug_never_hold_the_password(
    postgres_url: URL, caplog: pytest.LogCaptureFixture
) -> None:
    """Every record of every logger at DEBUG, SQLAlchemy's echo and pool echo included."""
    caplog.set_level(logging.DEBUG)
    store = SqlStore.from_url(with_password(postgres_url), echo="debug", echo_pool="debug")
    try:
        await store.save("secret/k", {"v": 1})
        assert await store.load("secret/k") == {"v": 1}
        await store.delete("secret/k")
        await store.engine.dispose()  # pool events: close, reconnect
        assert await store.load("secret/k") is None
    finally:
        await store.aclose()
    assert len(caplog.records) > 10, "SQLAlchemy's echo logged nothing: the check would be empty"
    for record in caplog.records:
        assert PASSWORD not in record.getMessage(), record.getMessage()
        assert PASSWORD not in repr(record.args)


@pytest.mark.postgres
async def test_failure_messages_never_hold_the_password(
    postgres_url: URL, fresh_postgres: URL
) -> None:
    """Real failures, each with the password in the URL: its whole traceback is clean."""
    failures: list[BaseException] = []

    async def collect(call: object) -> None:
        assert asyncio.iscoroutine(call)
        try:
            await asyncio.wait_for(call, 120)
        except Exception as exc:
            failures.append(exc)
        else:
            raise AssertionError(f"{call} did not fail")

    # Nothing listens on the port.
    refused = SqlStore.from_url(
        f"postgresql://postgres:{PASSWORD}@127.0.0.1:{closed_port()}/db", timeout=1.0
    )
    await collect(refused.save("k", 1))
    await refused.aclose()
    # The server stops answering (timeouts).
    async with TcpProxy(postgres_url.host or "127.0.0.1", postgres_url.port or 5432) as proxy:
        frozen = SqlStore.from_url(with_password(postgres_url.set(port=proxy.port)), timeout=0.3)
        await frozen.save("secret/k", 1)
        proxy.freeze()
        await collect(frozen.load("secret/k"))
        await proxy.restore()
        await frozen.delete("secret/k")
        await frozen.aclose()
    # A database that was never migrated; then migrating to a closed port.
    unmigrated = SqlStore.from_url(with_password(fresh_postgres))
    await collect(unmigrated.load("k"))
    await collect(upgrade(f"postgresql://postgres:{PASSWORD}@127.0.0.1:{closed_port()}/db"))
    # The table dropped under the store; a database that does not exist.
    await upgrade(with_password(fresh_postgres))
    async with unmigrated.engine.begin() as connection:
        await connection.execute(text("DROP TABLE snapshots"))
    unmigrated_again = SqlStore.from_url(with_password(fresh_postgres))
    await collect(unmigrated_again.save("k", 1))
    await unmigrated.aclose()
    await unmigrated_again.aclose()
    missing = SqlStore.from_url(with_password(postgres_url.set(database="no_such_db_here")))
    await collect(missing.load("k"))
    await missing.aclose()

    assert [type(exc) for exc in failures] == [
        StorageError,
        StorageError,
        SchemaError,
        StorageError,
        StorageError,
        StorageError,
    ]
    for exc in failures:
        assert PASSWORD not in everything_said(exc), everything_said(exc)
