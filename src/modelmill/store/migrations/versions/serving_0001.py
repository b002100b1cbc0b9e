"""Serving: traffic routes (variants, weights, shadows) per served model."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "serving_0001"
down_revision = "core_0001"
branch_labels = ("serving",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "serving_routes",
        sa.Column("model", sa.String(200), primary_key=True),
        sa.Column("variant", sa.String(100), primary_key=True),
        sa.Column("target", sa.String(200), nullable=False),
        sa.Column("weight", sa.Float, nullable=False),
        sa.Column("shadow", sa.Boolean, nullable=False),
        sa.Column("salt", sa.String(200), nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("serving_routes")
