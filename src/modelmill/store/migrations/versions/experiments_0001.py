"""Experiments (definitions, exposures) and rollouts (state, events)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "experiments_0001"
down_revision = "core_0001"
branch_labels = ("experiments",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "experiments",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("model", sa.String(200), nullable=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("unit", sa.String(100), nullable=False),
        sa.Column("salt", sa.String(200), nullable=False),
        sa.Column("variants", sa.JSON, nullable=False),
        sa.Column("primary_metric", sa.String(200), nullable=False),
        sa.Column("guardrails", sa.JSON, nullable=False),
        sa.Column("min_sample_size", sa.Integer, nullable=False),
        sa.Column("alpha", sa.Float, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("stopped_at", sa.Float, nullable=True),
        sa.Column("result", sa.JSON, nullable=True),
    )
    op.create_table(
        "experiment_exposures",
        sa.Column("experiment", sa.String(200), sa.ForeignKey("experiments.name", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("unit_id", sa.String(200), primary_key=True),
        sa.Column("variant", sa.String(100), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
    )
    op.create_table(
        "rollouts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("model", sa.String(200), nullable=False, index=True),
        sa.Column("candidate", sa.Integer, nullable=False),
        sa.Column("baseline", sa.String(200), nullable=False),
        sa.Column("plan", sa.JSON, nullable=False),
        sa.Column("stage", sa.Integer, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("settings", sa.JSON, nullable=False),
        sa.Column("stage_started_at", sa.Float, nullable=False),
        sa.Column("marks", sa.JSON, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("reason", sa.String(2000), nullable=False),
    )
    op.create_table(
        "rollout_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("rollout_id", sa.Integer, sa.ForeignKey("rollouts.id", ondelete="CASCADE"), nullable=False,
                  index=True),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("action", sa.String(50), nullable=False),
        sa.Column("from_stage", sa.String(20), nullable=True),
        sa.Column("to_stage", sa.String(20), nullable=True),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("detail", sa.JSON, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("rollout_events")
    op.drop_table("rollouts")
    op.drop_table("experiment_exposures")
    op.drop_table("experiments")
