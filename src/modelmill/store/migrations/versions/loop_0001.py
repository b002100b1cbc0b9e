"""Loop: the leader lease of `modelmill loop` and its decisions on finished pipeline runs."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "loop_0001"
down_revision = "core_0001"
branch_labels = ("loop",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "loop_leases",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("holder", sa.String(200), nullable=False),
        sa.Column("epoch", sa.BigInteger, nullable=False),
        sa.Column("acquired_at", sa.Float, nullable=False),
        sa.Column("renewed_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("last_round_at", sa.Float, nullable=True),
        sa.Column("last_round", sa.JSON, nullable=True),
    )
    op.create_table(
        "loop_decisions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("model", sa.String(200), nullable=False, index=True),
        sa.Column("trigger_id", sa.Integer, nullable=False, unique=True),
        sa.Column("pipeline_run_id", sa.String(32), nullable=True),
        sa.Column("version", sa.Integer, nullable=True),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("gate", sa.JSON, nullable=True),
        sa.Column("rollout_id", sa.Integer, nullable=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("loop_decisions")
    op.drop_table("loop_leases")
