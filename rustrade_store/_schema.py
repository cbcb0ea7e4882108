"""The one table and its column types, as the package sees it.

The types spell out, once, how each database stores a key, a JSON document and a time, so that
every database keeps the same text, the same key order and the same instants. Alembic
migrations create and evolve the table.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import CheckConstraint, Column, MetaData, Table, Text, column, table
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.types import DateTime, String, TypeDecorator

from ._urls import MYSQL_BACKENDS

if TYPE_CHECKING:
    from sqlalchemy import Connection
    from sqlalchemy.engine import Dialect
    from sqlalchemy.schema import SchemaItem
    from sqlalchemy.sql.compiler import DDLCompiler
    from sqlalchemy.sql.ddl import BaseDDLElement
    from sqlalchemy.types import TypeEngine

__all__ = [
    "JSON_CHECK_DIALECTS",
    "VERSION_TABLE",
    "JsonDocument",
    "SnapshotKey",
    "UtcTimestamp",
    "json_check_applies",
    "metadata",
    "snapshots",
    "version_table",
]

VERSION_TABLE = "rustrade_store_alembic_version"
"""Alembic's version table for this package, apart from any application's own history."""

JSON_CHECK_DIALECTS = ("sqlite", "mysql", "mariadb")
"""Where the value column is text that a ``CHECK (json_valid(value))`` keeps JSON."""


def json_check_applies(
    ddl: BaseDDLElement,
    target: SchemaItem | str,
    bind: Connection | None,
    tables: list[Table] | None = None,
    state: Any | None = None,
    *,
    dialect: Dialect,
    compiler: DDLCompiler | None = None,
    checkfirst: bool = False,
) -> bool:
    """``ddl_if`` condition: whether the value column's JSON check belongs in the DDL."""
    return dialect.name in JSON_CHECK_DIALECTS


def _mysql_key_collation(dialect: Dialect) -> str:
    # Binary and NO PAD: 'a' and 'a ' are two keys, and order is code point order.
    # MariaDB 10.10+ has utf8mb4_nopad_bin; in MySQL 8 every utf8mb4_0900 collation is NO PAD.
    return "utf8mb4_nopad_bin" if getattr(dialect, "is_mariadb", False) else "utf8mb4_0900_bin"


class _PostgresJsonText(postgresql.JSON):
    """PostgreSQL ``json`` moved as text: rendered and bind-cast as JSON, with no Python codec."""

    render_bind_cast = True

    def bind_processor(self, dialect: Dialect) -> None:
        return None

    def result_processor(self, dialect: Dialect, coltype: object) -> None:
        return None


class JsonDocument(TypeDecorator[str]):
    """The exact text of a JSON document; the codec, not the driver, encodes and decodes it.

    PostgreSQL: ``json``, which keeps the text as written (``jsonb`` rejects ``\\u0000`` and
    prints ``1e300`` back as a 301-digit integer). SQLite: ``TEXT`` with a ``json_valid`` check,
    since a column declared ``JSON`` gets numeric affinity and turns the text ``1.0`` into 1.
    MySQL and MariaDB: ``LONGTEXT`` in utf8mb4 with a ``json_valid`` check, which is what
    MariaDB's ``JSON`` is (MySQL's own ``JSON`` sorts object keys and rewrites numbers).
    """

    impl = Text
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return _PostgresJsonText()
        if dialect.name in MYSQL_BACKENDS:
            return dialect.type_descriptor(
                mysql.LONGTEXT(charset="utf8mb4", collation="utf8mb4_bin")
            )
        return dialect.type_descriptor(Text())


class SnapshotKey(TypeDecorator[str]):
    """``VARCHAR(255)`` compared code point by code point, so key order is the same everywhere."""

    impl = String(255)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(String(255, collation="C"))
        if dialect.name in MYSQL_BACKENDS:
            collation = _mysql_key_collation(dialect)
            return dialect.type_descriptor(
                mysql.VARCHAR(255, charset="utf8mb4", collation=collation)
            )
        return dialect.type_descriptor(String(255))


class UtcTimestamp(TypeDecorator[datetime]):
    """A UTC timestamp with microseconds; databases that store it without a zone store UTC.

    MySQL and MariaDB: ``DATETIME(6)``, written as naive UTC (``DATETIME`` has no zone and
    ``TIMESTAMP`` ends in 2038).
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in MYSQL_BACKENDS:
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"timestamp {value.isoformat()} has no time zone")
        utc = value.astimezone(UTC)
        return utc.replace(tzinfo=None) if dialect.name in MYSQL_BACKENDS else utc

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


metadata = MetaData()

snapshots = Table(
    "snapshots",
    metadata,
    Column("key", SnapshotKey(), primary_key=True),
    Column("value", JsonDocument(), nullable=False),
    Column("updated_at", UtcTimestamp(), nullable=False),
    CheckConstraint("json_valid(value)", name="ck_snapshots_value_json").ddl_if(
        callable_=json_check_applies
    ),
)

version_table = table(VERSION_TABLE, column("version_num"))
