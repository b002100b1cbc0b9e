"""Ingestion tables: the write sequence and id index of each ingested table, and the dead letters."""

from __future__ import annotations

import sqlalchemy as sa

from modelmill.store.tables.core import metadata

# One row per offline table the ingest sink writes, keyed "<table>@<hash of the offline root>". Updating ``seq`` is the lock every sink of
# that table takes while it writes a micro-batch, so concurrent consumers never both write an event.
ingest_tables = sa.Table(
    "ingest_tables",
    metadata,
    sa.Column("table_name", sa.String(160), primary_key=True),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

# One row per committed micro-batch: the 64-bit hashes of its event ids (little-endian uint64),
# which is the durable dedupe index a restarted or concurrent sink catches up from.
ingest_batches = sa.Table(
    "ingest_batches",
    metadata,
    sa.Column("table_name", sa.String(160), primary_key=True),
    sa.Column("seq", sa.BigInteger, primary_key=True),
    sa.Column("stream", sa.String(255), nullable=False),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("id_hashes", sa.LargeBinary, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

ingest_dead_letters = sa.Table(
    "ingest_dead_letters",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("schema_name", sa.String(128), nullable=False),
    sa.Column("stream", sa.String(255), nullable=False),
    sa.Column("reason", sa.String(32), nullable=False),
    sa.Column("field", sa.String(128), nullable=True),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("replayed_at", sa.Float, nullable=True),
    sa.Index("ix_ingest_dead_letters_schema", "schema_name", "replayed_at"),
)
