"""Events tables: the webhook outbox (one row per event and configured webhook, with its delivery status)."""

from __future__ import annotations

import sqlalchemy as sa

from modelmill.store.tables.core import metadata

__all__ = ["webhook_deliveries"]

webhook_deliveries = sa.Table(
    "webhook_deliveries",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(32), nullable=False, index=True),  # the same for every webhook of one event
    sa.Column("kind", sa.String(100), nullable=False),
    sa.Column("webhook", sa.String(200), nullable=False),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("body", sa.Text, nullable=False),  # the exact bytes POSTed (and signed), as UTF-8 JSON
    sa.Column("status", sa.String(16), nullable=False),  # pending, delivering, delivered, failed
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_at", sa.Float, nullable=False),
    sa.Column("lease_until", sa.Float, nullable=True),
    sa.Column("claimed_by", sa.String(200), nullable=True),
    sa.Column("last_status", sa.Integer, nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("delivered_at", sa.Float, nullable=True),
    sa.Index("ix_webhook_deliveries_due", "status", "next_at"),
)
