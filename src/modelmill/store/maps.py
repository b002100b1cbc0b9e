"""Named numeric vectors as an Arrow ``map<string, double>`` column: the prediction log's ``features``.

Building the column is a few array operations (no per-row Python and no
number formatting), and Parquet, DuckDB and pandas all read it as a map.
The readers also take a string column of JSON objects, the form logs written
elsewhere (or by modelmill before 0.1) use.

    >>> import numpy as np
    >>> col = map_column(["a", "b"], np.array([[1.0, 2.0], [3.0, np.nan]]))
    >>> map_records(col)
    [{'a': 1.0, 'b': 2.0}, {'a': 3.0, 'b': None}]
    >>> map_frame(col).to_dict("list")
    {'a': [1.0, 3.0], 'b': [2.0, nan]}
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import pyarrow as pa

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["MAP_TYPE", "map_column", "map_frame", "map_records"]

MAP_TYPE = pa.map_(pa.string(), pa.float64())


def map_column(names: Sequence[str], X: np.ndarray) -> pa.MapArray:
    """One map per row of ``X`` (``[n, k]``): ``{names[j]: X[i, j]}``."""
    n, k = X.shape
    if k != len(names):
        raise ValueError(f"{len(names)} names for {k} columns")
    keys = pa.array(list(names), pa.string()).take(pa.array(np.tile(np.arange(k, dtype=np.int32), n)))
    offsets = pa.array(np.arange(0, n * k + 1, k, dtype=np.int32) if k else np.zeros(n + 1, dtype=np.int32))
    items = pa.array(np.ascontiguousarray(X, dtype=np.float64).reshape(-1))
    return pa.MapArray.from_arrays(offsets, keys, items)


def _flat(column: pa.Array | pa.ChunkedArray) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """The number of rows, each row's entry count (0 for a null row), and every entry's key and value."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if not pa.types.is_map(arr.type):
        raise TypeError(f"expected a map column, got {arr.type}")
    off = arr.offsets.to_numpy()  # absolute positions in the (unsliced) entries
    lengths = np.diff(off)
    keys, values = (c.to_numpy(zero_copy_only=False) for c in arr.values.slice(off[0], off[-1] - off[0]).flatten())
    if arr.null_count:
        valid = arr.is_valid().to_numpy(zero_copy_only=False)
        keep = np.repeat(valid, lengths)
        keys, values, lengths = keys[keep], values[keep], np.where(valid, lengths, 0)
    return len(arr), lengths, keys, values.astype(np.float64)


def _json_rows(column: pa.Array | pa.ChunkedArray) -> list[dict[str, Any] | None] | None:
    """Rows of a JSON-text column as dicts (None for a null or non-object row); None if not a text column."""
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        return None
    rows: list[dict[str, Any] | None] = []
    for text in column.to_pylist():
        try:
            row = orjson.loads(text) if text else None
        except orjson.JSONDecodeError:
            row = None
        rows.append(row if isinstance(row, dict) else None)
    return rows


def map_frame(column: pa.Array | pa.ChunkedArray) -> pd.DataFrame:
    """One row per map and one column per key (NaN where a row lacks the key)."""
    import pandas as pd

    parsed = _json_rows(column)
    if parsed is not None:
        return pd.DataFrame.from_records([row or {} for row in parsed], index=range(len(parsed)))
    n, lengths, keys, values = _flat(column)
    if n == 0:
        return pd.DataFrame(index=range(0))
    k = int(lengths[0])
    if k and (lengths == k).all() and (keys.reshape(n, k) == keys[:k]).all():  # the usual case: one layout
        return pd.DataFrame(values.reshape(n, k), columns=list(keys[:k]))
    rows = np.repeat(np.arange(n), lengths)
    long = pd.DataFrame({"row": rows, "key": keys, "value": values})
    wide = long.pivot_table(index="row", columns="key", values="value", aggfunc="last", dropna=False)
    wide = wide.reindex(range(n))
    wide.columns.name = None
    return wide.reset_index(drop=True)


def map_records(column: pa.Array | pa.ChunkedArray) -> list[dict[str, Any] | None]:
    """Each map as a dict (None for a null row), with NaN values as None."""
    parsed = _json_rows(column)
    if parsed is not None:
        return parsed
    return [None if row is None else {k: None if v is None or math.isnan(v) else v for k, v in row}
            for row in column.to_pylist()]
