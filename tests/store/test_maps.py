"""The prediction log's features column: map<string, double> built from a matrix, read back as frames and dicts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from modelmill.store import OfflineStore
from modelmill.store.maps import MAP_TYPE, map_column, map_frame, map_records


def test_a_matrix_round_trips_through_parquet_and_duckdb(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 7))
    X[3, 2] = np.nan
    names = [f"x{i}" for i in range(7)]
    store = OfflineStore(str(tmp_path))
    ts = pa.array(np.full(500, 1_700_000_000_000_000), pa.timestamp("us", tz="UTC"))
    store.write("log", pa.table({"ts": ts, "features": map_column(names, X)}), time_column="ts")
    tbl = store.read("log", columns=["features"])  # through DuckDB
    assert tbl.schema.field("features").type == MAP_TYPE
    frame = map_frame(tbl.column("features"))
    assert list(frame.columns) == names
    np.testing.assert_array_equal(frame.to_numpy(), X)  # NaN in the same place
    records = map_records(tbl.column("features"))
    assert records[3]["x2"] is None and records[4] == dict(zip(names, X[4].tolist(), strict=True))


def test_rows_with_other_keys_nulls_and_slices() -> None:
    a = map_column(["a", "b"], np.array([[1.0, 2.0], [3.0, 4.0]]))
    c = map_column(["c", "b"], np.array([[5.0, 6.0]]))
    mixed = pa.concat_arrays([a, pa.nulls(1, MAP_TYPE), c])
    frame = map_frame(mixed)
    assert frame.shape == (4, 3)
    assert frame.loc[3, "c"] == 5.0 and frame.loc[3, "b"] == 6.0 and np.isnan(frame.loc[3, "a"])
    assert frame.iloc[2].isna().all()
    assert map_records(mixed)[2] is None
    tail = map_frame(mixed.slice(1, 3))
    assert tail.shape == (3, 3) and tail.loc[0, "a"] == 3.0 and tail.loc[2, "c"] == 5.0
    chunked = map_frame(pa.chunked_array([a.slice(1, 1), c]))
    assert chunked.shape == (2, 3)
    assert (chunked.loc[0, "a"], chunked.loc[0, "b"], chunked.loc[1, "b"], chunked.loc[1, "c"]) == (3.0, 4.0, 6.0, 5.0)


def test_json_text_columns_read_the_same() -> None:
    X = np.array([[1.0, np.nan], [3.0, 4.0]])
    as_map = map_column(["a", "b"], X)
    as_json = pa.array([json.dumps({"a": 1.0, "b": None}), json.dumps({"a": 3.0, "b": 4.0})])
    assert map_records(as_json) == map_records(as_map)
    np.testing.assert_array_equal(map_frame(as_json).to_numpy(dtype=float), map_frame(as_map).to_numpy())
    assert map_records(pa.array(["not json", None, "[1]"])) == [None, None, None]


def test_a_name_per_column_is_required() -> None:
    with pytest.raises(ValueError, match="2 names for 3 columns"):
        map_column(["a", "b"], np.zeros((1, 3)))
