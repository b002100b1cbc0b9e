"""Feature store tables: versioned definitions and the materialisation log."""

from __future__ import annotations

import sqlalchemy as sa

from modelmill.store.tables.core import metadata

# One row per version of a definition; the highest version of a (kind, name) is current.
feature_definitions = sa.Table(
    "feature_definitions",
    metadata,
    sa.Column("kind", sa.String(40), primary_key=True),
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
)

# One row per materialisation run of a view into one online store; incremental runs start
# where the newest run of that (view, store) ended.
feature_materializations = sa.Table(
    "feature_materializations",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("view", sa.String(100), nullable=False),
    sa.Column("store", sa.String(500), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("start_us", sa.BigInteger, nullable=False),
    sa.Column("end_us", sa.BigInteger, nullable=False),
    sa.Column("rows", sa.BigInteger, nullable=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.Index("ix_feature_materializations_view_store", "view", "store"),
)
