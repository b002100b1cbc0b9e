"""Feature store: versioned feature definitions and the materialisation log."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "features_0001"
down_revision = "core_0001"
branch_labels = ("features",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "feature_definitions",
        sa.Column("kind", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
    )
    op.create_table(
        "feature_materializations",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("view", sa.String(100), nullable=False),
        sa.Column("store", sa.String(500), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("start_us", sa.BigInteger, nullable=False),
        sa.Column("end_us", sa.BigInteger, nullable=False),
        sa.Column("rows", sa.BigInteger, nullable=False),
        sa.Column("at", sa.Float, nullable=False),
    )
    op.create_index("ix_feature_materializations_view_store", "feature_materializations", ["view", "store"])


def downgrade() -> None:
    op.drop_index("ix_feature_materializations_view_store", table_name="feature_materializations")
    op.drop_table("feature_materializations")
    op.drop_table("feature_definitions")
