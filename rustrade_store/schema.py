"""The one table, as the package sees it. Alembic migrations create and evolve it."""

from __future__ import annotations

from sqlalchemy import CheckConstraint, Column, MetaData, Table, column, table

from .dialects import JsonDocument, SnapshotKey, UtcTimestamp, json_check_applies

__all__ = ["VERSION_TABLE", "metadata", "snapshots", "version_table"]

VERSION_TABLE = "rustrade_store_alembic_version"
"""Alembic's version table for this package, apart from any application's own history."""

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
