"""Ingestion: per-table write sequence, the event-id index of committed batches, dead letters."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "ingest_0001"
down_revision = "core_0001"
branch_labels = ("ingest",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ingest_tables",
        sa.Column("table_name", sa.String(160), primary_key=True),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_table(
        "ingest_batches",
        sa.Column("table_name", sa.String(160), primary_key=True),
        sa.Column("seq", sa.BigInteger, primary_key=True),
        sa.Column("stream", sa.String(255), nullable=False),
        sa.Column("rows", sa.Integer, nullable=False),
        sa.Column("id_hashes", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "ingest_dead_letters",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("schema_name", sa.String(128), nullable=False),
        sa.Column("stream", sa.String(255), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("field", sa.String(128), nullable=True),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("replayed_at", sa.Float, nullable=True),
    )
    op.create_index("ix_ingest_dead_letters_schema", "ingest_dead_letters", ["schema_name", "replayed_at"])


def downgrade() -> None:
    op.drop_index("ix_ingest_dead_letters_schema", table_name="ingest_dead_letters")
    op.drop_table("ingest_dead_letters")
    op.drop_table("ingest_batches")
    op.drop_table("ingest_tables")
