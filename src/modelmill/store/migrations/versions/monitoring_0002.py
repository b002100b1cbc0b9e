"""Monitoring: what a firing alert's actions did (and the outcome of the pipeline runs they queued)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "monitoring_0002"
down_revision = "monitoring_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("monitoring_alerts", sa.Column("actions", sa.JSON, nullable=True))


def downgrade() -> None:
    op.drop_column("monitoring_alerts", "actions")
