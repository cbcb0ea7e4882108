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
from sqlalchemy.ext.asyncio import create_async_engine

from rustrade_store import (
    ConfigurationError,
    SchemaError,
    SqlStore,
    StorageError,
    create_engine,
    resolve_url,
    upgrade,
)

from .commandline import cli, ok, one_line_error
from .proxy import TcpProxy

if TYPE_CHECKING:
    from pathlib import Path

    from sqlalchemy import URL

PASSWORD = "Hunter2-s3cret"
AT_PASSWORD = "Hunter2@s3cretpart"
"""Unencoded "@": SQLAlchemy alone reads the password as ``Hunter2`` and ``s3cretpart@...`` as
the host."""
SECRET_PARTS = ("Hunter2", "s3cret")


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


def password_forms(host: str, port: int, database: str, user: str = "trader") -> list[str]:
    """The ways a provider or an operator writes the password into a URL."""
    return [
        f"postgresql://{user}:{PASSWORD}@{host}:{port}/{database}",
        f"postgresql://{user}@{host}:{port}/{database}?password={PASSWORD}",
        f"postgresql://{user}@{host}:{port}/{database}?sslmode=disable&password={PASSWORD}",
        f"postgresql://{user}:{AT_PASSWORD}@{host}:{port}/{database}",
        f"mysql://{user}@{host}:{port}/{database}?password={PASSWORD}",
    ]


def assert_hidden(text: str) -> None:
    for part in SECRET_PARTS:
        assert part not in text, text


@pytest.mark.parametrize("url", password_forms("127.0.0.1", 5999, "db"))
async def test_a_password_in_the_query_or_with_an_at_sign_is_hidden(url: str) -> None:
    owned = SqlStore.from_url(url)
    # A handed engine's URL never went through resolve_url: masking alone must hide it.
    raw = url.replace("postgresql://", "postgresql+asyncpg://").replace("mysql:", "mysql+asyncmy:")
    handed = SqlStore(create_async_engine(raw))
    try:
        for store in (owned, handed):
            for shown in (repr(store), str(store), store.url):
                assert_hidden(shown)
                assert "@127.0.0.1:5999/db" in shown, "the host is the host, not the password"
            assert "***" in store.url
    finally:
        await owned.aclose()
        await handed.aclose()
        await handed.engine.dispose()


def test_the_whole_password_reaches_the_driver() -> None:
    """Read as asyncpg and urllib read it: up to the last "@"; ``?password=`` as the password."""
    at_sign = resolve_url(f"postgresql://trader:{AT_PASSWORD}@db.internal:5432/rustrade")
    assert (at_sign.password, at_sign.host) == (AT_PASSWORD, "db.internal")
    in_query = resolve_url(f"mysql://trader@db.internal/rustrade?password={PASSWORD}")
    assert (in_query.password, dict(in_query.query)) == (PASSWORD, {})
    with pytest.raises(ConfigurationError, match="more than one password") as caught:
        resolve_url(f"postgresql://trader:other-{PASSWORD}@h/db?password={PASSWORD}")
    assert_hidden(str(caught.value))


async def test_a_refused_connection_never_shows_the_password() -> None:
    port = closed_port()
    for url in password_forms("127.0.0.1", port, "db")[:4]:
        async with SqlStore.from_url(url, timeout=1.0) as store:
            with pytest.raises(StorageError) as caught:
                await asyncio.wait_for(store.save("k", 1), 120)  # a hang guard, not a timing check
        assert f"127.0.0.1:{port}" in str(caught.value)
        assert_hidden(everything_said(caught.value))


@pytest.mark.postgres
async def test_every_password_form_connects(postgres_url: URL) -> None:
    """The local server trusts every client, so any password connects: the rest is parsing."""
    host, port = postgres_url.host or "127.0.0.1", postgres_url.port or 5432
    for url in password_forms(host, port, postgres_url.database or "", "postgres")[:4]:
        async with SqlStore.from_url(url) as store:
            await store.save("secret/k", url)
            assert await store.load("secret/k") == url
            assert await store.delete("secret/k")


@pytest.mark.postgres
def test_the_command_never_shows_any_password_form(postgres_url: URL, tmp_path: Path) -> None:
    host, port = postgres_url.host or "127.0.0.1", postgres_url.port or 5432
    working = password_forms(host, port, postgres_url.database or "", "postgres")[:4]
    for url in working:
        report = ok(cli("--url", url, "doctor", cwd=tmp_path))
        assert_hidden(report.out + report.err)
        assert "***" in report.out
    for url in password_forms("127.0.0.1", closed_port(), "db"):
        for args in (("doctor",), ("--debug", "ls")):
            run = cli("--url", url, *args, cwd=tmp_path)
            assert_hidden(run.out + run.err)
            if args == ("doctor",):
                one_line_error(run, 3, "failed on", "***")
