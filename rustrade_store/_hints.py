"""What a failed call's message adds, per backend: the kind of connection failure and what to
check, the statement creating a missing database, the server's packet limit. Errors are
recognised by exception type, errno, SQLSTATE and driver codes."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Protocol

from ._errors import causes, connection_hint, upgrade_hint
from ._urls import masked

if TYPE_CHECKING:
    from sqlalchemy import URL

__all__ = [
    "MYSQL_CONFLICTS",
    "FailureHint",
    "mysql_hint",
    "mysql_timeout",
    "no_hint",
    "postgres_hint",
]


class FailureHint(Protocol):
    """What to add to the message of a failed operation: see
    :meth:`._backends.Backend.failure_hint`."""

    def __call__(self, writing: bool, cause: BaseException, written: int | None = None) -> str:
        """``writing``: the operation writes; ``cause``: the driver's error; ``written``: the
        bytes of JSON text the write sent, if known."""
        ...


def no_hint(writing: bool, cause: BaseException, written: int | None = None) -> str:
    return ""


def _address(url: URL, default_port: int) -> str:
    """``host:port`` of the server ``url`` names, or its hosts (a multi-host URL)."""
    if url.host:
        return f"{url.host}:{url.port or default_port}"
    hosts = url.query.get("host", ())
    listed = (hosts,) if isinstance(hosts, str) else tuple(hosts)
    return ", ".join(listed) if listed else f"localhost:{default_port}"


def _create_database(url: URL, address: str, statement: str) -> str:
    return (
        f"(create it on {address}, as a user allowed to, with `{statement}`, then its schema "
        f"with {upgrade_hint(masked(url))})"
    )


_POSTGRES_PORT = 5432
_MYSQL_PORT = 3306
_PLAIN_POSTGRES_NAME = re.compile(r"[a-z_][a-z0-9_]*")
_PLAIN_MYSQL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
"""Database names a CREATE DATABASE statement takes unquoted, as they are (PostgreSQL folds
unquoted names to lower case)."""


def postgres_hint(url: URL) -> FailureHint:
    """The connection's failure, what to check, and for a missing database the statement
    creating it (SQLSTATE 3D000); asyncpg raises a bare ``ConnectionError`` when the server
    answers its SSL request as no PostgreSQL server does (another database's port)."""
    address = _address(url, _POSTGRES_PORT)

    def hint(writing: bool, cause: BaseException, written: int | None = None) -> str:
        found = connection_hint(cause, address)
        if found:
            return found
        for error in causes(cause):
            sqlstate = getattr(error, "sqlstate", None)
            if sqlstate == "3D000":  # invalid_catalog_name
                name = url.database or url.username or "postgres"
                if not _PLAIN_POSTGRES_NAME.fullmatch(name):
                    name = '"{}"'.format(name.replace('"', '""'))
                return _create_database(url, address, f"CREATE DATABASE {name}")
            if sqlstate in ("28P01", "28000"):  # invalid password, or no such role or entry
                return "(check the user name and password in the URL)"
            if type(error) is ConnectionError:
                return (
                    f"(the server at {address} does not answer as PostgreSQL does: is that "
                    f"another database's port? PostgreSQL's is usually {_POSTGRES_PORT})"
                )
        return ""

    return hint


def mysql_hint(url: URL) -> FailureHint:
    """As :func:`postgres_hint`, by asyncmy's error codes (1049 unknown database, 1045
    access denied), and the packet limit for a write cut off."""
    address = _address(url, _MYSQL_PORT)

    def hint(writing: bool, cause: BaseException, written: int | None = None) -> str:
        found = connection_hint(cause, address)
        if found:
            return found
        code = cause.args[0] if cause.args else None
        if code == 1049:  # ER_BAD_DB_ERROR
            name = url.database or ""
            if not _PLAIN_MYSQL_NAME.fullmatch(name):
                name = "`{}`".format(name.replace("`", "``"))
            statement = f"CREATE DATABASE {name} CHARACTER SET utf8mb4"
            return _create_database(url, address, statement)
        if code == 1045:  # ER_ACCESS_DENIED_ERROR
            return "(check the user name and password in the URL)"
        if code == 2013 and mysql_timeout(cause):
            other = (
                f": {_POSTGRES_PORT} is PostgreSQL's usual port, which never answers a MariaDB "
                "client; is a MariaDB server listening there?"
                if url.port == _POSTGRES_PORT
                else ""
            )
            return f"(no answer from {address} in time{other})"
        return _packet_hint(writing, cause, written)

    return hint


MYSQL_CONFLICTS = frozenset({1213})
"""ER_LOCK_DEADLOCK: InnoDB chose this transaction as a deadlock's victim, or (on Galera) a write
through another node certified first; either way it was rolled back, nothing committed."""

# ER_NET_PACKET_TOO_LARGE, WARN_ALLOWED_PACKET_OVERFLOWED, and what the client sees when the
# server drops a connection whose packet is too large: CR_SERVER_GONE_ERROR, CR_SERVER_LOST.
_MYSQL_PACKET_ERRORS = frozenset({1153, 1301, 2006, 2013})


_PACKET_HINT_BYTES = 512 * 1024
"""The least JSON text a write must carry for max_allowed_packet to be worth naming: escaped,
it takes up to twice that, 1 MiB, the smallest max_allowed_packet in common use."""


def _packet_hint(writing: bool, cause: BaseException, written: int | None) -> str:
    from asyncmy.errors import InternalError

    code = cause.args[0] if cause.args else None
    # asyncmy also reports a packet cut off by the server as a wrong sequence number: an
    # InternalError with no error code, the one driver error recognised by its type alone.
    cut_off = isinstance(cause, InternalError) and not isinstance(code, int)
    if code in MYSQL_CONFLICTS:
        return (
            "(a conflict with another write to the same rows, through another Galera node or "
            "in a deadlock: this attempt wrote nothing)"
        )
    if not writing or mysql_timeout(cause) or (code not in _MYSQL_PACKET_ERRORS and not cut_off):
        return ""
    if written is not None and written < _PACKET_HINT_BYTES:
        return ""  # a few bytes: a lost connection, not a packet too large
    return (
        "(the server also closes the connection on a statement larger than its "
        "max_allowed_packet, 16 MiB by default; values travel as escaped JSON text, in which "
        "quotes and backslashes count twice: if this write is that large, raise "
        "max_allowed_packet on the server or save smaller values)"
    )


def mysql_timeout(cause: BaseException) -> bool:
    """Whether asyncmy's error is a timeout: its read timeout is CR_SERVER_LOST, the code of any
    lost connection, and only the asyncio.TimeoutError it was raised from tells them apart;
    1205 is ER_LOCK_WAIT_TIMEOUT, a row lock held longer than innodb_lock_wait_timeout."""
    code = cause.args[0] if cause.args else None
    return (code == 2013 and isinstance(cause.__context__, TimeoutError)) or code == 1205
