"""Engines from URLs: plain URLs mapped to the async drivers, pools and durability settings."""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from .dialects import (
    SQLITE_SYNCHRONOUS,
    check_synchronous,
    engine_options,
    install_connection_setup,
)

__all__ = ["DEFAULT_TIMEOUT", "DEFAULT_URL", "ENV_VAR", "create_engine", "masked", "resolve_url"]

ENV_VAR = "RUSTRADE_STORE_URL"
DEFAULT_URL = "sqlite+aiosqlite:///rustrade_state.db"
DEFAULT_TIMEOUT = 10.0
"""Seconds to wait for a connection, a lock or a statement before raising StorageError."""

_ASYNC_DRIVERS = {
    "sqlite": "aiosqlite",
    "postgresql": "asyncpg",
    "mysql": "asyncmy",
    "mariadb": "asyncmy",
}
_ALIASES = {"postgres": "postgresql"}
_EXTRAS = {"asyncmy": "mysql"}
"""Drivers that come with an optional extra of rustrade-store, by module name."""


def resolve_url(url: str | URL | None = None, *, default: str | None = None) -> URL:
    """Return the URL to use, with the async driver filled in.

    ``url`` wins, then the ``RUSTRADE_STORE_URL`` environment variable, then ``default``, then an
    SQLite file ``rustrade_state.db`` in the working directory. Plain URLs typed by habit
    (``sqlite:///bot.db``, ``postgresql://user@host/db``, ``mysql://user@host/db``) get the
    async driver.
    """
    raw = url if url is not None else os.environ.get(ENV_VAR) or default or DEFAULT_URL
    if isinstance(raw, URL):
        parsed = raw
    else:
        try:
            parsed = make_url(raw)
        except (ArgumentError, ValueError):
            scheme = raw.partition("://")[0] if "://" in raw else ""
            raise ValueError(
                f"cannot parse database URL with scheme {scheme!r}: "
                "expected a form like sqlite:///path.db or postgresql://user@host/db"
            ) from None
    backend, _, driver = parsed.drivername.partition("+")
    backend = _ALIASES.get(backend, backend)
    expected = _ASYNC_DRIVERS.get(backend)
    if expected is None:
        raise ValueError(
            f"unsupported database URL scheme {parsed.drivername!r}: "
            "use sqlite:// (aiosqlite), postgresql:// (asyncpg) or mysql:// (asyncmy)"
        )
    if driver and driver != expected:
        raise ValueError(
            f"driver {driver!r} in {parsed.drivername!r} is not supported: "
            f"use {backend}+{expected}:// or plain {backend}://"
        )
    return parsed.set(drivername=f"{backend}+{expected}")


def masked(url: URL) -> str:
    """The URL as text with its password replaced by ``***``."""
    return url.render_as_string(hide_password=True)


def create_engine(
    url: str | URL | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    sqlite_synchronous: str = SQLITE_SYNCHRONOUS,
    **options: Any,
) -> AsyncEngine:
    """Create an async engine for ``url`` with the store's pool and durability settings.

    ``sqlite_synchronous`` is SQLite's ``synchronous`` pragma: ``"FULL"`` (the default) or
    ``"NORMAL"``. ``options`` go to :func:`sqlalchemy.ext.asyncio.create_async_engine` and
    override ours.
    """
    sqlite_synchronous = check_synchronous(sqlite_synchronous)
    resolved = resolve_url(url)
    defaults = engine_options(resolved, timeout)
    if "poolclass" in options:  # another pool class takes other arguments
        defaults = {name: value for name, value in defaults.items() if not name.startswith("pool")}
        defaults.pop("max_overflow", None)
    merged = defaults | options
    if "connect_args" in defaults and "connect_args" in options:  # keep our timeouts
        merged["connect_args"] = defaults["connect_args"] | options["connect_args"]
    try:
        engine = create_async_engine(resolved, **merged)
    except ModuleNotFoundError as exc:
        extra = _EXTRAS.get(resolved.get_driver_name())
        if extra is None or exc.name != resolved.get_driver_name():
            raise
        raise ModuleNotFoundError(
            f"{masked(resolved)} needs the {exc.name} driver, which is not installed: "
            f"pip install 'rustrade-store[{extra}]'",
            name=exc.name,
        ) from exc
    install_connection_setup(engine, timeout, sqlite_synchronous)
    return engine
