"""The metadata database contract, run on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from modelmill.errors import BackendUnavailable, StoreError
from modelmill.store import Database
from modelmill.store.tables import audit_log
from modelmill.store.tables.security import api_tokens


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


def _writer(url: str, worker: int, rows: int, barrier: Any) -> None:
    barrier.wait()  # every process is up before any migrates: the migrations race each other
    db = Database(url).ensure_schema()
    for i in range(rows):
        if i == rows // 2:
            barrier.wait()  # no one writes its second half before everyone has written its first
        with db.begin() as conn:
            db.audit(conn, actor=f"w{worker}", action="write", subject=f"{worker}:{i}", detail={"i": i})
    db.close()


def test_eight_processes_writing_at_once_lose_no_rows(pg_url: str) -> None:
    """8 processes migrate and write the same PostgreSQL database concurrently."""
    ctx = mp.get_context("spawn")
    # Without the barrier, 8 spawned processes on 2 cores may start (and finish) one after another.
    barrier = ctx.Barrier(8, timeout=120)
    procs = [ctx.Process(target=_writer, args=(pg_url, w, 50, barrier)) for w in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
        assert p.exitcode == 0
    with Database(pg_url) as db, db.engine.connect() as conn:
        rows = conn.execute(sa.select(audit_log.c.id, audit_log.c.subject).order_by(audit_log.c.id)).all()
    subjects = [r.subject for r in rows]
    assert len(subjects) == 8 * 50
    assert set(subjects) == {f"{w}:{i}" for w in range(8) for i in range(50)}
    # Each process did its part while all the others were writing: every first half committed before any
    # second half (ids are taken in insert order), so the eight writing lifetimes overlapped.
    half = [int(s.split(":")[1]) >= 25 for s in subjects]
    assert half == sorted(half)
    first_writers = {s.split(":")[0] for s, second in zip(subjects, half, strict=True) if not second}
    assert first_writers == {str(w) for w in range(8)}


# ---- a damaged database is a StoreError that says what is wrong ---------------------------------------------


def _sql(db: Database, statement: str) -> None:
    with db.begin() as conn:
        conn.execute(sa.text(statement))


def test_a_revision_from_a_newer_modelmill_is_refused_not_migrated_over(db_url: str) -> None:
    with Database(db_url).ensure_schema() as db:
        _sql(db, "UPDATE alembic_version SET version_num = 'zz_9999' WHERE version_num LIKE 'security_%'")
        before = db.schema_version()
        for step in (db.ensure_schema, db.upgrade, db.downgrade):
            with pytest.raises(StoreError) as info:
                step()
            assert info.value.context["revisions"] == ["zz_9999"] and "newer modelmill" in info.value.message
        assert db.schema_version() == before
        assert db.check() == ["schema revision zz_9999 is unknown to this modelmill (migrated by a newer one)"]


def test_missing_tables_and_columns_are_named(db_url: str) -> None:
    with Database(db_url).ensure_schema() as db:
        assert db.check() == []
        _sql(db, "DROP TABLE model_aliases")
        _sql(db, "ALTER TABLE api_tokens DROP COLUMN revoked_at")
        assert db.check() == ["table api_tokens lacks column revoked_at", "table model_aliases is missing"]
        with pytest.raises(StoreError, match="table model_aliases missing"):
            db.ensure_schema()
        # A query that meets the damage is the same kind of error, on either dialect, not a driver error.
        with pytest.raises(StoreError) as info, db.begin() as conn:
            conn.execute(sa.select(api_tokens))
        assert info.value.context["backend"] == "database" and "revoked_at" in info.value.context["reason"]


def test_a_schema_behind_the_code_is_checked_against_its_own_revisions(db_url: str) -> None:
    """Behind is fine (the next command upgrades it), but what its applied migrations made must be there."""
    with Database(db_url).ensure_schema() as db:
        db.downgrade("registry@-1")
        assert db.schema_version() != db.code_heads()
        assert db.check() == []  # the registry's tables are pending, not missing
        _sql(db, "DROP TABLE api_tokens")
        assert db.check() == ["table api_tokens is missing"]


def test_driver_errors_that_are_not_damage_pass_unchanged(db_url: str) -> None:
    with Database(db_url).ensure_schema() as db:
        row = {"id": "t1", "name": "n", "role": "read", "sha256": "0" * 64, "created_at": 0.0, "created_by": "t"}
        with db.begin() as conn:
            conn.execute(api_tokens.insert().values(**row))
        with pytest.raises(sa.exc.IntegrityError), db.begin() as conn:
            conn.execute(api_tokens.insert().values(**row))


def test_a_value_that_is_not_json_is_named_by_doctor_and_refused_on_read(tmp_path: Path) -> None:
    with Database(f"sqlite:///{tmp_path / 'm.db'}").ensure_schema() as db:
        with db.begin() as conn:
            db.audit(conn, actor="t", action="a", subject="s", detail={"k": 1})
        _sql(db, "UPDATE audit_log SET detail = '{broken'")
        assert db.check() == ["table audit_log: 1 value of detail not JSON"]
        with pytest.raises(StoreError, match="not JSON"), db.engine.connect() as conn:
            conn.execute(sa.select(audit_log.c.detail)).all()


def test_a_zero_length_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    path.write_bytes(b"")
    with pytest.raises(StoreError) as info:
        Database(f"sqlite:///{path}").open()
    assert "zero-length" in info.value.message and "modelmill db upgrade" in info.value.message
    assert path.stat().st_size == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["m.db"]


def test_a_corrupt_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    path.write_bytes(b"this is not a database" * 300)
    with pytest.raises(StoreError) as info:
        Database(f"sqlite:///{path}").open()
    assert info.value.context["reason"] == "file is not a database"


def _open_fresh(url: str, barrier: Any) -> None:
    barrier.wait(60)
    Database(url).ensure_schema().close()


def test_processes_creating_one_new_file_at_once_never_see_it_empty(tmp_path: Path) -> None:
    """A new SQLite file is linked into place whole, so a racing process never meets a zero-length one."""
    url = f"sqlite:///{tmp_path / 'new' / 'm.db'}"
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_open_fresh, args=(url, barrier)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    with Database(url) as db:
        assert db.schema_version() == db.code_heads() and db.check() == []
    assert sorted(p.name for p in (tmp_path / "new").iterdir() if p.name.endswith(".new")) == []
