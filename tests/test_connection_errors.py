"""A database that cannot be reached, or is not there: the error says what kind of failure it
is and what to check (connection refused, unknown host, a server speaking another protocol),
and for a database that does not exist, the statement that creates it, which works as printed."""

from __future__ import annotations

import asyncio
import re
import secrets
from typing import TYPE_CHECKING

import pytest

from rustrade_store import SqlStore, StorageError, upgrade

from .helpers import MARIADB_ADMIN_URL, POSTGRES_ADMIN_URL, run_as_admin, server_port

if TYPE_CHECKING:
    from sqlalchemy import URL

WAIT = 1.0
"""The store's timeout in these tests: a refused connection is retried until it passes."""


async def failure(url: str | URL) -> str:
    """The message of the StorageError that a store's first call on ``url`` raises, and that of
    an upgrade of it (they must agree on the hint)."""
    async with SqlStore.from_url(url, timeout=WAIT) as store:
        with pytest.raises(StorageError) as caught:
            await store.load("k")
    with pytest.raises(StorageError) as migrating:
        await upgrade(url, wait=WAIT)
    message = str(caught.value)
    said = re.sub(r"; retried for [0-9.]+ s$", "", message)  # the store retries, a migration not
    assert said[said.rindex(" (") :] in str(migrating.value)
    return message


@pytest.mark.parametrize("scheme", ["postgresql", "mysql"])
async def test_connection_refused_asks_whether_the_server_runs_there(scheme: str) -> None:
    port = server_port()  # free: nothing listens there
    message = await failure(f"{scheme}://u@127.0.0.1:{port}/db")
    assert f"(connection refused: is the server running on 127.0.0.1:{port}?)" in message
    assert re.search(r"; retried for [0-9.]+ s$", message), message


async def test_a_retried_failure_tells_how_long_it_was_retried() -> None:
    """``retried_for``, as the message says it: what the command adds its advice to."""
    async with SqlStore.from_url(
        f"postgresql://u@127.0.0.1:{server_port()}/db", timeout=WAIT
    ) as store:
        with pytest.raises(StorageError) as caught:
            await store.load("k")
    retried_for = caught.value.retried_for
    assert retried_for is not None
    assert str(caught.value).endswith(f"; retried for {retried_for:.1f} s")
    assert StorageError("not from a call").retried_for is None


@pytest.mark.parametrize("scheme", ["postgresql", "mysql"])
async def test_an_unknown_host_is_named_as_such(scheme: str) -> None:
    message = await failure(f"{scheme}://u@no-such-host.invalid:5000/db")
    assert "(unknown host: the host name of no-such-host.invalid:5000 does not resolve" in message


@pytest.mark.postgres
@pytest.mark.mariadb
async def test_a_postgres_url_at_a_mariadb_port_says_it_is_another_database(
    mariadb_admin_url: URL, postgres_admin_url: URL
) -> None:
    """It was "rejected SSL upgrade", after ten seconds of retries."""
    address = f"{mariadb_admin_url.host}:{mariadb_admin_url.port or 3306}"
    message = await failure(postgres_admin_url.set(host=mariadb_admin_url.host, port=3306))
    assert f"(the server at {address} does not answer as PostgreSQL does" in message


@pytest.mark.postgres
@pytest.mark.mariadb
async def test_a_mysql_url_at_the_postgres_port_says_it_is_postgresqls(
    postgres_admin_url: URL, mariadb_admin_url: URL
) -> None:
    """It was "(2013, 'Lost connection to MySQL server during query (read timeout)')"."""
    message = await failure(mariadb_admin_url.set(host=postgres_admin_url.host, port=5432))
    assert "5432 is PostgreSQL's usual port" in message
    assert "is a MariaDB server listening there?" in message


@pytest.mark.parametrize(
    ("admin", "where"),
    [
        pytest.param(POSTGRES_ADMIN_URL, "postgres", marks=pytest.mark.postgres),
        pytest.param(MARIADB_ADMIN_URL, "mariadb", marks=pytest.mark.mariadb),
    ],
)
def test_a_missing_database_gets_the_statement_that_creates_it(
    admin: str, where: str, request: pytest.FixtureRequest
) -> None:
    """It was ``database "x" does not exist`` / ``(1049, "Unknown database 'x'")`` alone. The
    statement and the upgrade command given run as printed, and the store then works."""
    admin_url: URL = request.getfixturevalue(f"{where}_admin_url")
    name = f"rustrade_test_absent_{secrets.token_hex(4)}"
    url = admin_url.set(database=name)
    message = asyncio.run(failure(url))
    statement = re.search(r"with `(CREATE DATABASE [^`]+)`", message)
    assert statement is not None, message
    assert name in statement.group(1)
    assert "then its schema with `rustrade-store --url " in message
    run_as_admin(admin_url, statement.group(1))
    try:
        asyncio.run(upgrade(url))

        async def works() -> object:
            async with SqlStore.from_url(url) as store:
                await store.save("bot1/k", 1)
                return await store.load("bot1/k")

        assert asyncio.run(works()) == 1
    finally:
        quote = '"' if where == "postgres" else "`"
        force = " WITH (FORCE)" if where == "postgres" else ""
        run_as_admin(admin_url, f"DROP DATABASE IF EXISTS {quote}{name}{quote}{force}")
