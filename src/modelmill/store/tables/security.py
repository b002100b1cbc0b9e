"""Security's table: API tokens, stored as the sha256 of their secret, never the secret itself.

Written through :class:`modelmill.security.TokenStore` (``modelmill token ...``),
read by every serving worker in its periodic reload, so a revocation takes
effect everywhere without a restart.
"""

from __future__ import annotations

import sqlalchemy as sa

from modelmill.store.tables.core import metadata

api_tokens = sa.Table(
    "api_tokens",
    metadata,
    # The public part of a token ("mmt_<id>_<secret>"): finds the row without a scan.
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False, index=True),
    sa.Column("role", sa.String(20), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("created_by", sa.String(200), nullable=False),
    sa.Column("revoked_at", sa.Float, nullable=True),
)
