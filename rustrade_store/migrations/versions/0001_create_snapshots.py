"""Create the snapshots table.

Revision ID: 0001
Revises:
Create Date: 2026-11-26

Column types are spelled out here, not imported from the package, so this migration keeps
doing what it did when later releases change the package.

The MySQL/MariaDB branch was added to this revision after its release rather than in a new
one: no MySQL or MariaDB database was ever migrated by the earlier text (it refused them), so
no database's history changes, and PostgreSQL and SQLite get exactly what they got before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql, postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    # PostgreSQL: json keeps the document's text as written (jsonb would rewrite numbers and
    # refuse \u0000); "C" collation orders keys by code point, as SQLite does.
    # SQLite: TEXT affinity keeps the text as written (a column declared JSON would turn 1.0
    # into 1), and json_valid() keeps it a JSON document.
    # MySQL/MariaDB: utf8mb4 throughout; the key's collation is binary and NO PAD ('a' and
    # 'a ' are two keys, order is code point order); the value is LONGTEXT checked by
    # json_valid(), which is MariaDB's JSON (MySQL's JSON type would rewrite the document);
    # DATETIME(6) holds UTC with microseconds (TIMESTAMP would end in 2038).
    updated_type: sa.types.TypeEngine[Any] = sa.DateTime(timezone=True)
    table_options: dict[str, Any] = {}
    if dialect == "postgresql":
        key_type: sa.types.TypeEngine[str] = sa.String(255, collation="C")
        value_type: sa.types.TypeEngine[str] = postgresql.JSON()
    elif dialect in ("mysql", "mariadb"):
        is_mariadb = getattr(op.get_bind().dialect, "is_mariadb", False)
        collation = "utf8mb4_nopad_bin" if is_mariadb else "utf8mb4_0900_bin"
        key_type = mysql.VARCHAR(255, charset="utf8mb4", collation=collation)
        value_type = mysql.LONGTEXT(charset="utf8mb4", collation="utf8mb4_bin")
        updated_type = mysql.DATETIME(fsp=6)
        table_options = {
            f"{prefix}_{option}": value
            for prefix in ("mysql", "mariadb")
            for option, value in (("engine", "InnoDB"), ("charset", "utf8mb4"))
        }
    else:
        key_type = sa.String(255)
        value_type = sa.Text()
    checks = [sa.CheckConstraint("json_valid(value)", name="ck_snapshots_value_json")]
    op.create_table(
        "snapshots",
        sa.Column("key", key_type, primary_key=True),
        sa.Column("value", value_type, nullable=False),
        sa.Column("updated_at", updated_type, nullable=False),
        *(checks if dialect != "postgresql" else []),
        **table_options,
    )


def downgrade() -> None:
    op.drop_table("snapshots")
