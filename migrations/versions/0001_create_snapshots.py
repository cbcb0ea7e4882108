"""Create the snapshots table.

Revision ID: 0001
Revises:
Create Date: 2026-11-26

Column types are spelled out here, not imported from the package, so this migration keeps
doing what it did when later releases change the package.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

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
    if dialect == "postgresql":
        key_type: sa.types.TypeEngine[str] = sa.String(255, collation="C")
        value_type: sa.types.TypeEngine[str] = postgresql.JSON()
    else:
        key_type = sa.String(255)
        value_type = sa.Text()
    checks = [sa.CheckConstraint("json_valid(value)", name="ck_snapshots_value_json")]
    op.create_table(
        "snapshots",
        sa.Column("key", key_type, primary_key=True),
        sa.Column("value", value_type, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        *(checks if dialect == "sqlite" else []),
    )


def downgrade() -> None:
    op.drop_table("snapshots")
