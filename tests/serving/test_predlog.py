"""The prediction log: batched, asynchronous, the agreed columns, nothing lost when a write fails."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from modelmill.serving import PredictionLog
from modelmill.serving.predlog import PREDICTIONS_SCHEMA
from modelmill.store import OfflineStore


def test_rows_have_the_agreed_columns(tmp_path: Path) -> None:
    store = OfflineStore(str(tmp_path))
    log = PredictionLog(store)
    log.append("r1", "m", 3, "canary", "u1", ("a", "b"), np.array([[1.0, 2.0]]), np.array([0.25]), 1.5)
    log.append("r2", "m", 3, "canary", None, ("a", "b"), np.array([[3.0, 4.0], [5.0, 6.0]]),
               np.array([0.5, 0.75]), 2.0)
    assert log.flush() == 3
    [written] = tmp_path.glob("predictions/event_date=*/*.parquet")
    assert pq.read_schema(written).remove_metadata().equals(PREDICTIONS_SCHEMA)
    table = store.read("predictions")
    rows = sorted(table.to_pylist(), key=lambda r: r["request_id"])
    assert [r["request_id"] for r in rows] == ["r1", "r2/0", "r2/1"]
    assert [r["output"] for r in rows] == [0.25, 0.5, 0.75]
    assert dict(rows[2]["features"]) == {"a": 5.0, "b": 6.0}
    assert rows[0]["routing_key"] == "u1" and rows[1]["routing_key"] is None
    assert rows[0]["ts"].tzinfo is not None and rows[0]["version"] == 3


def test_background_writer_flushes_on_interval_and_on_stop(tmp_path: Path) -> None:
    store = OfflineStore(str(tmp_path))
    log = PredictionLog(store, flush_interval_s=0.1).start()
    for i in range(100):
        log.append(f"r{i}", "m", 1, "default", None, ("x",), np.array([[float(i)]]), np.array([i / 100]), 0.1)
    deadline = time.monotonic() + 5
    while log.written < 100 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert log.written == 100
    log.append("last", "m", 1, "default", None, ("x",), np.array([[1.0]]), np.array([1.0]), 0.1)
    log.stop()
    assert store.read("predictions").num_rows == 101


class FlakyStore:
    """An offline store whose first write fails (a full disk, a network blip)."""

    def __init__(self, inner: OfflineStore) -> None:
        self.inner = inner
        self.failures = 1

    def write(self, table: str, data: pa.Table, **kwargs: Any) -> list[str]:
        if self.failures:
            self.failures -= 1
            raise OSError("disk full")
        return self.inner.write(table, data, **kwargs)


def test_a_failed_write_keeps_the_rows_for_the_next_flush(tmp_path: Path) -> None:
    store = OfflineStore(str(tmp_path))
    log = PredictionLog(FlakyStore(store))
    log.append("r1", "m", 1, "default", None, ("x",), np.array([[1.0]]), np.array([0.1]), 0.1)
    with pytest.raises(OSError):
        log.flush()
    log.append("r2", "m", 1, "default", None, ("x",), np.array([[2.0]]), np.array([0.2]), 0.1)
    assert log.flush() == 2
    assert sorted(store.read("predictions").column("request_id").to_pylist()) == ["r1", "r2"]


def test_buffer_is_bounded(tmp_path: Path) -> None:
    log = PredictionLog(OfflineStore(str(tmp_path)), max_buffer_rows=10)
    for i in range(15):
        log.append(f"r{i}", "m", 1, "default", None, ("x",), np.array([[1.0]]), np.array([0.1]), 0.1)
    assert log.dropped == 5
    assert log.flush() == 10


def test_many_requests_grow_the_buffer_and_keep_every_row_in_order(tmp_path: Path) -> None:
    store = OfflineStore(str(tmp_path))
    log = PredictionLog(store)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 3))
    for i in range(0, 3000, 3):  # one request of 1 row, then one of 2 rows, ...
        log.append(f"a{i}", "m", 1, "default", None, ("a", "b", "c"), X[i:i + 1], X[i:i + 1, 0], 0.1)
        log.append(f"b{i}", "m", 1, "default", None, ("a", "b", "c"), X[i + 1:i + 3], X[i + 1:i + 3, 0], 0.1)
    assert log.flush() == 3000
    rows = store.read("predictions").to_pylist()
    by_id = {r["request_id"]: r for r in rows}
    assert len(by_id) == 3000
    assert by_id["b3/1"]["output"] == X[5, 0]
    assert dict(by_id["a2997"]["features"]) == dict(zip("abc", X[2997].tolist(), strict=True))


def test_a_row_of_the_wrong_width_is_refused_whole(tmp_path: Path) -> None:
    log = PredictionLog(OfflineStore(str(tmp_path)))
    log.append("ok", "m", 1, "default", None, ("a", "b"), np.array([[1.0, 2.0]]), np.array([0.1]), 0.1)
    with pytest.raises(ValueError):
        log.append("bad", "m", 1, "default", None, ("a", "b"), np.array([[1.0, 2.0, 3.0]]), np.array([0.1]), 0.1)
    assert log.flush() == 1
