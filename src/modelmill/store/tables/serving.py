"""Serving's table: the traffic routes, one row per variant of a served model.

Written through :class:`modelmill.serving.RouteTable`, read by every serving
worker in a background poll, so a change takes effect without a restart.
"""

from __future__ import annotations

import sqlalchemy as sa

from modelmill.store.tables.core import metadata

serving_routes = sa.Table(
    "serving_routes",
    metadata,
    sa.Column("model", sa.String(200), primary_key=True),
    sa.Column("variant", sa.String(100), primary_key=True),
    # A version number ("3") or an alias ("production"), resolved by the registry at poll time.
    sa.Column("target", sa.String(200), nullable=False),
    sa.Column("weight", sa.Float, nullable=False),
    sa.Column("shadow", sa.Boolean, nullable=False),
    sa.Column("salt", sa.String(200), nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)
