"""The dead-letter store: every rejected event with its reason and the bytes as they arrived.

Dead letters live in the metadata database, so they are written in the same
transaction as the micro-batch they were rejected from.

    >>> import tempfile
    >>> from modelmill.config import Settings
    >>> from modelmill.project import Project
    >>> from modelmill.ingest.validation import Rejected
    >>> p = Project(Settings.defaults(home=tempfile.mkdtemp()))
    >>> letters = DeadLetters(p.db)
    >>> with p.db.begin() as conn:
    ...     letters.add(conn, schema="clicks", stream="clicks", rejected=[Rejected("invalid_json", "bad", b"{")])
    >>> [(d.reason, d.payload) for d in letters.list()]
    [('invalid_json', b'{')]
    >>> p.close()
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from modelmill.ingest.validation import Rejected
from modelmill.store import Database
from modelmill.store.tables.ingest import ingest_dead_letters as table

__all__ = ["DeadLetter", "DeadLetters"]


@dataclasses.dataclass(frozen=True)
class DeadLetter:
    """One stored rejected event."""

    id: int
    schema: str
    stream: str
    reason: str
    field: str | None
    detail: str
    payload: bytes
    created_at: float
    replayed_at: float | None

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        try:
            out["payload"] = self.payload.decode()
        except UnicodeDecodeError:
            out["payload"] = self.payload.decode("utf-8", "backslashreplace")
        return out


class DeadLetters:
    """Reads and writes the ``ingest_dead_letters`` table."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def __repr__(self) -> str:
        return f"DeadLetters({self.db!r})"

    def add(self, conn: Connection, *, schema: str, stream: str, rejected: Sequence[Rejected]) -> None:
        """Store ``rejected`` inside the caller's transaction."""
        if not rejected:
            return
        now = time.time()
        conn.execute(table.insert(), [
            {"schema_name": schema, "stream": stream, "reason": r.reason, "field": r.field,
             "detail": r.detail[:2000], "payload": r.payload, "created_at": now, "replayed_at": None}
            for r in rejected
        ])

    def list(self, *, schema: str | None = None, stream: str | None = None, replayed: bool = False,
             limit: int | None = 100, after_id: int = 0) -> list[DeadLetter]:
        """Dead letters, oldest first; ``replayed=True`` lists those already reprocessed instead."""
        query = sa.select(table).where(table.c.id > after_id).order_by(table.c.id)
        query = query.where(table.c.replayed_at.is_not(None) if replayed else table.c.replayed_at.is_(None))
        if schema is not None:
            query = query.where(table.c.schema_name == schema)
        if stream is not None:
            query = query.where(table.c.stream == stream)
        if limit is not None:
            query = query.limit(limit)
        with self.db.engine.connect() as conn:
            return [_row(r) for r in conn.execute(query).mappings()]

    def counts(self, *, schema: str | None = None) -> dict[str, int]:
        """Pending dead letters per reason."""
        query = (sa.select(table.c.reason, sa.func.count()).where(table.c.replayed_at.is_(None))
                 .group_by(table.c.reason))
        if schema is not None:
            query = query.where(table.c.schema_name == schema)
        with self.db.engine.connect() as conn:
            return {reason: int(n) for reason, n in conn.execute(query)}

    def mark_replayed(self, conn: Connection, ids: Sequence[int]) -> None:
        now = time.time()
        for start in range(0, len(ids), 500):
            conn.execute(table.update().where(table.c.id.in_(ids[start:start + 500])).values(replayed_at=now))

    def update_reasons(self, conn: Connection, changes: Sequence[tuple[int, Rejected]]) -> None:
        """Record the reason a dead letter still fails after a replay."""
        for letter_id, r in changes:
            conn.execute(table.update().where(table.c.id == letter_id)
                         .values(reason=r.reason, field=r.field, detail=r.detail[:2000]))


def _row(r: Any) -> DeadLetter:
    return DeadLetter(id=int(r["id"]), schema=r["schema_name"], stream=r["stream"], reason=r["reason"],
                      field=r["field"], detail=r["detail"], payload=bytes(r["payload"]),
                      created_at=float(r["created_at"]), replayed_at=r["replayed_at"])
