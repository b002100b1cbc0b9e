"""The sink's id index is per offline store, and its counters count: promises mutation testing found unchecked.

``make mutation`` showed no test of ``ingest/sink.py`` noticing when two offline roots share one index, when the
same root spelt with a trailing slash gets another, or when the counters start off by one (docs/mutation.md).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pyarrow as pa
import pytest
from sqlalchemy.engine import Connection

from modelmill.config import Settings
from modelmill.ingest import OfflineSink, Rejected, Validator
from modelmill.project import Project
from tests.ingest.conftest import CLICKS, clicks


def _batch(start: int, n: int) -> pa.Table:
    table, rejected = Validator(CLICKS).validate(clicks(n, start))
    assert not rejected
    return table


def test_two_offline_roots_sharing_a_metadata_database_keep_their_own_ids(tmp_path: Path) -> None:
    shared = Settings.defaults(home=tmp_path / "a")
    other_root = shared.replace(offline=str(tmp_path / "b" / "offline"))
    with Project(shared) as a:
        assert OfflineSink(a, CLICKS).commit(_batch(0, 50)).num_rows == 50
    with Project(other_root) as b:
        # the same ids, but never written to this root: all of them land here
        assert OfflineSink(b, CLICKS).commit(_batch(0, 50)).num_rows == 50
        assert b.offline.read("clicks").num_rows == 50


def test_the_same_root_with_a_trailing_slash_is_the_same_index(tmp_path: Path) -> None:
    settings = Settings.defaults(home=tmp_path / "h")
    with Project(settings) as p:
        assert OfflineSink(p, CLICKS).commit(_batch(0, 40)).num_rows == 40
    with Project(settings.replace(offline=settings.offline + "/")) as p:
        sink = OfflineSink(p, CLICKS).open()
        assert sink.known_ids == 40
        assert sink.commit(_batch(20, 40)).num_rows == 20
        assert p.offline.read("clicks").num_rows == 60


def test_the_counters_count_rows_written_and_duplicates_dropped_from_zero(project: Project) -> None:
    sink = OfflineSink(project, CLICKS)
    assert (sink.rows_written, sink.duplicates_dropped) == (0, 0)
    sink.commit(_batch(0, 100))
    sink.commit(_batch(50, 100))  # 50 of them stored before
    assert (sink.rows_written, sink.duplicates_dropped) == (150, 50)


def test_a_batch_of_only_rejected_events_writes_nothing_and_keeps_the_dead_letters(project: Project) -> None:
    sink = OfflineSink(project, CLICKS)
    empty = _batch(0, 1).slice(0, 0)
    written = sink.commit(empty, [Rejected("invalid_json", "bad", b"{", None, 0)])
    assert written.num_rows == 0 and written.schema == empty.schema
    assert [d.reason for d in sink.dead_letters.list()] == ["invalid_json"]
    assert (sink.rows_written, sink.duplicates_dropped) == (0, 0)


def test_two_tables_with_the_same_event_ids_keep_their_own_ids(project: Project) -> None:
    views = dataclasses.replace(CLICKS, name="views")
    assert OfflineSink(project, CLICKS).commit(_batch(0, 30)).num_rows == 30
    # opened after the clicks were committed: it catches up on its own table's ids only
    assert OfflineSink(project, views).commit(_batch(0, 30)).num_rows == 30
    assert project.offline.read("views").num_rows == 30


def test_within_runs_in_the_commit_and_a_failure_there_leaves_no_event_behind(project: Project) -> None:
    sink = OfflineSink(project, CLICKS)
    sink.commit(_batch(0, 10))
    seen: list[bool] = []
    sink.commit(_batch(10, 5), within=lambda conn: seen.append(conn.in_transaction()))
    assert seen == [True]

    def crash(conn: Connection) -> None:
        raise RuntimeError("the process died before the commit")

    with pytest.raises(RuntimeError):
        sink.commit(_batch(15, 10), within=crash)  # its files are written, its transaction rolled back
    assert sink.known_ids == 15
    # the redelivery takes the rolled-back batch's name and replaces its files: every event once
    assert sink.commit(_batch(15, 10)).num_rows == 10
    ids = project.offline.read("clicks", columns=["id"]).column("id").to_pylist()
    assert sorted(ids) == [f"e{i:07d}" for i in range(25)]

