"""Loop tables: the leader lease of ``modelmill loop`` and the loop's decisions on finished pipeline runs."""

from __future__ import annotations

import sqlalchemy as sa

from modelmill.store.tables.core import metadata

__all__ = ["loop_decisions", "loop_leases"]

loop_leases = sa.Table(
    "loop_leases",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("holder", sa.String(200), nullable=False),
    sa.Column("epoch", sa.BigInteger, nullable=False),  # +1 at every change of holder: the fencing token
    sa.Column("acquired_at", sa.Float, nullable=False),
    sa.Column("renewed_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("last_round_at", sa.Float, nullable=True),
    sa.Column("last_round", sa.JSON, nullable=True),
)

loop_decisions = sa.Table(
    "loop_decisions",
    metadata,
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
