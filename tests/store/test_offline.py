from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pytest

from modelmill.errors import InputError, NotFoundError
from modelmill.store import OfflineStore


def _batch(n: int, start: dt.datetime) -> pa.Table:
    ts = [start + dt.timedelta(hours=7 * i) for i in range(n)]
    return pa.table({"id": list(range(n)), "ts": pa.array(ts, pa.timestamp("us", tz="UTC")), "v": [i * 0.5 for i in range(n)]})


def test_partitioned_by_event_date_and_read_back(tmp_path: Path) -> None:
    store = OfflineStore(str(tmp_path))
    files = store.write("events", _batch(10, dt.datetime(2013, 1, 1, tzinfo=dt.UTC)), time_column="ts")
    assert len(files) == 3 and all("event_date=2013-01-0" in f for f in files)
    table = store.read("events", columns=["id", "v"])
    assert sorted(table.column("id").to_pylist()) == list(range(10))
    assert store.tables() == ["events"]
    con = store.connect()
    assert con.execute("SELECT count(*), min(event_date) FROM events").fetchone() == (10, dt.date(2013, 1, 1))


def test_same_batch_id_replaces_instead_of_doubling(tmp_path: Path) -> None:
    store = OfflineStore(str(tmp_path))
    batch = _batch(5, dt.datetime(2013, 2, 1, tzinfo=dt.UTC))
    store.write("events", batch, time_column="ts", batch_id="b1")
    store.write("events", batch, time_column="ts", batch_id="b1")
    assert store.read("events").num_rows == 5
    assert not list(tmp_path.rglob("*.tmp"))


def test_bad_names_and_columns(tmp_path: Path) -> None:
    store = OfflineStore(str(tmp_path))
    with pytest.raises(InputError, match="table"):
        store.write("../evil", _batch(1, dt.datetime(2013, 1, 1)), time_column="ts")
    with pytest.raises(InputError, match="time_column"):
        store.write("events", _batch(1, dt.datetime(2013, 1, 1)), time_column="nope")
    with pytest.raises(InputError, match="timestamp"):
        store.write("events", _batch(1, dt.datetime(2013, 1, 1)), time_column="v")
    with pytest.raises(NotFoundError):
        store.read("never")


@pytest.mark.parametrize("where", ["local", "memory"])
def test_remove_batch_deletes_that_batch_on_every_day_and_nothing_else(tmp_path: Path, where: str) -> None:
    # fsspec's in-memory filesystem stands for an object store (the glob path, not os.scandir)
    store = OfflineStore(str(tmp_path) if where == "local" else f"memory://remove-batch-{tmp_path.name}")
    start = dt.datetime(2013, 3, 1, tzinfo=dt.UTC)
    assert len(store.write("events", _batch(10, start), time_column="ts", batch_id="b1")) == 3
    store.write("events", _batch(4, start), time_column="ts", batch_id="b2")
    assert store.remove_batch("events", "b1") == 3
    left = store.fs.glob(f"{store.table_path('events')}/**/*.parquet")
    assert left and all(f.endswith("/b2.parquet") for f in left)  # b2 untouched
    assert store.remove_batch("events", "b1") == 0
    assert store.remove_batch("never_written", "b1") == 0
    with pytest.raises(InputError, match="table"):
        store.remove_batch("../evil", "b1")
