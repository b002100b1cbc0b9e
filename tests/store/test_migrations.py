"""Every migration runs both ways: down to an empty database and up to the code's heads again."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory

from modelmill.store import Database
from modelmill.store.database import MIGRATIONS
from modelmill.store.tables import audit_log, metadata


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'meta.db'}"
    return str(request.getfixturevalue("pg_url"))  # a database of its own, dropped afterwards


def tables(db: Database) -> set[str]:
    return set(sa.inspect(db.engine).get_table_names()) - {"alembic_version"}


def shape(db: Database) -> dict[str, tuple[set[str], set[str]]]:
    """Each table's columns and index names."""
    inspector = sa.inspect(db.engine)
    return {name: ({c["name"] for c in inspector.get_columns(name)},
                   {i["name"] for i in inspector.get_indexes(name) if i["name"]}) for name in sorted(tables(db))}


def test_every_downgrade_drops_its_tables_and_upgrade_brings_them_back(db_url: str) -> None:
    with Database(db_url) as db:
        db.upgrade()
        assert tables(db) == set(metadata.tables)
        created = shape(db)
        assert {name: columns for name, (columns, _) in created.items()} == {
            t.name: {c.name for c in t.columns} for t in metadata.sorted_tables}  # what the code reads
        with db.begin() as conn:
            db.audit(conn, actor="t", action="a", subject="s", detail={})
        db.downgrade("base")  # every migration's downgrade(): each branch, then core_0001
        assert db.schema_version() == set()
        assert tables(db) == set()
        db.upgrade()
        assert db.schema_version() == db.code_heads()
        assert shape(db) == created
        with db.engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(audit_log)).scalar_one() == 0


def test_each_head_downgrades_one_step_and_back(db_url: str) -> None:
    """A branch's newest migration alone: only its own change is undone, and redone."""
    scripts = ScriptDirectory(str(MIGRATIONS))
    root = {s.revision for s in scripts.walk_revisions() if s.down_revision is None}
    with Database(db_url) as db:
        db.upgrade()
        full = shape(db)
        heads = db.code_heads()
        for head in sorted(heads):
            down = scripts.get_revision(head).down_revision
            assert isinstance(down, str)
            db.downgrade(f"{head}@-1")
            # The shared root is below every branch, so it is never listed as a head of its own.
            assert db.schema_version() == (heads - {head}) | ({down} - root)
            after = shape(db)
            assert after != full, f"downgrading {head} changed neither a table, a column nor an index"
            assert set(after) <= set(full)
            assert all(after[t][0] <= full[t][0] and after[t][1] <= full[t][1] for t in after), head
            db.upgrade()
            assert shape(db) == full and db.schema_version() == heads
