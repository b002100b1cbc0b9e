"""Experiments: the multiple-testing correction across the treatments (holm, bh or none)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "experiments_0003"
down_revision = "experiments_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Null for experiments stored before: they read back with the default, holm.
    op.add_column("experiments", sa.Column("correction", sa.String(10), nullable=True))


def downgrade() -> None:
    # A plain DROP COLUMN (SQLite 3.35+), as experiments_0002 does, so experiment_exposures is not cascaded.
    op.drop_column("experiments", "correction")
