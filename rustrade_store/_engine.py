"""Engines from URLs: plain URLs mapped to the async drivers, the backend's pool, driver and
session settings applied, and the durability settings read back for ``doctor``."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from sqlalchemy import URL, event, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import create_async_engine

from ._backends import backend_for
from ._errors import ConfigurationError, SchemaError, upgrade_hint
from ._urls import MYSQL_BACKENDS, check_hosts, hosts_as_query, is_memory_url, masked, passwords

if TYPE_CHECKING:
    from sqlalchemy import Connection
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = [
    "DEFAULT_TIMEOUT",
    "DEFAULT_URL",
    "ENV_VAR",
    "MAX_TIMEOUT",
    "SQLITE_SYNCHRONOUS",
    "SQLITE_SYNCHRONOUS_MODES",
    "autocommits",
    "check_synchronous",
    "check_timeout",
    "create_engine",
    "create_store_engine",
    "install_connection_setup",
    "masked",
    "passwords",
    "read_settings",
    "refuse_memory_url",
    "resolve_url",
    "store_engine_options",
]

ENV_VAR = "RUSTRADE_STORE_URL"
DEFAULT_URL = "sqlite+aiosqlite:///rustrade_state.db"
DEFAULT_TIMEOUT = 10.0
"""Seconds to wait for a connection, a lock or a statement before raising StorageError."""
MAX_TIMEOUT = 86_400.0
"""The longest timeout accepted, a day: within what every driver and SQLite's busy timeout
(milliseconds in a C int) can hold."""

SQLITE_SYNCHRONOUS = "FULL"
"""The default: in WAL mode, a commit that returned survives a power cut or an OS crash."""
SQLITE_SYNCHRONOUS_MODES = ("FULL", "NORMAL")
"""``NORMAL`` skips the fsync at each commit: still safe against a process crash, but the last
commits before a power cut or an OS crash can be lost (the database stays consistent)."""

_ASYNC_DRIVERS = {
    "sqlite": "aiosqlite",
    "postgresql": "asyncpg",
    "mysql": "asyncmy",
    "mariadb": "asyncmy",
}
_ALIASES = {"postgres": "postgresql"}
_EXTRAS = {"asyncmy": "mysql"}
"""Drivers that come with an optional extra of rustrade-store, by module name."""

_SQLITE_SYNCHRONOUS_NAMES = {"0": "OFF", "1": "NORMAL", "2": "FULL", "3": "EXTRA"}
_SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
"""libpq's ``sslmode`` values, which asyncpg takes as its ``ssl`` argument."""


def resolve_url(url: str | URL | None = None, *, default: str | None = None) -> URL:
    """Return the URL to use, with the async driver filled in.

    ``url`` wins, then the ``RUSTRADE_STORE_URL`` environment variable, then ``default``, then an
    SQLite file ``rustrade_state.db`` in the working directory. Plain URLs typed by habit
    (``sqlite:///bot.db``, ``postgresql://user@host/db``, ``mysql://user@host/db``) get the
    async driver. A ``?password=`` parameter becomes the URL's password, and so does a password
    with an unencoded ``@`` (read up to the last ``@``, as asyncpg and urllib read it);
    PostgreSQL's ``?sslmode=`` becomes asyncpg's ``ssl``. A URL the store cannot use raises
    :class:`~rustrade_store.ConfigurationError` saying what to give instead.
    """
    raw = url if url is not None else os.environ.get(ENV_VAR) or default or DEFAULT_URL
    if isinstance(raw, URL):
        parsed = raw
    else:
        rewritten = hosts_as_query(raw)
        try:
            parsed = make_url(rewritten)
        except (ArgumentError, ValueError):
            scheme = raw.partition("://")[0] if "://" in raw else ""
            hint = " (percent-encode @, : and / in a password: %40, %3A, %2F)" if "@" in raw else ""
            raise ConfigurationError(
                f"cannot parse database URL with scheme {scheme!r}: "
                f"expected a form like sqlite:///path.db or postgresql://user@host/db{hint}"
            ) from None
    backend, _, driver = parsed.drivername.partition("+")
    backend = _ALIASES.get(backend, backend)
    expected = _ASYNC_DRIVERS.get(backend)
    if expected is None:
        raise ConfigurationError(
            f"unsupported database URL scheme {parsed.drivername!r}: "
            "use sqlite:// (aiosqlite), postgresql:// (asyncpg) or mysql:// (asyncmy)"
        )
    if driver and driver != expected:
        raise ConfigurationError(
            f"driver {driver!r} in {parsed.drivername!r} is not supported: "
            f"use {backend}+{expected}:// or plain {backend}://"
        )
    parsed = _with_password(parsed)
    check_hosts(parsed)
    if backend == "sqlite":
        _refuse_sqlite_host(parsed)
    elif backend == "postgresql":
        parsed = _with_ssl_mode(parsed)
    return parsed.set(drivername=f"{backend}+{expected}")


def _with_password(url: URL) -> URL:
    """``url`` with its whole password where SQLAlchemy, the drivers and :func:`masked` look."""
    if url.host and "@" in url.host and url.password is not None:
        # A host name holds no "@": the password ran on to the last one.
        rest, _, host = url.host.rpartition("@")
        url = url.set(password=f"{url.password}@{rest}", host=host)
    given = url.query.get("password")
    if given is None:
        return url
    if not isinstance(given, str) or url.password not in (None, given):
        raise ConfigurationError(
            f"{masked(url)} gives more than one password (before the host, or as ?password=): "
            "keep one"
        )
    return url.difference_update_query(["password"]).set(password=given)


def _refuse_sqlite_host(url: URL) -> None:
    """SQLite URLs name a file, never a host: ``sqlite://data/x.db`` reads ``data`` as one."""
    if not (url.host or url.port or url.username or url.password):
        return
    path = "/".join(part for part in (url.host, url.database) if part)
    fixed = URL.create(url.drivername, database=path, query=url.query)
    what = f"reads {url.host!r} as a host" if url.host else "gives a user, password or port"
    raise ConfigurationError(
        f"{masked(url)} {what}, and an SQLite URL has none: for the file {path} use "
        f"{fixed.render_as_string()} (three slashes before a relative path, four before an "
        "absolute one)"
    )


def _with_ssl_mode(url: URL) -> URL:
    """libpq's ``sslmode``, as managed PostgreSQL providers hand it out, as asyncpg's ``ssl``
    (asyncpg's ``connect()`` takes no ``sslmode``)."""
    mode = url.query.get("sslmode")
    if mode is None:
        return url
    if mode not in _SSL_MODES:
        raise ConfigurationError(f"sslmode={mode!r} is not one of {', '.join(_SSL_MODES)}")
    ssl = url.query.get("ssl")
    if ssl not in (None, mode):
        raise ConfigurationError(f"sslmode={mode} and ssl={ssl} disagree: give one of them")
    return url.difference_update_query(["sslmode"]).update_query_dict({"ssl": mode})


def refuse_memory_url(url: URL, what: str) -> None:
    """Raise :class:`ConfigurationError` for an SQLite URL that names no file (``sqlite://``,
    ``sqlite:///``, ``sqlite:///:memory:``): ``what`` (a durable store, a migration) would keep
    nothing once closed."""
    if url.get_backend_name() != "sqlite" or not is_memory_url(url):
        return
    raise ConfigurationError(
        f"{masked(url)} names no SQLite file, so {what} would keep nothing: every save would "
        "be gone once it closes (an unset variable, as in sqlite:///$DB, gives such a URL). "
        "Give a file's path, as in sqlite:///state.db; for a store that keeps nothing, on "
        "purpose, use InMemoryStore()"
    )


def store_engine_options(url: URL) -> dict[str, Any]:
    """Settings for an engine only the store uses (not for migrations, which need transactions).

    Connections autocommit: a single statement is its own transaction, durable when it returns,
    with no BEGIN and COMMIT round trips (PostgreSQL) or commit hand-off (aiosqlite); and since
    every operation then ends its transaction, the pool's rollback on return is skipped while a
    connection is in autocommit. Operations of several statements switch their connection to
    :attr:`~._backends.Backend.transaction_isolation` for one transaction.

    Not behind PgBouncer's transaction pooling (``prepared_statement_cache_size=0``): there a
    statement prepared outside a transaction can land on one server connection and run on
    another, so every operation keeps its transaction.

    An SQLite file is opened only if it exists (``sqlite_create=False``): only a migration
    creates one.
    """
    if url.query.get("prepared_statement_cache_size") == "0":
        return {}
    options: dict[str, Any] = {"isolation_level": "AUTOCOMMIT", "skip_autocommit_rollback": True}
    if url.get_backend_name() == "sqlite":
        options["sqlite_create"] = False
    return options


def autocommits(url: URL) -> bool:
    """Whether the connections of an engine made with :func:`store_engine_options` autocommit."""
    return store_engine_options(url).get("isolation_level") == "AUTOCOMMIT"


def create_store_engine(
    url: str | URL | None, *, timeout: float, sqlite_synchronous: str, **options: Any
) -> AsyncEngine:
    """:func:`create_engine` for ``url`` with :func:`store_engine_options`, ``options`` over
    them: the engine of a store built from a URL.

    ``isolation_level`` and ``skip_autocommit_rollback`` are refused: the store takes single
    statements on this engine to autocommit, so another setting would let saves return and be
    rolled back.
    """
    for managed in ("isolation_level", "skip_autocommit_rollback"):
        if managed in options:
            raise ConfigurationError(
                f"{managed} is the store's own setting (single statements autocommit, "
                "writes of several rows run in a transaction of their own): leave it out, "
                "or hand SqlStore an engine you made"
            )
    resolved = resolve_url(url)
    refuse_memory_url(resolved, "a store")
    return create_engine(
        resolved,
        timeout=timeout,
        sqlite_synchronous=sqlite_synchronous,
        **(store_engine_options(resolved) | options),
    )


def check_timeout(timeout: float) -> float:
    """Return ``timeout`` if it is a usable number of seconds, else raise naming it."""
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not 0 < timeout <= MAX_TIMEOUT
    ):
        raise ConfigurationError(
            f"timeout {timeout!r} is out of range: give seconds greater than 0 and at most "
            f"{MAX_TIMEOUT:,.0f} (a day)"
        )
    return float(timeout)


def check_synchronous(mode: str) -> str:
    """Return the SQLite ``synchronous`` mode to use, or raise naming the one refused."""
    upper = mode.upper() if isinstance(mode, str) else mode
    if upper not in SQLITE_SYNCHRONOUS_MODES:
        raise ConfigurationError(
            f"sqlite_synchronous={mode!r} is not supported: use one of {SQLITE_SYNCHRONOUS_MODES}"
        )
    return upper


def install_connection_setup(
    engine: AsyncEngine, timeout: float, synchronous: str = SQLITE_SYNCHRONOUS
) -> None:
    """Apply the durability settings to every new connection of an engine the store owns."""
    statements = backend_for(engine.url).session_setup(timeout, check_synchronous(synchronous))
    if not statements:
        return

    @event.listens_for(engine.sync_engine, "connect")
    def _session_setup(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        for statement in statements:
            cursor.execute(statement)
        cursor.close()


def create_engine(
    url: str | URL | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    sqlite_synchronous: str = SQLITE_SYNCHRONOUS,
    sqlite_create: bool = True,
    **options: Any,
) -> AsyncEngine:
    """Create an async engine for ``url`` with the store's pool and durability settings.

    ``timeout`` is in seconds, greater than 0 and at most :data:`MAX_TIMEOUT`.
    ``sqlite_synchronous`` is SQLite's ``synchronous`` pragma: ``"FULL"`` (the default) or
    ``"NORMAL"``. ``sqlite_create=False`` opens an SQLite file only if it exists, read-write,
    and raises :class:`~rustrade_store.SchemaError` where it does not. ``options`` go to
    :func:`sqlalchemy.ext.asyncio.create_async_engine` and override ours.
    """
    timeout = check_timeout(timeout)
    sqlite_synchronous = check_synchronous(sqlite_synchronous)
    resolved = resolve_url(url)
    defaults = backend_for(resolved).engine_options(timeout)
    if "poolclass" in options:  # another pool class takes other arguments
        defaults = {name: value for name, value in defaults.items() if not name.startswith("pool")}
        defaults.pop("max_overflow", None)
    merged = defaults | options
    if "connect_args" in defaults and "connect_args" in options:  # keep our timeouts
        ours, theirs = defaults["connect_args"], options["connect_args"]
        merged["connect_args"] = ours | theirs
        if "server_settings" in ours and "server_settings" in theirs:
            merged["connect_args"]["server_settings"] = (
                ours["server_settings"] | theirs["server_settings"]
            )
    if resolved.get_backend_name() in MYSQL_BACKENDS and "host" in resolved.query:
        # asyncmy takes one host: the creator tries each, with every session setting.
        from ._galera import first_synced_node  # only a URL of several hosts needs it

        creator = first_synced_node(resolved, merged.pop("connect_args", {}), timeout)
        merged.setdefault("async_creator", creator)
    try:
        engine = create_async_engine(resolved, **merged)
    except ModuleNotFoundError as exc:
        extra = _EXTRAS.get(resolved.get_driver_name())
        if extra is None or exc.name != resolved.get_driver_name():
            raise
        raise ConfigurationError(
            f"{masked(resolved)} needs the {exc.name} driver, which is not installed: "
            f"pip install 'rustrade-store[{extra}]'"
        ) from exc
    install_connection_setup(engine, timeout, sqlite_synchronous)
    if not sqlite_create:
        _open_existing_only(engine)
    return engine


def _open_existing_only(engine: AsyncEngine) -> None:
    """Open an engine's SQLite file read-write without creating it (SQLite's URI ``mode=rw``),
    so that a mistyped path fails instead of leaving an empty database behind."""
    url = engine.url
    if engine.dialect.name != "sqlite" or is_memory_url(url) or url.query.get("uri"):
        return  # nothing on disk, or the caller's own SQLite URI chooses the mode

    @event.listens_for(engine.sync_engine, "do_connect")
    def _read_write(_dialect: Any, _record: Any, cargs: list[Any], cparams: dict[str, Any]) -> None:
        path = cargs[0]  # made absolute by SQLAlchemy
        if not os.path.exists(path):
            raise SchemaError(
                f"the SQLite file {path} does not exist: create it with "
                f"{upgrade_hint(masked(url))}; the store creates no file, so that a mistyped "
                "path is not taken for an empty database"
            )
        cargs[0] = f"file:{quote(path)}?mode=rw"
        cparams["uri"] = True


def read_settings(connection: Connection) -> list[tuple[str, str]]:
    """The durability settings a connection runs with, as (name, value), for ``doctor``.

    SQLite: ``journal_mode`` and ``synchronous``; PostgreSQL: ``synchronous_commit`` and
    ``fsync``; MySQL and MariaDB: ``innodb_flush_log_at_trx_commit`` and ``sync_binlog``. Read
    on a connection of an engine the store made, they are what the store uses.
    """
    found = []
    for statement in backend_for(connection.engine.url).durability_settings:
        setting = statement.split()[-1].removeprefix("@@")
        value = str(connection.exec_driver_sql(statement).scalar())
        if statement == "PRAGMA synchronous":
            value = _SQLITE_SYNCHRONOUS_NAMES.get(value, value)
        found.append((setting, value))
    return found
