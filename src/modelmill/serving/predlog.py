"""The prediction log: every prediction, appended in memory and written to the offline store in batches.

The hot path only appends references to a list; a background thread turns
them into Arrow and writes offline table ``predictions`` (columns request_id,
ts, model, version, variant, routing_key, features, output, latency_ms), read
by monitoring, A/B analysis and the training/serving skew check.

    >>> import tempfile, numpy as np
    >>> from modelmill.store import OfflineStore
    >>> store = OfflineStore(tempfile.mkdtemp())
    >>> log = PredictionLog(store)
    >>> log.append("r1", "m", 1, "default", None, ("x",), np.array([[2.0]]), np.array([0.5]), 0.3)
    >>> log.flush()
    1
    >>> store.read("predictions").column("output").to_pylist()
    [0.5]
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["PREDICTIONS_SCHEMA", "PredictionLog"]

log = logging.getLogger(__name__)

PREDICTIONS_SCHEMA = pa.schema([
    ("request_id", pa.string()),
    ("ts", pa.timestamp("us", tz="UTC")),
    ("model", pa.string()),
    ("version", pa.int64()),
    ("variant", pa.string()),
    ("routing_key", pa.string()),
    ("features", pa.string()),
    ("output", pa.float64()),
    ("latency_ms", pa.float64()),
])

# One entry per request: (request_id, ts, model, version, variant, routing_key, columns, X, out, latency_ms).
_Entry = tuple[str, float, str, int, str, "str | None", Sequence[str], np.ndarray, np.ndarray, float]


class PredictionLog:
    """Buffers predictions and writes them every ``flush_interval_s`` or ``flush_rows`` rows.

    ``max_buffer_rows`` bounds memory when the store is slow: past it, new
    entries are dropped and counted in ``dropped`` (serving must not stall).
    """

    def __init__(self, offline: Any, *, table: str = "predictions", flush_interval_s: float = 1.0,
                 flush_rows: int = 5000, max_buffer_rows: int = 500_000) -> None:
        self.offline = offline
        self.table = table
        self.flush_interval_s = flush_interval_s
        self.flush_rows = flush_rows
        self.max_buffer_rows = max_buffer_rows
        self.written = 0
        self.dropped = 0
        self._buf: list[_Entry] = []
        self._rows = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"PredictionLog(table={self.table!r}, flush_interval_s={self.flush_interval_s})"

    def append(self, request_id: str, model: str, version: int, variant: str, routing_key: str | None,
               columns: Sequence[str], X: np.ndarray, out: np.ndarray, latency_ms: float) -> None:
        """Record one request (``X`` rows and their outputs); cheap, never blocks on I/O."""
        n = len(X)
        with self._lock:
            if self._rows + n > self.max_buffer_rows:
                self.dropped += n
                return
            self._buf.append((request_id, time.time(), model, version, variant, routing_key, columns, X, out,
                              latency_ms))
            self._rows += n
            full = self._rows >= self.flush_rows
        if full:
            self._wake.set()

    def start(self) -> PredictionLog:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="modelmill-predlog", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the writer and flush what is buffered."""
        if self._thread is not None:
            self._stop.set()
            self._wake.set()
            self._thread.join(timeout=30)
            self._thread = None
        self.flush()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # keep logging alive through a transient store failure
                log.exception("writing the prediction log failed; retrying at the next flush")

    def flush(self) -> int:
        """Write what is buffered now; returns the number of rows written."""
        with self._lock:
            buf, self._buf, self._rows = self._buf, [], 0
        if not buf:
            return 0
        table = _to_arrow(buf)
        try:
            self.offline.write(self.table, table, time_column="ts")
        except Exception:
            with self._lock:  # put it back, in front, so order is kept and nothing is lost
                self._buf[:0] = buf
                self._rows += table.num_rows
            raise
        self.written += table.num_rows
        return table.num_rows


def _features_json(columns: Sequence[str], X: np.ndarray) -> pa.Array:
    """One JSON object per row of ``X``, built column by column in Arrow (no Python loop per row)."""
    parts: list[Any] = []
    for j, name in enumerate(columns):
        col = pa.array(X[:, j], pa.float64())
        text = pc.if_else(pc.is_finite(col), col.cast(pa.string()), pa.scalar("null"))  # NaN is not JSON
        parts.extend([pa.scalar(("{" if j == 0 else ",") + orjson.dumps(str(name)).decode() + ":"), text])
    if not parts:
        return pa.array(["{}"] * len(X), pa.string())
    parts.append(pa.scalar("}"))
    return pc.binary_join_element_wise(*parts, "")


def _to_arrow(buf: list[_Entry]) -> pa.Table:
    groups: dict[tuple[str, ...], list[_Entry]] = {}
    for entry in buf:
        groups.setdefault(tuple(entry[6]), []).append(entry)
    tables = []
    for columns, entries in groups.items():
        counts = np.fromiter((len(e[7]) for e in entries), dtype=np.int64, count=len(entries))
        rid: list[str] = []
        for e, n in zip(entries, counts.tolist(), strict=True):
            if n == 1:
                rid.append(e[0])
            else:
                rid.extend(f"{e[0]}/{i}" for i in range(n))
        X = np.concatenate([np.asarray(e[7], dtype=np.float64).reshape(len(e[7]), -1) for e in entries])
        ts = np.repeat(np.fromiter((int(e[1] * 1e6) for e in entries), dtype=np.int64, count=len(entries)), counts)

        def rep(i: int, entries: list[_Entry] = entries, counts: np.ndarray = counts) -> list[Any]:
            return [v for e, n in zip(entries, counts.tolist(), strict=True) for v in [e[i]] * n]

        tables.append(pa.table([
            pa.array(rid, pa.string()),
            pa.array(ts, pa.timestamp("us", tz="UTC")),
            pa.array(rep(2), pa.string()),
            pa.array(rep(3), pa.int64()),
            pa.array(rep(4), pa.string()),
            pa.array(rep(5), pa.string()),
            _features_json(columns, X),
            pa.array(np.concatenate([np.asarray(e[8], dtype=np.float64).reshape(-1) for e in entries])),
            pa.array(np.repeat(np.fromiter((e[9] for e in entries), dtype=np.float64, count=len(entries)), counts)),
        ], schema=PREDICTIONS_SCHEMA))
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables)
