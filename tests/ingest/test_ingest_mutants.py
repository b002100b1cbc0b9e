"""The sink's id index is per offline store, and its counters count: promises mutation testing found unchecked.

``make mutation`` showed no test of ``ingest/sink.py`` noticing when two offline roots share one index, when the
same root spelt with a trailing slash gets another, or when the counters start off by one (docs/mutation.md).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from modelmill.config import Settings
from modelmill.errors import ConfigError
from modelmill.ingest import EventSchema, Field, OfflineSink, Rejected, Validator
from modelmill.ingest.sink import hash_ids
from modelmill.ingest.validation import TimeWindow
from modelmill.project import Project
from modelmill.store.tables.ingest import ingest_batches, ingest_tables
from tests.ingest.conftest import CLICKS, click, clicks


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
    sink.commit(_batch(140, 20))  # 10 more
    assert (sink.rows_written, sink.duplicates_dropped) == (160, 60)


def test_a_batch_of_only_rejected_events_writes_nothing_and_keeps_the_dead_letters(project: Project) -> None:
    sink = OfflineSink(project, CLICKS)
    empty = _batch(0, 1).slice(0, 0)
    written = sink.commit(empty, [Rejected("invalid_json", "bad", b"{", None, 0)])
    assert written.num_rows == 0 and written.schema == empty.schema
    assert [d.reason for d in sink.dead_letters.list()] == ["invalid_json"]
    assert (sink.rows_written, sink.duplicates_dropped) == (0, 0)


def test_a_rolled_back_batch_on_an_object_store_is_replaced_by_its_redelivery(tmp_path: Path) -> None:
    # fsspec's in-memory filesystem stands for S3: the sink finds orphans by glob, not os.scandir
    settings = Settings.defaults(home=tmp_path / "h").replace(offline=f"memory://{tmp_path.name}/offline")
    with Project(settings) as project:
        sink = OfflineSink(project, CLICKS)
        sink.commit(_batch(0, 10))

        def crash(conn: Connection) -> None:
            raise RuntimeError("the process died before the commit")

        with pytest.raises(RuntimeError):
            sink.commit(_batch(10, 10), within=crash)
        assert sink.commit(_batch(10, 10)).num_rows == 10
        fs = project.offline.fs
        files = fs.glob(f"{project.offline.table_path('clicks')}/**/*.parquet")
        ids = [i for f in files for i in pq.read_table(fs.open(f)).column("id").to_pylist()]
        assert sorted(ids) == [f"e{i:07d}" for i in range(20)]


def test_two_tables_with_the_same_event_ids_keep_their_own_ids(project: Project) -> None:
    views = dataclasses.replace(CLICKS, name="views")
    assert OfflineSink(project, CLICKS).commit(_batch(0, 30)).num_rows == 30
    # opened after the clicks were committed: it catches up on its own table's ids only
    assert OfflineSink(project, views).commit(_batch(0, 30)).num_rows == 30
    assert project.offline.read("views").num_rows == 30


def test_ids_stored_under_the_index_key_of_earlier_releases_are_still_found(tmp_path: Path) -> None:
    """The stored index is keyed ``<table>@<first 16 hex digits of the SHA-1 of the offline root>``. A release
    that changed the key would forget every stored id and write each redelivered event a second time."""
    settings = Settings.defaults(home=tmp_path / "h").replace(offline="memory://sink-key-format/offline")
    stored = _batch(0, 10)
    with Project(settings) as project:
        with project.db.begin() as conn:  # what an earlier release left for these ten events
            conn.execute(ingest_tables.insert().values(table_name="clicks@da91f9261324cce0", seq=1, updated_at=0.0))
            conn.execute(ingest_batches.insert().values(
                table_name="clicks@da91f9261324cce0", seq=1, stream="clicks", rows=10, created_at=0.0,
                id_hashes=hash_ids(stored.column("id")).astype("<u8").tobytes()))
        sink = OfflineSink(project, CLICKS).open()
        assert sink.known_ids == 10
        assert sink.commit(_batch(5, 10)).column("id").to_pylist() == [f"e{i:07d}" for i in range(10, 15)]
        project.offline.fs.rm("memory://sink-key-format", recursive=True)


def test_a_sink_whose_lock_row_was_deleted_before_its_first_batch_recreates_it(project: Project) -> None:
    sink = OfflineSink(project, CLICKS).open()
    with project.db.begin() as conn:
        conn.execute(ingest_tables.delete())  # a reset of a table that has no batch yet
    assert sink.commit(_batch(0, 10)).num_rows == 10
    assert sink.commit(_batch(5, 10)).num_rows == 5
    with project.db.begin() as conn:
        assert [r.seq for r in conn.execute(sa.select(ingest_tables.c.seq))] == [2]
        assert [r.seq for r in conn.execute(sa.select(ingest_batches.c.seq).order_by(ingest_batches.c.seq))] == [1, 2]
    assert project.offline.read("clicks").num_rows == 15


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



US = 1_000_000


def test_an_ingest_window_reads_iso_text_toml_dates_and_datetimes_naive_as_utc() -> None:
    window = TimeWindow.from_section({"min_time": "2000-01-01", "max_time": "2030-01-01T02:00:00+02:00"})
    assert (window.min_us, window.max_us) == (946_684_800 * US, 1_893_456_000 * US)
    assert repr(window) == "TimeWindow(2000-01-01T00:00:00Z .. 2030-01-01T00:00:00Z)"
    assert window.describe() == "2000-01-01T00:00:00Z .. 2030-01-01T00:00:00Z"
    toml = TimeWindow.from_section({"min_time": dt.date(2001, 2, 3), "max_time": dt.datetime(2001, 2, 3, 4, 5, 6)})
    assert (toml.min_us, toml.max_us) == (981_158_400 * US, (981_158_400 + 4 * 3600 + 5 * 60 + 6) * US)
    aware = TimeWindow.from_section({"max_time": dt.datetime(2001, 2, 3, 4, 5, 6, 7, tzinfo=dt.UTC)})
    assert aware.max_us == (981_158_400 + 4 * 3600 + 5 * 60 + 6) * US + 7 and aware.min_us == TimeWindow().min_us
    assert TimeWindow.from_section({}) == TimeWindow()


@pytest.mark.parametrize("value", ["next tuesday", 2020, None, ["2020-01-01"]])
def test_an_ingest_window_that_is_not_a_time_names_the_setting_and_the_accepted_form(value: object) -> None:
    with pytest.raises(ConfigError) as info:
        TimeWindow.from_section({"min_time": value})
    assert (info.value.key, info.value.value) == ("ingest.min_time", value)
    assert info.value.accepted == "an ISO 8601 time such as '2000-01-01T00:00:00Z', between 0001-01-01 and 9999-12-31"


def test_an_empty_or_reversed_window_is_refused_and_an_event_outside_it_says_the_window() -> None:
    with pytest.raises(ConfigError) as info:
        TimeWindow.from_section({"min_time": "2030-01-01", "max_time": "2000-01-01"})
    assert (info.value.key, info.value.value) == ("ingest.max_time", "2000-01-01T00:00:00Z")
    assert info.value.accepted == "a time after min_time (2030-01-01T00:00:00Z)"
    window = TimeWindow.from_section({"min_time": "2024-01-02", "max_time": "2030-01-01"})
    _, rejected = Validator(CLICKS, window=window).validate(clicks(1))
    (r,) = rejected
    assert (r.reason, r.field) == ("out_of_range", "ts")
    assert r.detail == ("field 'ts' is 2024-01-01T00:00:00Z, outside the accepted window 2024-01-02T00:00:00Z .. "
                        "2030-01-01T00:00:00Z (set [ingest] min_time / max_time)")


@pytest.mark.parametrize(("value", "shown"), [
    ("many", 'a string "many"'), (True, "a boolean true"), ([1, 2], "an array [1,2]"), ({"a": 1}, 'an object {"a":1}'),
    (1.5, "a number 1.5"), ("x" * 60, 'a string "' + "x" * 38 + '…'),
])
def test_a_wrong_type_says_what_arrived_json_kind_and_value_cut_to_40_characters(value: object, shown: str) -> None:
    event = {**click(0), "user": value}
    _, rejected = Validator(CLICKS).validate([orjson.dumps(event)])
    (r,) = rejected
    assert (r.reason, r.field) == ("wrong_type", "user")
    kind, _, text = shown.partition(" ")[2].partition(" ")
    assert r.detail == f"field 'user' must be int, got {kind} {text}"


def test_an_empty_or_null_required_field_is_missing_saying_which() -> None:
    for name, value, what in (("id", "", "empty"), ("id", None, "missing or null"), ("user", None, "missing or null")):
        _, rejected = Validator(CLICKS).validate([orjson.dumps({**click(0), name: value})])
        (r,) = rejected
        assert (r.reason, r.field, r.detail) == ("missing_required", name, f"required field {name!r} is {what}")


def test_the_bounds_of_an_event_are_inclusive_size_integers_and_window() -> None:
    base = orjson.dumps({**click(0), "kind": ""})
    exact = orjson.dumps({**click(0), "kind": "k" * (CLICKS.max_event_bytes - len(base))})
    assert len(exact) == CLICKS.max_event_bytes
    for batch in ([exact], [exact, b"{"]):  # the fast path, and the slow one (a bad event beside it)
        table, _ = Validator(CLICKS).validate(batch)
        assert table.num_rows == 1
    too_big = orjson.dumps({**click(0), "kind": "k" * (CLICKS.max_event_bytes - len(base) + 1)})
    assert [r.reason for r in Validator(CLICKS).validate([too_big])[1]] == ["oversized"]
    for user in ((1 << 63) - 1, -(1 << 63)):
        for batch in ([orjson.dumps({**click(0), "user": user})], [orjson.dumps({**click(0), "user": user}), b"{"]):
            table, _ = Validator(CLICKS).validate(batch)
            assert table.column("user").to_pylist() == [user]
    start = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    window = TimeWindow.from_section({"min_time": start, "max_time": start + dt.timedelta(seconds=37)})
    for batch in (clicks(2), [*clicks(2), b"{"]):
        table, rejected = Validator(CLICKS, window=window).validate(batch)
        assert table.num_rows == 2 and [r.reason for r in rejected] == ["invalid_json"] * (len(batch) - 2)


def test_a_rejection_keeps_its_place_in_the_batch_after_an_oversized_event() -> None:
    big = b'{"id": "x", "pad": "' + b"a" * 3000 + b'"}'
    _, rejected = Validator(CLICKS).validate([big, *clicks(2), b"{", *clicks(1, 5)])
    assert [(r.reason, r.index) for r in rejected] == [("oversized", 0), ("invalid_json", 3)]
    assert rejected[1].payload == b"{"


@pytest.mark.parametrize("key", ["min_us", "max_us"])
def test_a_window_bound_outside_the_calendar_or_not_a_whole_number_is_refused(key: str) -> None:
    lowest, highest = TimeWindow.from_section({"min_time": "0001-01-01"}).min_us, TimeWindow.from_section(
        {"max_time": "9999-12-31T23:59:59.999999"}).max_us
    assert TimeWindow(min_us=lowest, max_us=highest).describe() == "0001-01-01T00:00:00Z .. 9999-12-31T23:59:59.999999Z"
    for bad in (lowest - 1, highest + 1, True, 1.5):
        with pytest.raises(ConfigError) as info:
            TimeWindow(**{key: bad})  # type: ignore[arg-type]  # the wrong types are the point
        assert (info.value.key, info.value.value, info.value.accepted) == (
            f"ingest.{key[:3]}_time", bad, "a time between 0001-01-01 and 9999-12-31")
    with pytest.raises(ConfigError) as same:
        TimeWindow(min_us=0, max_us=0)
    assert same.value.key == "ingest.max_time"


SEEN = EventSchema(name="seen", fields=[Field("id", "string"), Field("ts", "timestamp"), Field("seen", "timestamp"),
                                        Field("note", "string", required=True)], event_id="id", event_time="ts")
WINDOW = TimeWindow.from_section({"min_time": "2000-01-01", "max_time": "2030-01-01"})


def _seen(i: int, **change: object) -> bytes:
    return orjson.dumps({"id": f"s{i}", "ts": "2024-01-01T00:00:00Z", "seen": "2024-01-02T00:00:00Z", "note": "n",
                         **change})


@pytest.mark.parametrize("path", ["fast", "slow"])
def test_a_null_optional_timestamp_is_kept_beside_one_outside_the_window(path: str) -> None:
    late = _seen(1, seen="2040-01-01T00:00:00Z")
    batch = [_seen(0, seen=None), late, _seen(2)] + ([b"{"] if path == "slow" else [])
    table, rejected = Validator(SEEN, window=WINDOW).validate(batch)
    assert table.column("id").to_pylist() == ["s0", "s2"] and table.column("seen").null_count == 1
    assert [(r.reason, r.field, r.index, r.payload) for r in rejected if r.reason != "invalid_json"] == [
        ("out_of_range", "seen", 1, late)]


@pytest.mark.parametrize("path", ["fast", "slow"])
def test_each_row_is_rejected_for_its_own_problem_when_two_checks_find_some(path: str) -> None:
    late, blank = _seen(0, seen="2040-01-01T00:00:00Z"), _seen(1, note="")
    batch = [late, blank, _seen(2)] + ([b"{"] if path == "slow" else [])
    table, rejected = Validator(SEEN, window=WINDOW).validate(batch)
    assert table.column("id").to_pylist() == ["s2"]
    assert [(r.reason, r.field, r.index) for r in rejected if r.reason != "invalid_json"] == [
        ("out_of_range", "seen", 0), ("missing_required", "note", 1)]


def test_an_event_of_exactly_the_size_limit_beside_a_larger_one_is_kept() -> None:
    base = orjson.dumps({**click(0), "kind": ""})
    exact = orjson.dumps({**click(0), "kind": "k" * (CLICKS.max_event_bytes - len(base))})
    big = orjson.dumps({**click(1), "kind": "k" * CLICKS.max_event_bytes})
    table, rejected = Validator(CLICKS).validate([exact, big])
    assert table.column("id").to_pylist() == ["e0000000"]
    assert [(r.reason, r.index) for r in rejected] == [("oversized", 1)]


def test_a_document_that_is_not_an_object_says_what_it_is() -> None:
    _, rejected = Validator(CLICKS).validate([b"[1]", b'"x"', b"5", b"{"])
    assert [(r.reason, r.detail) for r in rejected[:3]] == [
        ("not_an_object", "expected a JSON object, got list"), ("not_an_object", "expected a JSON object, got str"),
        ("not_an_object", "expected a JSON object, got int")]


def test_a_wrong_value_is_shown_as_it_arrived() -> None:
    def detail(**change: object) -> str:
        return shown(orjson.dumps({**click(0), **change}))

    def shown(payload: bytes) -> str:
        _, rejected = Validator(CLICKS).validate([payload])
        (r,) = rejected
        return r.detail

    assert detail(kind=5) == "field 'kind' must be string, got number 5"
    assert detail(user="x" * 38) == 'field \'user\' must be int, got string "' + "x" * 38 + '"'  # 40: shown whole
    assert detail(ts="yesterday") == ('field \'ts\' must be an ISO-8601 timestamp or epoch seconds, got '
                                      '"yesterday"')
    # nested deeper than orjson writes (but not than it reads): only the value's kind is shown
    event = orjson.dumps({**click(0), "kind": None})
    deep = event.replace(b'"kind":null', b'"kind":' + b"[" * 300 + b"]" * 300)
    assert shown(deep) == "field 'kind' must be string, got array […]"
    nested = event.replace(b'"kind":null', b'"kind":' + b'{"a":' * 260 + b"{}" + b"}" * 260)
    assert shown(nested) == "field 'kind' must be string, got object {…}"


@pytest.mark.parametrize(("seconds", "shown"), [(1e13, (1 << 63) - 1), (9.2e12, (1 << 63) - 1), (-1e13, -(1 << 63))])
def test_epoch_seconds_past_64_bit_microseconds_are_out_of_range_at_the_matching_end(seconds: float,
                                                                                      shown: int) -> None:
    _, rejected = Validator(CLICKS).validate([orjson.dumps({**click(0), "ts": seconds})])
    (r,) = rejected
    assert (r.reason, r.field) == ("out_of_range", "ts")
    assert r.detail == (f"field 'ts' is {shown} microseconds since the epoch, outside the accepted window "
                        f"{TimeWindow().describe()} (set [ingest] min_time / max_time)")
