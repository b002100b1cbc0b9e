"""Experiments and rollouts: definitions, first exposures, rollout state and its event trail.

Written through :mod:`modelmill.experiments` and :mod:`modelmill.rollout`; a
restarted rollout controller resumes from ``rollouts`` alone.
"""

from __future__ import annotations

import sqlalchemy as sa

from modelmill.store.tables.core import metadata

experiments = sa.Table(
    "experiments",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("model", sa.String(200), nullable=True),
    sa.Column("status", sa.String(20), nullable=False),  # running | stopped
    sa.Column("unit", sa.String(100), nullable=False),
    sa.Column("salt", sa.String(200), nullable=False),
    sa.Column("variants", sa.JSON, nullable=False),  # [{"name", "version", "weight"}], control first
    sa.Column("primary_metric", sa.String(200), nullable=False),
    sa.Column("direction", sa.String(10), nullable=True),  # higher | lower (null: the metric's default)
    sa.Column("correction", sa.String(10), nullable=True),  # holm | bh | none (null: holm)
    sa.Column("guardrails", sa.JSON, nullable=False),  # [metric name]
    sa.Column("min_sample_size", sa.Integer, nullable=False),
    sa.Column("alpha", sa.Float, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("stopped_at", sa.Float, nullable=True),
    sa.Column("result", sa.JSON, nullable=True),
)

experiment_exposures = sa.Table(
    "experiment_exposures",
    metadata,
    sa.Column("experiment", sa.String(200), sa.ForeignKey("experiments.name", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("unit_id", sa.String(200), primary_key=True),
    sa.Column("variant", sa.String(100), nullable=False),
    sa.Column("at", sa.Float, nullable=False),
)

rollouts = sa.Table(
    "rollouts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(200), nullable=False, index=True),
    sa.Column("candidate", sa.Integer, nullable=False),
    sa.Column("baseline", sa.String(200), nullable=False),  # a version number or an alias
    sa.Column("plan", sa.JSON, nullable=False),  # ["shadow", 5, 10, 50, 100]
    sa.Column("stage", sa.Integer, nullable=False),  # index into plan
    sa.Column("status", sa.String(20), nullable=False),  # running | completed | rolled_back
    sa.Column("settings", sa.JSON, nullable=False),  # min_requests, stage_seconds, thresholds
    sa.Column("stage_started_at", sa.Float, nullable=False),
    sa.Column("marks", sa.JSON, nullable=False),  # guardrail counters at stage start
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("reason", sa.String(2000), nullable=False),
)

rollout_events = sa.Table(
    "rollout_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("rollout_id", sa.Integer, sa.ForeignKey("rollouts.id", ondelete="CASCADE"), nullable=False,
              index=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("action", sa.String(50), nullable=False),  # start | advance | rollback | complete | check
    sa.Column("from_stage", sa.String(20), nullable=True),
    sa.Column("to_stage", sa.String(20), nullable=True),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("detail", sa.JSON, nullable=False),
)
