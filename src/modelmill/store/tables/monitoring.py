"""Monitoring: reference statistics per model version, monitoring windows, and alert state."""

from __future__ import annotations

import sqlalchemy as sa

from modelmill.store.tables.core import metadata

monitoring_references = sa.Table(
    "monitoring_references",
    metadata,
    sa.Column("model", sa.String(200), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("artifact_path", sa.String(1024), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("n_rows", sa.BigInteger, nullable=False),
    sa.Column("columns", sa.JSON, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

monitoring_windows = sa.Table(
    "monitoring_windows",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("at", sa.Float, nullable=False, index=True),
    sa.Column("window_start", sa.Float, nullable=False),
    sa.Column("window_end", sa.Float, nullable=False),
    sa.Column("n_rows", sa.BigInteger, nullable=False),
    sa.Column("drift_share", sa.Float, nullable=True),
    sa.Column("dataset_drift", sa.Boolean, nullable=True),
    sa.Column("drift", sa.JSON, nullable=False),
    sa.Column("metrics", sa.JSON, nullable=False),
    sa.Index("ix_monitoring_windows_model", "model", "version", "at"),
)

monitoring_alerts = sa.Table(
    "monitoring_alerts",
    metadata,
    sa.Column("fingerprint", sa.String(64), primary_key=True),
    sa.Column("rule", sa.String(200), nullable=False, index=True),
    sa.Column("labels", sa.JSON, nullable=False),
    sa.Column("annotations", sa.JSON, nullable=False),
    sa.Column("state", sa.String(20), nullable=False),
    sa.Column("value", sa.Float, nullable=True),
    sa.Column("pending_since", sa.Float, nullable=True),
    sa.Column("started_at", sa.Float, nullable=True),
    sa.Column("resolved_at", sa.Float, nullable=True),
    sa.Column("updated_at", sa.Float, nullable=False),
    # What the alert's actions did when it last fired: [{action, ok, result | error, trigger_id, trigger_status}]
    sa.Column("actions", sa.JSON, nullable=True),
)
