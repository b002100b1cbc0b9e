"""Experiments: the direction of the primary metric (which way is better)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "experiments_0002"
down_revision = "experiments_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Null for experiments stored before: they read back with the metric's default direction.
    op.add_column("experiments", sa.Column("direction", sa.String(10), nullable=True))


def downgrade() -> None:
    # A plain DROP COLUMN (SQLite 3.35+): batch mode would recreate the table, and dropping it would cascade
    # to experiment_exposures.
    op.drop_column("experiments", "direction")
