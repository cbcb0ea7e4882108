"""What differs between databases, one small class each: the engine's options and session
settings, the statements and clock that differ, and what a driver's error means.

:func:`backend_for` returns the :class:`Backend` of a URL, decided once; the rest of the package
uses what it gets. (SQLAlchemy's column types in :mod:`.._schema`, the migrations' batch
mode and the command's reports still look at the dialect's name where they compile or word
something per database.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._urls import MYSQL_BACKENDS
from .base import Backend, RowSource
from .mariadb import MariaDB
from .postgresql import PostgreSQL
from .sqlite import SQLite

if TYPE_CHECKING:
    from sqlalchemy import URL

__all__ = ["Backend", "MariaDB", "PostgreSQL", "RowSource", "SQLite", "backend_for"]


def backend_for(url: URL) -> Backend:
    """Return the :class:`Backend` of the database ``url`` names, or raise for one unsupported."""
    name = url.get_backend_name()
    if name == "sqlite":
        return SQLite(url)
    if name == "postgresql":
        return PostgreSQL(url)
    if name in MYSQL_BACKENDS:
        return MariaDB(url)
    raise ValueError(f"unsupported database {name!r}: use sqlite://, postgresql:// or mysql://")
