"""Backends for the shared tests: in-memory, an SQLite file, and a PostgreSQL and a MariaDB
database of this run.

PostgreSQL comes from ``RUSTRADE_TEST_POSTGRES_URL``, MariaDB (or MySQL) from
``RUSTRADE_TEST_MARIADB_URL`` (admin URLs; default: the local servers). Each run creates its own
databases and drops them at the end. An unreachable server skips its tests locally and fails
them under ``CI=true``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from typing import TYPE_CHECKING

import asyncpg
import pytest
from sqlalchemy import URL, delete, event, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from rustrade_store import InMemoryStore, SqlStore, upgrade
from rustrade_store.engine import create_engine, resolve_url
from rustrade_store.schema import snapshots

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

IN_CI = os.environ.get("CI", "").lower() == "true"
POSTGRES_ADMIN_URL = os.environ.get(
    "RUSTRADE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)

MARIADB_ADMIN_URL = os.environ.get("RUSTRADE_TEST_MARIADB_URL", "mysql://root@127.0.0.1:3306/test")

BACKENDS = [
    "memory",
    "sqlite",
    pytest.param("postgres", marks=pytest.mark.postgres),
    pytest.param("mariadb", marks=pytest.mark.mariadb),
]


def unavailable(what: str, exc: BaseException) -> None:
    """Skip locally, fail under CI: a missing server must never pass silently there."""
    message = f"{what} is unreachable: {type(exc).__name__}: {exc}"
    if IN_CI:
        pytest.fail(f"{message} (CI=true: a missing server is a failure)", pytrace=False)
    pytest.skip(message)


async def _asyncpg_admin(url: URL) -> asyncpg.Connection:
    return await asyncpg.connect(
        user=url.username,
        password=url.password,
        host=url.host,
        port=url.port,
        database=url.database,
        timeout=5,
    )


async def _create_database(admin: URL, name: str) -> None:
    connection = await _asyncpg_admin(admin)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()


async def _drop_database(admin: URL, name: str) -> None:
    connection = await _asyncpg_admin(admin)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


@pytest.fixture(scope="session")
def postgres_admin_url() -> URL:
    return resolve_url(POSTGRES_ADMIN_URL)


@contextlib.contextmanager
def new_postgres_database(admin: URL) -> Iterator[URL]:
    """A PostgreSQL database of its own, dropped on exit; skips (fails under CI) if unreachable."""
    name = f"rustrade_test_{os.getpid()}_{secrets.token_hex(4)}"
    try:
        asyncio.run(_create_database(admin, name))
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        unavailable(f"PostgreSQL at {admin.render_as_string()}", exc)
    try:
        yield admin.set(database=name)
    finally:
        asyncio.run(_drop_database(admin, name))


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


async def _mariadb_admin(admin: URL, statement: str) -> None:
    engine = create_engine(admin, poolclass=NullPool, timeout=5)
    try:
        async with engine.begin() as connection:
            await connection.execute(text(statement))
    finally:
        await engine.dispose()


def _new_mariadb_database(admin: URL) -> URL:
    name = f"rustrade_test_{os.getpid()}_{secrets.token_hex(4)}"
    try:
        asyncio.run(_mariadb_admin(admin, f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
    except (OSError, SQLAlchemyError, ImportError, TimeoutError) as exc:
        unavailable(f"MariaDB at {admin.render_as_string()}", exc)
    return admin.set(database=name)


def _drop_mariadb_database(admin: URL, database: URL) -> None:
    asyncio.run(_mariadb_admin(admin, f"DROP DATABASE IF EXISTS `{database.database}`"))


@pytest.fixture(scope="session")
def mariadb_admin_url() -> URL:
    return resolve_url(MARIADB_ADMIN_URL)


@pytest.fixture(scope="session")
def mariadb_database(mariadb_admin_url: URL) -> Iterator[URL]:
    """An empty MariaDB database created for this test run (unmigrated), dropped afterwards."""
    url = _new_mariadb_database(mariadb_admin_url)
    yield url
    _drop_mariadb_database(mariadb_admin_url, url)


@pytest.fixture(scope="session")
def mariadb_url(mariadb_database: URL) -> URL:
    """The run's MariaDB database, migrated to head."""
    asyncio.run(upgrade(mariadb_database))
    return mariadb_database


@pytest.fixture
def fresh_mariadb(mariadb_admin_url: URL) -> Iterator[URL]:
    """A new empty MariaDB database for one test that migrates or breaks its schema."""
    url = _new_mariadb_database(mariadb_admin_url)
    yield url
    _drop_mariadb_database(mariadb_admin_url, url)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> URL:
    """An SQLite file in the test's own directory, migrated to head."""
    url = resolve_url(f"sqlite:///{tmp_path / 'state.db'}")
    asyncio.run(upgrade(url))
    return url


_COUNTERS: dict[int, CheckoutCounter] = {}
"""The checkout counter of each store the ``store`` fixture has open."""


class CheckoutCounter:
    """Counts the connections a pool has lent and not had back, through the pool's own events."""

    def __init__(self, store: SqlStore) -> None:
        self.outstanding = 0
        pool = store.engine.sync_engine.pool
        event.listen(pool, "checkout", self._out)
        event.listen(pool, "checkin", self._in)

    def _out(self, *_: object) -> None:
        self.outstanding += 1

    def _in(self, *_: object) -> None:
        self.outstanding -= 1


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


async def _empty(store: SqlStore) -> None:
    async with store.engine.begin() as connection:
        await connection.execute(delete(snapshots))


def open_store(backend: str, url: URL) -> SqlStore:
    """The store each backend's users get: ``InMemoryStore()`` or ``SqlStore.from_url``."""
    return InMemoryStore() if backend == "memory" else SqlStore.from_url(url)


@pytest.fixture
async def store(backend: str, store_url: URL) -> AsyncIterator[SqlStore]:
    """A store on an empty database of each backend; no connection may be left checked out."""
    opened = open_store(backend, store_url)
    _COUNTERS[id(opened)] = CheckoutCounter(opened)
    await opened.is_empty()  # an in-memory database gets its schema at first use
    await _empty(opened)
    try:
        yield opened
    finally:
        leaked = _COUNTERS.pop(id(opened)).outstanding
        await opened.aclose()
    assert leaked == 0, f"{leaked} connection(s) left checked out of the pool"


def checked_out(store: SqlStore) -> int:
    """Connections the ``store`` fixture's pool has lent and not had back, by the pool's events
    (``StaticPool`` keeps no count of its own)."""
    return _COUNTERS[id(store)].outstanding
