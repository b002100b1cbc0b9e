"""The metadata database contract, run on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest
import sqlalchemy as sa

from modelmill.errors import BackendUnavailable
from modelmill.store import Database
from modelmill.store.tables import audit_log


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'meta.db'}"
    return str(request.getfixturevalue("pg_url"))


def test_upgrade_creates_every_branch_head_and_is_idempotent(db_url: str) -> None:
    with Database(db_url) as db:
        assert db.schema_version() == set()
        db.upgrade()
        assert db.schema_version() == db.code_heads()
        db.upgrade()  # second call is a no-op
        names = set(sa.inspect(db.engine).get_table_names())
        assert {"artifacts", "audit_log", "alembic_version"} <= names


def test_audit_rows_commit_with_the_transaction(db_url: str) -> None:
    with Database(db_url).ensure_schema() as db:
        with db.begin() as conn:
            db.audit(conn, actor="alice", action="alias.set", subject="churn@production", detail={"version": 3})
        with pytest.raises(RuntimeError), db.begin() as conn:
            db.audit(conn, actor="bob", action="alias.set", subject="churn@production", detail={})
            raise RuntimeError("rolled back")
        with db.engine.connect() as conn:
            rows = conn.execute(sa.select(audit_log.c.actor, audit_log.c.detail)).all()
        assert [(r.actor, r.detail) for r in rows] == [("alice", {"version": 3})]


def test_unreachable_server_is_a_clear_error() -> None:
    with pytest.raises(BackendUnavailable) as info:
        Database("postgresql://postgres@127.0.0.1:1/nope").open()
    assert info.value.backend == "database" and "127.0.0.1:1" in str(info.value)


def _writer(url: str, worker: int, rows: int) -> None:
    db = Database(url).ensure_schema()
    for i in range(rows):
        with db.begin() as conn:
            db.audit(conn, actor=f"w{worker}", action="write", subject=f"{worker}:{i}", detail={"i": i})
    db.close()


def test_eight_processes_writing_at_once_lose_no_rows(pg_url: str) -> None:
    """8 processes migrate and write the same PostgreSQL database concurrently."""
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(pg_url, w, 50)) for w in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    with Database(pg_url) as db, db.engine.connect() as conn:
        subjects = conn.execute(sa.select(audit_log.c.subject)).scalars().all()
    assert len(subjects) == 8 * 50
    assert set(subjects) == {f"{w}:{i}" for w in range(8) for i in range(50)}
