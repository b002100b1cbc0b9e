"""Training: a pipeline step's attempts (retries, timeouts) and a claimed trigger's lease."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "training_0002"
down_revision = "training_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Null for steps stored before: one attempt, none recorded.
    op.add_column("pipeline_steps", sa.Column("attempts", sa.Integer, nullable=True))
    op.add_column("pipeline_steps", sa.Column("attempt_log", sa.JSON, nullable=True))
    # Null for triggers claimed before: a scheduler that never renewed a lease, reclaimed as expired.
    op.add_column("triggers", sa.Column("lease_expires_at", sa.Float, nullable=True))
    op.add_column("triggers", sa.Column("reclaims", sa.Integer, nullable=True))


def downgrade() -> None:
    # Plain DROP COLUMNs (SQLite 3.35+), as experiments_0002 does.
    op.drop_column("triggers", "reclaims")
    op.drop_column("triggers", "lease_expires_at")
    op.drop_column("pipeline_steps", "attempt_log")
    op.drop_column("pipeline_steps", "attempts")
