"""Table definitions, one module per stage, all on one shared ``MetaData``.

Each stage's tables are created by that stage's Alembic migration branch
(``store/migrations/versions/<stage>_*.py``); the definitions here are what
the code reads and writes through SQLAlchemy Core.
"""

from __future__ import annotations

from modelmill.store.tables import events as events  # its tables join `metadata`
from modelmill.store.tables import experiments as experiments  # its tables join `metadata`
from modelmill.store.tables import features as features  # its tables join `metadata`
from modelmill.store.tables import ingest as ingest  # its tables join `metadata`
from modelmill.store.tables import loop as loop  # its tables join `metadata`
from modelmill.store.tables import monitoring as monitoring  # its tables join `metadata`
from modelmill.store.tables import registry as registry  # its tables join `metadata`
from modelmill.store.tables import security as security  # its tables join `metadata`
from modelmill.store.tables import serving as serving  # its tables join `metadata`
from modelmill.store.tables import training as training  # its tables join `metadata`
from modelmill.store.tables.core import artifacts, audit_log, metadata

__all__ = ["artifacts", "audit_log", "metadata"]
