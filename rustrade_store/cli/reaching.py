"""Reaching the database: what kind of failure a connection met, in the words an operator acts
on (what to check, whether it was retried and for how long), and a first connection that stops
the command at once where retrying cannot help: an unknown host, a server speaking another
protocol, a database that does not exist.

Failures are told apart by exception type and the driver's error code, never by its text.
"""

from __future__ import annotations

import contextlib
import re
import shlex
import socket
from typing import TYPE_CHECKING

from sqlalchemy.exc import SQLAlchemyError

from .._engine import create_engine, masked, resolve_url
from .._errors import StorageError, StoreError, storage_error
from .._migrate import schema_status
from .._sql import SqlStore
from .exits import PROG
from .opening import hosts_of

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from sqlalchemy import URL
    from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = ["connection", "failure_line", "open_store", "upgrade_hint"]

_MYSQL_UNKNOWN_DATABASE = 1049
_MYSQL_LOST = 2013
_POSTGRES_UNKNOWN_DATABASE = "3D000"


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and every exception it was raised from, or during, outermost first."""
    chain: list[BaseException] = []
    found: BaseException | None = exc
    while found is not None and found not in chain:
        chain.append(found)
        found = found.__cause__ or found.__context__
    return chain


def _code(exc: BaseException) -> object:
    """A driver error's code: asyncpg's SQLSTATE, or asyncmy's error number."""
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(sqlstate, str) and type(exc).__module__.startswith("asyncpg"):
        return sqlstate
    if type(exc).__module__.startswith("asyncmy") and exc.args:
        return exc.args[0]
    return None


def _create_database(url: URL) -> str:
    """The statement that creates the URL's database, in its backend's quoting."""
    name = url.database or ""
    if url.get_backend_name() == "postgresql":
        return f'CREATE DATABASE "{name}"'
    quoted = name if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) else f"`{name}`"
    return f"CREATE DATABASE {quoted} CHARACTER SET utf8mb4"


def failure_line(exc: BaseException, url: URL, wait: float) -> str | None:
    """What kind of connection failure ``exc``, met by a connection tried once, is and what to
    check, or ``None`` when it is none of those this knows."""
    where = ", ".join(hosts_of(url)) or "the local socket"
    for cause in _causes(exc):
        code = _code(cause)
        if code in (_POSTGRES_UNKNOWN_DATABASE, _MYSQL_UNKNOWN_DATABASE):
            return (
                f"database {url.database!r} does not exist on {where}: create it, as a user "
                f"allowed to, with `{_create_database(url)}`, then `{PROG} --url "
                f"{masked(url)} upgrade`"
            )
        if isinstance(cause, socket.gaierror):
            return (
                f"unknown host: the name of {where} does not resolve (is the host in the URL "
                f"right?; not retried)"
            )
        if isinstance(cause, ConnectionRefusedError):
            return (
                f"connection refused by {where}: is the server running there, listening on that "
                "port? (not retried)"
            )
        if type(cause) is ConnectionError and url.get_backend_name() == "postgresql":
            return (
                f"{where} did not answer as a PostgreSQL server (another service on that port? "
                f"MariaDB and MySQL listen on 3306, PostgreSQL on 5432; not retried)"
            )
        if code == _MYSQL_LOST and isinstance(cause.__cause__ or cause.__context__, TimeoutError):
            return (
                f"{where} sent no MySQL greeting within {wait:g} s: is it a MySQL or MariaDB "
                "server (PostgreSQL listens on 5432), and reachable?"
            )
    return None


@contextlib.asynccontextmanager
async def connection(url: URL, wait: float, action: str) -> AsyncIterator[AsyncConnection]:
    """A plain connection for the command ``action`` (tried once); driver failures become
    StorageError, saying what kind of failure it was where that is known."""
    engine = create_engine(url, timeout=wait)
    try:
        async with engine.connect() as connected:
            yield connected
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        error = storage_error(action, None, masked(url), exc)
        line = failure_line(exc, url, wait)
        raise (error if line is None else StorageError(f"{error}; {line}")) from exc
    finally:
        await engine.dispose()


async def _first_connection(url: URL, wait: float) -> None:
    """Connect once, so that a failure retrying cannot cure stops the command at once; a
    refused connection (a server restarting) is left to the store, which retries it."""
    if url.get_backend_name() == "sqlite":
        return
    try:
        async with connection(url, wait, "connect"):
            pass
    except StorageError as exc:
        if failure_line(exc, url, wait) is not None and not _retryable(exc):
            raise


def _retryable(exc: StorageError) -> bool:
    return any(isinstance(cause, ConnectionRefusedError) for cause in _causes(exc))


@contextlib.asynccontextmanager
async def open_store(url: URL, wait: float, *, force: bool = False) -> AsyncIterator[SqlStore]:
    """The command's store, once a first connection showed that the database can be reached
    (or that retrying may help); ``force`` (``--force``) writes under other stores' live
    leases. The store's message for a failed connection already says what kind it was and
    how long it was retried: only the option that sets how long is added."""
    await _first_connection(url, wait)
    async with SqlStore.from_url(url, timeout=wait, ignore_leases=force) as store:
        try:
            yield store
        except StorageError as exc:
            if exc.retried_for is None or failure_line(exc, url, wait) is None:
                raise
            raise StorageError(f"{exc} (--timeout sets how long)") from exc


async def upgrade_hint(raw: str | None, wait: float) -> str:
    """After a :class:`SchemaError`: the ``upgrade`` that cures it, as a command that works as
    printed from here (the ``--url`` given kept), or nothing when upgrading cannot cure it (a
    newer release migrated the database) or the database cannot be asked."""
    try:
        url = resolve_url(raw)
        async with connection(url, wait, "current") as connected:
            status = await schema_status(connected)
    except (StoreError, ValueError):
        return ""
    if status.state not in ("missing", "behind"):
        return ""
    if raw is None:  # the same $RUSTRADE_STORE_URL, or ./rustrade_state.db, from here
        return f" (from here: `{PROG} upgrade`)"
    command = f"{PROG} --url {shlex.quote(raw)} upgrade"
    password = " (with the password in place of ***)" if url.password else ""
    return f" (from here: `{command}`{password})"
