from __future__ import annotations

import datetime as dt
import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from modelmill.config import Settings
from modelmill.ingest import OfflineSink, Rejected, Validator
from modelmill.ingest.sink import IdIndex, hash_ids
from modelmill.project import Project
from tests.ingest.conftest import CLICKS, clicks


def batch(start: int, n: int) -> pa.Table:
    table, rejected = Validator(CLICKS).validate(clicks(n, start))
    assert not rejected
    return table


def stored_ids(project: Project) -> list[str]:
    return sorted(project.offline.read("clicks", columns=["id"]).column("id").to_pylist())


def test_redelivered_and_repeated_events_are_written_once(project: Project) -> None:
    sink = OfflineSink(project, CLICKS).open()
    assert sink.commit(batch(0, 1_000)).num_rows == 1_000
    assert sink.commit(batch(500, 1_000)).num_rows == 500  # half already stored
    doubled = pa.concat_tables([batch(2_000, 10), batch(2_000, 10)])
    assert sink.commit(doubled).num_rows == 10  # the same id twice in one batch
    assert stored_ids(project) == sorted(f"e{i:07d}" for i in [*range(1_500), *range(2_000, 2_010)])
    # Partitioned by event date: 37 s apart, 1,510 events span one day.
    assert {p.split("event_date=")[1][:10] for p in project.offline.fs.glob(
        project.offline.glob("clicks"))} == {"2024-01-01"}


def test_a_restarted_sink_remembers_what_it_wrote(settings: Settings) -> None:
    with Project(settings) as p1:
        OfflineSink(p1, CLICKS).commit(batch(0, 300))
    with Project(settings) as p2:
        sink = OfflineSink(p2, CLICKS).open()
        assert sink.known_ids == 300
        assert sink.commit(batch(0, 400)).num_rows == 100
        assert len(stored_ids(p2)) == 400


def test_concurrent_sinks_never_write_an_event_twice(settings: Settings) -> None:
    """Two consumers receive overlapping redeliveries at the same time: each id lands once."""
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            with Project(settings) as p:
                sink = OfflineSink(p, CLICKS).open()
                for k in range(8):
                    sink.commit(batch(((k + offset) % 8) * 250, 500))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with Project(settings) as p:
        ids = stored_ids(p)
    assert ids == [f"e{i:07d}" for i in range(2_250)]


def test_files_left_by_a_crash_before_commit_are_removed(project: Project) -> None:
    sink = OfflineSink(project, CLICKS).open()
    sink.commit(batch(0, 100))
    # A writer crashed after writing its files and before committing: the next batch number's files.
    orphan = f"{project.offline.table_path('clicks')}/event_date=2023-12-31/ingest-{2:012d}.parquet"
    project.offline.fs.makedirs(orphan.rsplit("/", 1)[0], exist_ok=True)
    pq.write_table(batch(100, 50), orphan)
    assert len(stored_ids(project)) == 150
    sink.commit(batch(100, 60))  # the redelivery: takes the same batch number, removes the orphan
    assert stored_ids(project) == [f"e{i:07d}" for i in range(160)]


def test_dead_letters_commit_with_the_batch(project: Project) -> None:
    sink = OfflineSink(project, CLICKS).open()
    sink.commit(batch(0, 5), [Rejected("invalid_json", "bad", b"{", None, 3)])
    letters = sink.dead_letters.list()
    assert [(d.reason, d.payload, d.stream) for d in letters] == [("invalid_json", b"{", "clicks")]


def test_sink_on_postgresql(pg_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = Settings.defaults(home=tmp_path / "pg").replace(db=pg_url)
    with Project(settings) as p:
        sink = OfflineSink(p, CLICKS).open()
        assert sink.commit(batch(0, 200), [Rejected("oversized", "big", b"x" * 10)]).num_rows == 200
        assert sink.commit(batch(100, 200)).num_rows == 100
    with Project(settings) as p:
        assert OfflineSink(p, CLICKS).open().known_ids == 300
        assert len(stored_ids(p)) == 300
        assert OfflineSink(p, CLICKS).dead_letters.counts() == {"oversized": 1}


def test_id_index_matches_a_python_set() -> None:
    rng = np.random.default_rng(7)
    index, truth = IdIndex(), set()
    for _ in range(40):
        chunk = rng.integers(0, 50_000, size=rng.integers(1, 3_000), dtype=np.uint64)
        probe = rng.integers(0, 50_000, size=500, dtype=np.uint64)
        assert index.contains(probe).tolist() == [int(x) in truth for x in probe]
        index.add(chunk)
        truth.update(int(x) for x in chunk)
    assert len(index._runs) <= 12


def test_hash_ids_is_stable() -> None:
    # The id index is durable: this hash must never change between versions or processes.
    assert hash_ids(pa.array(["e0000001", "UA1545-2013-01-01-EWR"])).tolist() == [
        7358244705454436774, 3216544095203371194]
    assert hash_ids(pa.chunked_array([["e0000001"], []])).tolist() == [7358244705454436774]
    assert hash_ids(pa.array([1, 2])).tolist() == [6238072747940578789, 15839785061582574730]


@pytest.mark.parametrize("when", [dt.datetime(2024, 1, 1), dt.datetime(2024, 6, 30, 23, 59)])
def test_each_event_date_is_its_own_partition(project: Project, when: dt.datetime) -> None:
    t = pa.table({"id": ["a", "b"], "ts": [when, when + dt.timedelta(days=1)]})
    t = t.cast(pa.schema([("id", pa.string()), ("ts", pa.timestamp("us", tz="UTC"))]))
    from modelmill.ingest import EventSchema, Field

    s = EventSchema(name="two", fields=[Field("id", "string"), Field("ts", "timestamp")], event_id="id",
                    event_time="ts")
    OfflineSink(project, s).commit(t)
    dates = sorted(p.split("event_date=")[1][:10] for p in project.offline.fs.glob(project.offline.glob("two")))
    assert dates == [when.date().isoformat(), (when + dt.timedelta(days=1)).date().isoformat()]


def test_a_lock_row_reset_between_batches_loses_nothing(project: Project) -> None:
    """A deleted lock row (a manual reset) used to restart the batch numbers at 1: the next batch took the
    first one's name, the first batch's files were removed as a crashed writer's, and the insert failed."""
    import sqlalchemy as sa

    from modelmill.store.tables.ingest import ingest_tables

    sink = OfflineSink(project, CLICKS).open()
    sink.commit(batch(0, 100))
    sink.commit(batch(100, 100))
    with project.db.begin() as conn:
        conn.execute(sa.delete(ingest_tables))
    assert sink.commit(batch(200, 100)).num_rows == 100
    assert stored_ids(project) == [f"e{i:07d}" for i in range(300)]
    assert OfflineSink(project, CLICKS).open().known_ids == 300
