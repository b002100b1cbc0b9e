"""The prediction log: every request outcome, appended in memory and written to the offline store in batches.

The hot path appends to per-column lists and copies the rows into one
growing matrix; a background thread turns them into Arrow with vectorised
calls only and writes offline table ``predictions`` (see
:data:`PREDICTIONS_SCHEMA`), read by monitoring, A/B analysis, the rollout
guardrails and the training/serving skew check. ``features`` is a
``map<string, double>`` of the model's inputs (see :mod:`modelmill.store.maps`):
built without formatting a single number, where JSON text cost the writer more
than half its time.

Every outcome of a request for which a variant was chosen is a row, failures
too: ``status`` is the HTTP status answered (200, or 422 for a model failure,
5xx, 4xx for input the model could not take), ``error`` the error's class, and
a failed row has no ``output`` (null) and no ``features``. So the log alone
counts a variant's requests and errors, on any number of servers writing to
it. Readers of outputs keep ``output IS NOT NULL`` (:data:`ANSWERED`), which
also holds for logs written before ``status`` existed. The feature route adds
the request's ``entities`` (each join key's value as JSON text, so ``"UA"`` and
``42`` keep their types) and the features that were
``missing`` from the online store (absent, expired or defaulted).

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
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from modelmill.store.maps import MAP_TYPE, map_column

__all__ = ["ANSWERED", "ERROR_STATUS", "PREDICTIONS_SCHEMA", "PredictionLog", "is_error"]

log = logging.getLogger(__name__)

PREDICTIONS_SCHEMA = pa.schema([
    ("request_id", pa.string()),
    ("ts", pa.timestamp("us", tz="UTC")),
    ("model", pa.string()),
    ("version", pa.int64()),
    ("variant", pa.string()),
    ("routing_key", pa.string()),
    ("features", MAP_TYPE),  # {input name: value}
    ("output", pa.float64()),
    ("latency_ms", pa.float64()),
    ("status", pa.int16()),  # HTTP status answered; null in logs written before it existed (all answered)
    ("error", pa.string()),  # the error's class when the request failed
    ("entities", pa.map_(pa.string(), pa.string())),  # the feature route's join keys, values as JSON (typed)
    ("missing", pa.list_(pa.string())),  # features the online store did not have (absent or expired)
    ("features_at", pa.timestamp("us", tz="UTC")),  # the time the online reads were judged at (event clock)
])

#: SQL condition of a row that carries a prediction (works on logs written before ``status`` existed).
ANSWERED = "output IS NOT NULL"
#: SQL condition of a failed request the variant is to blame for: a model failure (422) or a server error.
ERROR_STATUS = "(status = 422 OR status >= 500)"


def is_error(status: int) -> bool:
    """A model failure (422) or a server error (5xx): what a guardrail charges to the variant.

    A client's bad request (other 4xx) says nothing about the model.

        >>> [is_error(s) for s in (200, 400, 422, 503)]
        [False, False, True, True]
    """
    return status == 422 or status >= 500

_NO_ROW = np.zeros((1, 0))  # a failed request: one row, no features
_NO_OUTPUT = np.full(1, np.nan)

# The columns of few distinct values (the rest, ids, numbers and times, gain nothing from a dictionary).
_DICTIONARY = ("model", "version", "variant", "routing_key", "features.key_value.key", "status", "error",
               "entities.key_value.key", "missing.list.element")


class _Columns:
    """The buffered requests of one input layout, column by column (appending is a few list appends)."""

    __slots__ = ("X", "columns", "counts", "entities", "error", "features_at", "keyed", "latency", "missing", "model", "out", "rid",
                 "routing_key", "rows", "status", "ts", "variant", "version")

    def __init__(self, columns: Sequence[str], capacity: int = 1024) -> None:
        self.columns = tuple(columns)
        self.rid: list[str] = []
        self.ts: list[float] = []
        self.model: list[str] = []
        self.version: list[int] = []
        self.variant: list[str] = []
        self.routing_key: list[str | None] = []
        # Rows are copied into one growing matrix as they come: the writer then slices it instead of
        # concatenating thousands of small arrays (which holds the GIL for milliseconds).
        self.X = np.empty((capacity, len(self.columns)), dtype=np.float64)
        self.out = np.empty(capacity, dtype=np.float64)
        self.rows = 0
        self.latency: list[float] = []
        self.counts: list[int] = []  # rows per request
        self.status: list[int] = []
        self.error: list[str | None] = []
        self.entities: list[list[tuple[str, str]] | None] = []
        self.missing: list[list[str] | None] = []
        self.features_at: list[int | None] = []
        self.keyed = False  # some request carried entities or missing features (the feature route)

    def add(self, X: np.ndarray, out: np.ndarray) -> None:
        n, end = len(X), self.rows + len(X)
        if end > len(self.out):
            size = max(end, 2 * len(self.out))
            self.X = np.concatenate([self.X[:self.rows], np.empty((size - self.rows, self.X.shape[1]))])
            self.out = np.concatenate([self.out[:self.rows], np.empty(size - self.rows)])
        self.X[self.rows:end] = X if X.ndim == 2 else np.reshape(X, (n, -1))
        self.out[self.rows:end] = np.reshape(out, n)
        self.rows = end

    def to_arrow(self) -> pa.Table:
        """One table in :data:`PREDICTIONS_SCHEMA`; every per-request loop runs in numpy or Arrow."""
        counts = np.asarray(self.counts, dtype=np.int64)
        if self.rows != len(counts):  # some request had several rows
            rid = [r if n == 1 else f"{r}/{i}" for r, n in zip(self.rid, self.counts, strict=True) for i in range(n)]
            take = pa.array(np.repeat(np.arange(len(counts)), counts))
        else:
            rid, take = self.rid, None

        def per_request(values: Any, kind: pa.DataType) -> pa.Array:
            arr = pa.array(values, kind)
            return arr if take is None else arr.take(take)

        ts = (np.asarray(self.ts, dtype=np.float64) * 1e6).astype(np.int64)
        status = np.asarray(self.status, dtype=np.int16)
        failed = status != 200
        n = self.rows
        stamp = pa.timestamp("us", tz="UTC")
        if self.keyed:
            entities = per_request(self.entities, PREDICTIONS_SCHEMA.field("entities").type)
            missing = per_request(self.missing, pa.list_(pa.string()))
            features_at = per_request(self.features_at, stamp)
        else:
            entities = pa.nulls(n, PREDICTIONS_SCHEMA.field("entities").type)
            missing = pa.nulls(n, pa.list_(pa.string()))
            features_at = pa.nulls(n, stamp)
        output = pa.array(self.out[:n], mask=np.repeat(failed, counts) if failed.any() else None)
        return pa.table([
            pa.array(rid, pa.string()),
            per_request(ts, pa.timestamp("us", tz="UTC")),
            per_request(self.model, pa.string()),
            per_request(self.version, pa.int64()),
            per_request(self.variant, pa.string()),
            per_request(self.routing_key, pa.string()),
            map_column(self.columns, self.X[:self.rows]),
            output,
            per_request(self.latency, pa.float64()),
            per_request(status, pa.int16()),
            per_request(self.error, pa.string()),
            entities,
            missing,
            features_at,
        ], schema=PREDICTIONS_SCHEMA)


class PredictionLog:
    """Buffers predictions and writes them every ``flush_interval_s`` or ``flush_rows`` rows.

    ``max_buffer_rows`` bounds memory when the store is slow: past it, new
    entries are dropped and counted in ``dropped`` (serving must not stall).
    The hot path appends to per-column lists; the writer thread turns them
    into Arrow with vectorised calls only, so it holds the GIL (and delays the
    event loop) for as little time as possible.
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
        self._bufs: dict[tuple[str, ...], _Columns] = {}
        self._unwritten: list[pa.Table] = []  # built but not yet written (a failed write), oldest first
        self._rows = 0
        self._held = 0  # rows in _unwritten
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"PredictionLog(table={self.table!r}, flush_interval_s={self.flush_interval_s})"

    def append(self, request_id: str, model: str, version: int, variant: str, routing_key: str | None,
               columns: Sequence[str], X: np.ndarray, out: np.ndarray, latency_ms: float, *,
               entities: Mapping[str, Any] | None = None, missing: Sequence[str] | None = None,
               features_at: int | None = None) -> None:
        """Record one answered request (``X`` rows and their outputs); cheap, never blocks on I/O.

        The feature route passes the request's ``entities``, the features that were ``missing`` and
        ``features_at``, the time (microseconds) its online reads were judged at.
        """
        self._add(request_id, model, version, variant, routing_key, columns, X, out, latency_ms, 200, None,
                  entities, missing, features_at)

    def append_failure(self, request_id: str, model: str, version: int, variant: str, routing_key: str | None,
                       status: int, error: str, latency_ms: float, *, entities: Mapping[str, Any] | None = None,
                       missing: Sequence[str] | None = None) -> None:
        """Record one request the variant did not answer: its status and error class, no output."""
        self._add(request_id, model, version, variant, routing_key, (), _NO_ROW, _NO_OUTPUT, latency_ms, status,
                  error, entities, missing, None)

    def _add(self, request_id: str, model: str, version: int, variant: str, routing_key: str | None,
             columns: Sequence[str], X: np.ndarray, out: np.ndarray, latency_ms: float, status: int,
             error: str | None, entities: Mapping[str, Any] | None, missing: Sequence[str] | None,
             features_at: int | None) -> None:
        n = len(X)
        with self._lock:
            if self._rows + self._held + n > self.max_buffer_rows:
                self.dropped += n
                return
            buf = self._bufs.get(columns)  # type: ignore[call-overload]
            if buf is None:
                buf = self._bufs[tuple(columns)] = _Columns(columns)
            buf.add(X, out)  # first: a row of the wrong width is refused before anything is recorded
            buf.rid.append(request_id)
            buf.ts.append(time.time())
            buf.model.append(model)
            buf.version.append(version)
            buf.variant.append(variant)
            buf.routing_key.append(routing_key)
            buf.latency.append(latency_ms)
            buf.counts.append(n)
            buf.status.append(status)
            buf.error.append(error)
            if entities is not None or missing or features_at is not None:
                buf.keyed = True
            buf.entities.append(None if entities is None else
                                [(str(k), orjson.dumps(v).decode()) for k, v in entities.items()])
            buf.missing.append(list(missing) if missing else None)
            buf.features_at.append(features_at)
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
        """Write what is buffered now; returns the number of rows written.

        A failed write keeps its rows (in order, in front of newer ones) for the next flush.
        """
        with self._write_lock:
            with self._lock:
                bufs, self._bufs, self._rows = self._bufs, {}, 0
            built = [buf.to_arrow() for buf in bufs.values()]
            self._unwritten.extend(built)
            self._held += sum(t.num_rows for t in built)
            if not self._unwritten:
                return 0
            tables = self._unwritten
            table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
            self.offline.write(self.table, table, time_column="ts", dictionary=_DICTIONARY)
            self._unwritten, self._held = [], 0
            self.written += table.num_rows
            return table.num_rows

