"""The feedback path's one owner: the prediction log, the labels, and the one label join.

Two offline tables, written and read only here:

- ``predictions`` (:data:`PREDICTIONS_SCHEMA`), written by :class:`PredictionLog`:
  every outcome of a request for which a variant was chosen, appended in memory
  and written in batches. The hot path appends to per-column lists and copies
  the rows into one growing matrix; a background thread turns them into Arrow
  with vectorised calls only. ``features`` is a ``map<string, double>`` of the
  model's inputs (see :mod:`modelmill.store.maps`): built without formatting a
  single number, where JSON text cost the writer more than half its time.
  Failures are rows too: ``status`` is the HTTP status answered (200, or 422
  for a model failure, 5xx, 4xx for input the model could not take), ``error``
  the error's class, and a failed row has no ``output`` (null) and no
  ``features``. So the log alone counts a variant's requests and errors, on
  any number of servers writing to it. Readers of outputs keep ``output IS NOT
  NULL`` (:data:`ANSWERED`), which also holds for logs written before
  ``status`` existed. The feature route adds the request's ``entities`` (each
  join key's value as JSON text, so ``"UA"`` and ``42`` keep their types) and
  the features that were ``missing`` from the online store (absent, expired
  or defaulted). A multiclass model's rows carry ``probabilities``, one per class in the model's
  output order (``output`` is then the predicted class's index); other rows have none (null).
- ``labels`` (:data:`LABELS_SCHEMA`), written by :func:`write_labels`: the
  ground truth of a prediction, keyed by its request id, arriving late, twice
  or out of order. For each request id **the label with the newest** ``ts``
  **wins** (a tie goes to the one received last); a repeat of a stored label
  is counted and not stored again.

Monitoring, rollouts, experiments, the skew check, the report and the demo read
both through :class:`Feedback`, which holds the one label join.

    >>> import tempfile, numpy as np
    >>> from modelmill.store import OfflineStore
    >>> store = OfflineStore(tempfile.mkdtemp())
    >>> log = PredictionLog(store)
    >>> log.append("r1", "m", 1, "default", None, ("x",), np.array([[2.0]]), np.array([0.5]), 0.3)
    >>> log.flush()
    1
    >>> write_labels(store, "m", [{"id": "r1", "label": 1, "ts": "2026-12-01T10:00:00Z"},
    ...                           {"id": "r1", "label": 0, "ts": "2026-12-01T09:00:00Z"}]).as_dict()
    {'accepted': 2, 'duplicates': 0, 'unknown': 0}
    >>> Feedback(store).labelled(model="m").select(["output", "label"]).to_pylist()
    [{'output': 0.5, 'label': 1.0}]
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import numbers
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa

from modelmill.errors import ConflictError, InputError, NotFoundError
from modelmill.store.maps import MAP_TYPE, map_column

__all__ = [
    "ANSWERED",
    "CLOCKS",
    "ERROR_STATUS",
    "LABELS_SCHEMA",
    "PREDICTIONS_SCHEMA",
    "TASKS",
    "Feedback",
    "LabelCounts",
    "LabelTask",
    "PredictionLog",
    "check_label",
    "is_error",
    "label_task",
    "model_task",
    "write_labels",
]

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
    ("probabilities", pa.list_(pa.float64())),  # a multiclass model's probability per class (else null)
])

LABELS_SCHEMA = pa.schema([
    ("request_id", pa.string()),  # the prediction's id
    ("model", pa.string()),  # null in labels written before it existed: those join on the id alone
    ("ts", pa.timestamp("us", tz="UTC")),  # when the outcome was observed: the newest wins
    ("label", pa.float64()),
    ("received_at", pa.timestamp("us", tz="UTC")),  # when it was written: breaks a tie of equal ts
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

    __slots__ = ("X", "columns", "counts", "entities", "error", "features_at", "keyed", "latency", "missing", "model", "out", "probs",
                 "rid", "routing_key", "rows", "status", "ts", "variant", "version")

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
        self.probs: list[np.ndarray | None] = []  # per request: a multiclass model's [rows, C] probabilities
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
        probabilities = _probabilities(self.probs, counts, n)
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
            probabilities,
        ], schema=PREDICTIONS_SCHEMA)


def _probabilities(probs: Sequence[np.ndarray | None], counts: np.ndarray, n: int) -> pa.Array:
    """The ``probabilities`` column: each row's list of class probabilities, null for a request without."""
    kind = PREDICTIONS_SCHEMA.field("probabilities").type
    if all(p is None for p in probs):
        return pa.nulls(n, kind)
    widths = {p.shape[1] for p in probs if p is not None}
    if len(widths) == 1 and all(p is not None for p in probs):  # the usual case: one model, every row kept
        w = widths.pop()
        values = np.concatenate([p for p in probs if p is not None], axis=0).reshape(-1)
        offsets = np.arange(0, n * w + 1, w, dtype=np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.float64()), type=kind)
    width = np.repeat([0 if p is None else p.shape[1] for p in probs], counts)
    valid = np.repeat([p is not None for p in probs], counts)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(width, out=offsets[1:])
    values = np.concatenate([p.ravel() for p in probs if p is not None])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.float64()), type=kind,
                                    mask=pa.array(~valid))


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
               features_at: int | None = None, probabilities: np.ndarray | None = None) -> None:
        """Record one answered request (``X`` rows and their outputs); cheap, never blocks on I/O.

        The feature route passes the request's ``entities``, the features that were ``missing`` and
        ``features_at``, the time (microseconds) its online reads were judged at. A multiclass model's
        request passes its ``probabilities`` (``[rows, C]``; ``out`` is the predicted class's index).
        """
        if probabilities is not None and (probabilities.ndim != 2 or len(probabilities) != len(X)):
            raise ValueError(f"probabilities of shape {probabilities.shape} for {len(X)} rows; pass [rows, classes]")
        self._add(request_id, model, version, variant, routing_key, columns, X, out, latency_ms, 200, None,
                  entities, missing, features_at, probabilities)

    def append_failure(self, request_id: str, model: str, version: int, variant: str, routing_key: str | None,
                       status: int, error: str, latency_ms: float, *, entities: Mapping[str, Any] | None = None,
                       missing: Sequence[str] | None = None) -> None:
        """Record one request the variant did not answer: its status and error class, no output."""
        self._add(request_id, model, version, variant, routing_key, (), _NO_ROW, _NO_OUTPUT, latency_ms, status,
                  error, entities, missing, None, None)

    def _add(self, request_id: str, model: str, version: int, variant: str, routing_key: str | None,
             columns: Sequence[str], X: np.ndarray, out: np.ndarray, latency_ms: float, status: int,
             error: str | None, entities: Mapping[str, Any] | None, missing: Sequence[str] | None,
             features_at: int | None, probabilities: np.ndarray | None) -> None:
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
            buf.probs.append(probabilities)
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



# ---- the labels ---------------------------------------------------------------------------------

_STAMP = pa.timestamp("us", tz="UTC")

#: A bound of a time window: an aware datetime, or epoch seconds.
Time = dt.datetime | float | int


@dataclasses.dataclass(frozen=True, kw_only=True)
class LabelCounts:
    """What a batch of labels came to: ``accepted`` (stored, for a logged prediction of the model),
    ``duplicates`` (that id, label and ``ts`` were already stored, or repeated in the batch: not stored
    again) and ``unknown`` (stored, but no prediction of the model has that id yet)."""

    accepted: int = 0
    duplicates: int = 0
    unknown: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


#: The tasks a model version may record (``tags["task"]`` or ``lineage["task"]``); each says what its labels are.
TASKS = ("binary", "multiclass", "regression")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LabelTask:
    """What a label of a model must be; :func:`label_task` reads it off the model's newest version.

    ``kind`` is ``"binary"`` (0 or 1; true and false are 1 and 0), ``"multiclass"`` (one of ``classes``
    when the version records them, else a whole number), ``"regression"`` (any finite number), or None:
    the version records no task, and a label may be any finite number (true and false as 1 and 0). NaN
    and infinities are refused whatever the task. ``source`` says where the task was read (messages
    name it, so a user sees why a label was refused and where to change it).

        >>> LabelTask(kind="binary").check(True, "labels[0].label")
        1.0
        >>> LabelTask(kind="multiclass", classes=(0, 1, 2)).check(2, "label")
        2.0
        >>> LabelTask(kind="binary", source="clf@3 (tags.task)").check(0.5, "labels[3].label")
        Traceback (most recent call last):
        ...
        modelmill.errors.InputError: labels[3].label: must be 0 or 1 (or true/false): clf@3 (tags.task) is binary (got 0.5)
    """

    kind: str | None = None
    classes: tuple[float, ...] = ()
    source: str = ""

    def __post_init__(self) -> None:
        if self.kind is not None and self.kind not in TASKS:
            raise InputError("task", f"must be one of {', '.join(TASKS)} (or None: not recorded)", self.kind)
        classes = tuple(float(c) for c in self.classes)
        if classes and self.kind != "multiclass":
            raise InputError("classes", "are recorded for a multiclass task only", self.classes)
        if not all(math.isfinite(c) for c in classes):
            raise InputError("classes", "must be finite numbers", self.classes)
        object.__setattr__(self, "classes", classes)

    @property
    def expects(self) -> str:
        """What a label of this task must be, in words."""
        if self.kind == "binary":
            return "0 or 1 (or true/false)"
        if self.kind == "multiclass":
            return (f"one of the classes {', '.join(f'{c:g}' for c in self.classes)}" if self.classes
                    else "a whole number (the class)")
        if self.kind == "regression":
            return "a finite number"
        return "a finite number (true and false are 1 and 0)"

    def check(self, value: Any, field: str) -> float:
        """``value`` as the float the labels table stores, or an InputError naming ``field``."""
        if isinstance(value, np.generic):
            value = value.item()
        flag = isinstance(value, bool)
        if not (flag or isinstance(value, numbers.Real)) or not math.isfinite(float(value)) or (
                flag and self.kind in ("multiclass", "regression")):
            raise self._refuse(field, value)
        y = float(value)
        if self.kind == "binary" and y not in (0.0, 1.0):
            raise self._refuse(field, value)
        if self.kind == "multiclass" and (y not in self.classes if self.classes else not y.is_integer()):
            raise self._refuse(field, value)
        return y

    def _refuse(self, field: str, value: Any) -> InputError:
        about = f": {self.source} is {self.kind}" if self.kind and self.source else ""
        if self.kind is None and self.source:
            about = f" ({self.source} records no task)"
        return InputError(field, f"must be {self.expects}{about}", _shown(value))


def _shown(value: Any) -> Any:
    # NaN and infinities as text: an error's JSON form (CLI --json, HTTP) cannot hold them as numbers.
    return str(value) if isinstance(value, float) and not math.isfinite(value) else value


def label_task(version: Any) -> LabelTask:
    """The :class:`LabelTask` a model version records, read the same way for HTTP, files and streams.

    In order: ``tags["task"]``, then ``lineage["task"]`` (``binary``, ``multiclass`` or ``regression``,
    with the classes in ``classes``: a list in lineage, ``"0,1,2"`` in a tag); else a signature whose one
    output is ``probability`` (the default, and what every built-in trainer registers: the positive-class
    probability of a binary classifier) is binary; else the task is not recorded (None). A task
    modelmill does not know is a :class:`~modelmill.errors.ConflictError`: the record, not the label, is
    wrong. ``version`` is the registry's ``ModelVersion`` or anything with ``name``, ``version`` and
    optionally ``tags``, ``lineage`` and ``signature``.

        >>> import types
        >>> v = types.SimpleNamespace(name="m", version=2, tags={"task": "multiclass", "classes": "0,1,2"})
        >>> label_task(v)
        LabelTask(kind='multiclass', classes=(0.0, 1.0, 2.0), source='m@2 (tags.task)')
    """
    ref = f"{version.name}@{version.version}"
    holders = (("tags", getattr(version, "tags", None) or {}), ("lineage", getattr(version, "lineage", None) or {}))
    for where, holder in holders:
        recorded = holder.get("task")
        if recorded is None:
            continue
        kind = str(recorded).strip().lower()
        if kind not in TASKS:
            raise ConflictError(f"{ref} records task {recorded!r} ({where}.task), which modelmill does not know; "
                                f"record one of {', '.join(TASKS)}", model=str(version.name), task=str(recorded))
        raw = holder.get("classes")
        if raw is None:
            raw = next((h.get("classes") for _, h in holders if h.get("classes") is not None), None)
        try:
            classes = () if raw is None else tuple(
                float(c) for c in (raw.split(",") if isinstance(raw, str) else raw))
            return LabelTask(kind=kind, classes=classes if kind == "multiclass" else (),
                             source=f"{ref} ({where}.task)")
        except (TypeError, ValueError, InputError):
            raise ConflictError(f"{ref} records classes {raw!r}, which are not a list of finite numbers",
                                model=str(version.name)) from None
    outputs = getattr(getattr(version, "signature", None), "output_names", None)
    if outputs == ["probability"]:
        return LabelTask(kind="binary", source=f"{ref} (signature output 'probability')")
    return LabelTask(source=ref)


def model_task(source: Any, model: str) -> LabelTask:
    """The task of ``model``'s newest version in ``source`` (a ``Registry``, or a server's model source):
    :class:`~modelmill.errors.NotFoundError` for a model nobody registered."""
    if not isinstance(model, str) or not model or "@" in model:
        raise InputError("model", "must be a model's name (labels are for the model, not NAME@VERSION)", model)
    return label_task(source.resolve(model))


def check_label(row: Any, task: LabelTask, *, where: str = "") -> tuple[str, int | None, float]:
    """One label ``{"id", "label", "ts"?}`` as (request id, ts in microseconds or None, value): the one check
    that HTTP, files and streams share. A bad field is an InputError naming it under ``where``
    (``labels[3].label``; ``label`` with no ``where``).

        >>> check_label({"id": "r1", "label": True, "ts": 0}, LabelTask(kind="binary"))
        ('r1', 0, 1.0)
    """
    prefix = f"{where}." if where else ""
    if not isinstance(row, Mapping):
        raise InputError(where or "label", "must be an object with 'id', 'label' and an optional 'ts'", row)
    rid = row.get("id", row.get("request_id"))
    if isinstance(rid, numbers.Integral) and not isinstance(rid, bool):
        rid = str(rid)
    if not isinstance(rid, str) or not rid:
        raise InputError(f"{prefix}id", "must be the prediction's id (a non-empty string)", rid)
    value = task.check(row.get("label"), f"{prefix}label")
    return rid, _label_time(row.get("ts"), f"{prefix}ts"), value


_MAX_EPOCH_S = 9_223_372_036.0  # pandas' nanosecond times end here (2262-04-11)


def _label_time(value: Any, field: str) -> int | None:
    # A missing ts (absent, null, or an empty cell read as NaN/NaT): None, stamped with the arrival time.
    if value is None or value is pd.NaT or (isinstance(value, float) and math.isnan(value)):
        return None
    # Readers turn ts into pandas (nanosecond) times: a time outside 1677-2262 (or inf) is refused here, as bad
    # input, rather than overflowing there or in the int64 column.
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        seconds = float(value)
        if not math.isfinite(seconds) or abs(seconds) >= _MAX_EPOCH_S:
            raise InputError(field, "must be epoch seconds of a time between 1677 and 2262", _shown(seconds))
        return int(seconds * 1_000_000)
    try:
        ts = pd.Timestamp(value)
        if ts is pd.NaT:
            return None
        if ts.tzinfo is None:
            ts = ts.tz_localize("UTC")
        return int(ts.value // 1000)
    except (ValueError, TypeError):
        raise InputError(field, "must be an ISO 8601 time such as 2026-12-01T10:00:00Z", value) from None
    except OverflowError:
        raise InputError(field, "must be a time between 1677 and 2262", value) from None


def _item(i: int) -> str:
    return f"labels[{i}]"


def write_labels(offline: Any, model: str, rows: Iterable[Mapping[str, Any]], *, task: LabelTask | None = None,
                 where: Callable[[int], str] = _item, now: float | None = None) -> LabelCounts:
    """Store ground truth for predictions of ``model``: each row ``{"id", "label", "ts"?}``.

    A shortcut for :meth:`Feedback.write_labels` on the default tables.
    """
    return Feedback(offline).write_labels(model, rows, task=task, where=where, now=now)


# ---- the reader, and the one label join ---------------------------------------------------------


#: The times a reader's windows can be over: when a request was answered, or the event time of its features.
CLOCKS = ("wall", "event")


def _bound(column: str, op: str, value: Time | None, params: list[Any]) -> list[str]:
    if value is None:
        return []
    if isinstance(value, dt.datetime):
        params.append(value)
        return [f"{column} {op} ?"]
    params.append(float(value))
    return [f"{column} {op} to_timestamp(?)"]


def _columns(con: Any, table: str) -> set[str]:
    return {r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()}


class Feedback:
    """Reads (and writes labels into) the prediction log and the labels of an offline store.

    Every reader of either table goes through here, so the label join is written once: a prediction's
    label is the newest (by ``ts``) of those sent for its request id, either for its model or, in labels
    written before they named a model, for the id alone.
    """

    def __init__(self, offline: Any, *, predictions: str = "predictions", labels: str = "labels",
                 clock: str = "wall") -> None:
        """``clock`` says which time the windows of the readers are over: ``"wall"`` (default), when each
        request was answered (``ts``); ``"event"``, the event time its online features were judged at
        (``features_at``, see :doc:`the event clock </concepts/clock>`), for a replay of past data. Under the
        event clock only requests that logged ``features_at`` (the feature route's) are in any window."""
        if clock not in CLOCKS:
            raise InputError("clock", f"one of {', '.join(CLOCKS)}", clock)
        self.offline = offline
        self.predictions = predictions
        self.labels = labels
        self.clock = clock
        self.time = "ts" if clock == "wall" else "features_at"

    def __repr__(self) -> str:
        return (f"Feedback({self.offline!r}, predictions={self.predictions!r}, labels={self.labels!r}, "
                f"clock={self.clock!r})")

    def has_predictions(self) -> bool:
        if not self.offline.exists(self.predictions):
            return False
        if self.time == "ts":
            return True
        with self._connect(labels=False) as con:  # a log written before features_at has no event time
            return self.time in _columns(con, self.predictions)

    def has_labels(self) -> bool:
        return bool(self.offline.exists(self.labels))

    def require(self, *, labels: bool = False) -> None:
        """Raise NotFoundError unless the prediction log (and, with ``labels``, the labels) exist."""
        for table in (self.predictions, self.labels) if labels else (self.predictions,):
            if not self.offline.exists(table):
                raise NotFoundError("offline table", table, "nothing has been logged yet; serve some predictions first")

    # ---- writing labels

    def write_labels(self, model: str, rows: Iterable[Mapping[str, Any]], *, task: LabelTask | None = None,
                     where: Callable[[int], str] = _item, now: float | None = None) -> LabelCounts:
        """Validate and store a batch of labels; returns how many were accepted, duplicates or unknown.

        Each label must fit ``task`` (:func:`label_task` of the model's newest version; None: a task not
        recorded, any finite number). ``ts`` (an ISO 8601 time, a datetime or epoch seconds) is when the
        outcome was observed; without it, now (and a repeat of the id's current label is then a duplicate,
        whatever its stored ``ts``). Readers take the label with the newest ``ts`` per request id, so a late
        correction wins and an out-of-order older label does not. A label whose prediction is not logged yet
        is stored (the log is written in batches, so a label can overtake its prediction) and counted as
        unknown. A bad row raises :class:`~modelmill.errors.InputError` naming it (``where(i)``, by default
        ``labels[3]``, and the field: ``labels[3].label``) before anything is stored.
        """
        if not isinstance(model, str) or not model:
            raise InputError("model", "must be the name of the model the labels are for", model)
        now_us = int((time.time() if now is None else now) * 1_000_000)
        task = task or LabelTask()
        parsed = [check_label(row, task, where=where(i)) for i, row in enumerate(rows)]
        if not parsed:
            return LabelCounts()
        ids = [r for r, _, _ in parsed]
        batch = pa.table({"request_id": pa.array(ids, pa.string()),
                          "ts_us": pa.array([now_us if t is None else t for _, t, _ in parsed], pa.int64()),
                          "label": pa.array([y for _, _, y in parsed], pa.float64())})
        stored: set[tuple[str, int | None, float]] = set()
        current: dict[str, float] = {}
        known: set[str] = set()
        tables = [t for t in (self.predictions, self.labels) if self.offline.exists(t)]
        with self.offline.connect(tables) as con:
            con.register("batch", batch)
            if self.labels in tables:
                same_model = " AND (l.model = ? OR l.model IS NULL)" if "model" in _columns(con, self.labels) else ""
                stored = {(r, int(t), float(y)) for r, t, y in con.execute(
                    f"SELECT DISTINCT b.request_id, b.ts_us, b.label FROM batch b JOIN {self.labels} l "
                    "ON l.request_id = b.request_id AND epoch_us(l.ts) = b.ts_us AND CAST(l.label AS DOUBLE) = b.label"
                    + same_model, [model] if same_model else []).fetchall()}
                # A label sent without ts repeats the id's current label when it equals it.
                received = "coalesce(epoch_us(received_at), -1)" if "received_at" in _columns(con, self.labels) else "-1"
                current = {r: float(y) for r, y in con.execute(
                    f"SELECT l.request_id, arg_max(CAST(l.label AS DOUBLE), {{'t': epoch_us(l.ts), 'r': {received}}}) "
                    f"FROM {self.labels} l WHERE l.request_id IN (SELECT request_id FROM batch)"
                    + same_model + " GROUP BY 1", [model] if same_model else []).fetchall()}
            if self.predictions in tables:
                known = {r for (r,) in con.execute(
                    f"SELECT DISTINCT request_id FROM {self.predictions} WHERE model = ? "
                    "AND request_id IN (SELECT request_id FROM batch)", [model]).fetchall()}
        keep: list[int] = []
        accepted = unknown = 0
        for i, key in enumerate(parsed):
            if key in stored or (key[1] is None and current.get(key[0]) == key[2]):
                continue
            stored.add(key)  # a repeat later in the same batch is a duplicate too
            keep.append(i)
            if key[0] in known:
                accepted += 1
            else:
                unknown += 1
        if keep:
            new = batch.take(pa.array(keep, pa.int64()))
            table = pa.table([
                new.column("request_id"),
                pa.array([model] * len(keep), pa.string()),
                pa.array(new.column("ts_us").to_numpy(), pa.int64()).cast(_STAMP),
                new.column("label"),
                pa.array(np.full(len(keep), now_us, dtype=np.int64)).cast(_STAMP),
            ], schema=LABELS_SCHEMA)
            self.offline.write(self.labels, table, time_column="ts")
        return LabelCounts(accepted=accepted, duplicates=len(parsed) - len(keep), unknown=unknown)

    # ---- the join

    def _joined(self, con: Any, *, inner: bool, where: Sequence[str] = ()) -> str:
        """SQL of the prediction log with a ``label`` column: only labelled rows when ``inner``; only the log
        rows that meet every condition of ``where`` (SQL on the log's columns, its ``?`` parameters the
        caller's), whose labels alone are then grouped (a guardrail's stage or a monitor's window reads
        the labels of its own requests, not of the whole log)."""
        picked = f" WHERE {' AND '.join(where)}" if where else ""
        if not self.offline.exists(self.labels):
            return f"SELECT p.*, CAST(NULL AS DOUBLE) AS label FROM {self.predictions} p" + (
                " WHERE FALSE" if inner else picked)
        cols = _columns(con, self.labels)
        model = "model" if "model" in cols else "CAST(NULL AS VARCHAR)"
        received = "coalesce(epoch_us(received_at), -1)" if "received_at" in cols else "-1"
        # Newest ts wins; of two with the same ts, the one received last (a label written before received_at
        # existed loses such a tie).
        scope = " WHERE request_id IN (SELECT request_id FROM mm_log)" if where else ""
        latest = (f"SELECT request_id, {model} AS model, max(ts) AS ts, "
                  f"arg_max(CAST(label AS DOUBLE), {{'t': epoch_us(ts), 'r': {received}}}) AS label "
                  f"FROM {self.labels}{scope} GROUP BY ALL")
        # A label names its model; one written before labels did joins on the request id alone (filtered by
        # model through the prediction's side). Of the two, the newer wins.
        sql = (f"WITH mm_log AS (SELECT * FROM {self.predictions}{picked}), latest AS ({latest}) "
               "SELECT p.*, CASE WHEN u.ts IS NULL OR t.ts >= u.ts THEN t.label ELSE u.label END AS label "
               "FROM mm_log p "
               "LEFT JOIN latest t ON t.request_id = p.request_id AND t.model = p.model "
               "LEFT JOIN latest u ON u.request_id = p.request_id AND u.model IS NULL")
        return sql + (" WHERE t.request_id IS NOT NULL OR u.request_id IS NOT NULL" if inner else "")

    def _connect(self, *, labels: bool) -> Any:
        return self.offline.connect([self.predictions, self.labels] if labels else [self.predictions])

    def labelled(self, *, model: str | None = None, start: Time | None = None,
                 end: Time | None = None) -> pa.Table:
        """Answered predictions that have a label, oldest first: model, version, variant, ts, ``at`` (the
        time on this reader's clock: ``ts``, or ``features_at`` under the event clock), output, label, and
        ``probabilities`` (a multiclass model's, per class; null otherwise and in logs written before it)."""
        self.require(labels=True)
        params: list[Any] = []
        where = [ANSWERED, *_bound(self.time, ">=", start, params), *_bound(self.time, "<", end, params)]
        if model is not None:
            where.append("model = ?")
            params.append(model)
        with self._connect(labels=True) as con:
            probs = "probabilities" if "probabilities" in _columns(con, self.predictions) else \
                "CAST(NULL AS DOUBLE[]) AS probabilities"
            sql = (f"SELECT model, version, variant, ts, {self.time} AS at, output, label, {probs} "
                   f"FROM ({self._joined(con, inner=True, where=where)}) ORDER BY {self.time}")
            return _arrow(con, sql, params)

    def outcomes(self, model: str, *, since: Time) -> pd.DataFrame | None:
        """Every logged outcome of ``model`` since a time, its label when one came (None without a log):
        request_id, variant, t (epoch seconds), latency_ms, output, status, label."""
        if not self.has_predictions():
            return None
        params: list[Any] = [model]
        where = ["model = ?", *_bound(self.time, ">=", since, params)]
        with self._connect(labels=True) as con:
            # A log written before outcomes were logged holds answered requests only.
            status = "coalesce(status, 200)" if "status" in _columns(con, self.predictions) else "200"
            return con.execute(
                f"SELECT request_id, variant, epoch({self.time}) AS t, latency_ms, output, {status} AS status, label "
                f"FROM ({self._joined(con, inner=False, where=where)})", params).df()

    def routed(self, model: str, *, since: Time, labelled: bool, answered: bool) -> pd.DataFrame:
        """The log rows of ``model`` that carry a routing key, since a time (empty without a log): every
        column but the request's inputs (``features``, ``entities``, ``missing``), and ``label`` when
        ``labelled`` (then only labelled rows); ``answered`` keeps predictions."""
        if not self.has_predictions() or (labelled and not self.has_labels()):
            return pd.DataFrame()
        params: list[Any] = [model]
        where = ["model = ?", "routing_key IS NOT NULL", *_bound(self.time, ">=", since, params)]
        if answered:
            where.append(ANSWERED)
        with self._connect(labels=labelled) as con:
            source = self._joined(con, inner=True, where=where) if labelled else \
                f"SELECT * FROM {self.predictions} WHERE {' AND '.join(where)}"
            # The inputs are left unread: turning the feature maps into Python dicts was most of the read's time
            # (331 ms → 145 ms for 20k rows), and an experiment's metrics are of its outputs and labels.
            inputs = [c for c in ("features", "entities", "missing") if c in _columns(con, self.predictions)]
            picked = f"* EXCLUDE ({', '.join(inputs)})" if inputs else "*"
            return con.execute(f"SELECT {picked} FROM ({source})", params).df()

    def assignments(self, model: str, *, since: Time, variants: Sequence[str]) -> list[tuple[str, str, float]]:
        """(routing key, variant, first seen in epoch seconds) of ``model``'s keyed requests since a time."""
        if not self.has_predictions():
            return []
        params: list[Any] = [model]
        where = ["model = ?", "routing_key IS NOT NULL", *_bound(self.time, ">=", since, params),
                 "list_contains(?, variant)"]
        params.append(list(variants))
        with self._connect(labels=False) as con:
            rows = con.execute(f"SELECT routing_key, variant, epoch(min({self.time})) FROM {self.predictions} "
                               f"WHERE {' AND '.join(where)} GROUP BY 1, 2", params).fetchall()
        return [(str(u), str(v), float(t)) for u, v, t in rows]

    def served_features(self, model: str, version: int, *, start: Time | None = None, end: Time | None = None,
                        request_ids: Sequence[str] | None = None,
                        exclude_prefix: str | None = None) -> pa.Table | None:
        """``features``, ``output`` and ``probabilities`` (a multiclass model's; else null) of a version's logged
        requests in [start, end), of only ``request_ids`` when given, leaving out variants named
        ``exclude_prefix…`` (None without a log)."""
        if not self.has_predictions():
            return None
        params: list[Any] = [model, version]
        where = ["model = ?", "version = ?", *_bound(self.time, ">=", start, params), *_bound(self.time, "<", end, params)]
        if exclude_prefix is not None:
            where.append("NOT starts_with(variant, ?)")
            params.append(exclude_prefix)
        with self._connect(labels=False) as con:
            if request_ids is not None:
                con.register("wanted", pa.table({"request_id": pa.array(list(request_ids), pa.string())}))
                where.append("request_id IN (SELECT request_id FROM wanted)")
            probs = "probabilities" if "probabilities" in _columns(con, self.predictions) else \
                "CAST(NULL AS DOUBLE[]) AS probabilities"
            return _arrow(con, f"SELECT features, output, {probs} FROM {self.predictions} "
                          f"WHERE {' AND '.join(where)}", params)

    def served_versions(self, *, start: Time, end: Time) -> list[tuple[str, int]]:
        """(model, version) of every version with a logged request in [start, end), sorted."""
        if not self.has_predictions():
            return []
        params: list[Any] = []
        where = [*_bound(self.time, ">=", start, params), *_bound(self.time, "<", end, params)]
        with self._connect(labels=False) as con:
            rows = con.execute(f"SELECT DISTINCT model, version FROM {self.predictions} "
                               f"WHERE {' AND '.join(where)} ORDER BY model, version", params).fetchall()
        return [(str(m), int(v)) for m, v in rows]

    def latency(self, *, bucket_s: int, start: Time | None = None, end: Time | None = None,
                model: str | None = None) -> list[dict[str, Any]]:
        """Request count and p50/p95/p99 latency (ms) per model, version, variant and time bucket."""
        self.require()
        params: list[Any] = []
        where = [*_bound(self.time, ">=", start, params), *_bound(self.time, "<", end, params)]
        if model is not None:
            where.append("model = ?")
            params.append(model)
        sql = f"""
            SELECT model, version, variant, time_bucket(INTERVAL '{int(bucket_s)} seconds', {self.time}) AS bucket,
                   count(*) AS n, quantile_cont(latency_ms, 0.5) AS p50_ms,
                   quantile_cont(latency_ms, 0.95) AS p95_ms, quantile_cont(latency_ms, 0.99) AS p99_ms
            FROM {self.predictions} WHERE {' AND '.join(where) or 'TRUE'}
            GROUP BY ALL ORDER BY bucket, model, version, variant"""
        with self._connect(labels=False) as con:
            return [dict(r) for r in _arrow(con, sql, params).to_pylist()]

    def served_inputs(self, *, model: str | None = None, since_us: int | None = None,
                      until_us: int | None = None) -> pa.Table:
        """The answered requests that logged features (request_id, ts, model, version, features, and
        ``entities`` and ``features_at`` where the log has them), ``ts`` in [since, until] (microseconds)."""
        self.require()
        params: list[Any] = []
        where = ["features IS NOT NULL", ANSWERED]
        if model is not None:
            where.append("model = ?")
            params.append(model)
        if since_us is not None:
            where.append("epoch_us(ts) >= ?")
            params.append(int(since_us))
        if until_us is not None:
            where.append("epoch_us(ts) <= ?")
            params.append(int(until_us))
        with self._connect(labels=False) as con:
            names = _columns(con, self.predictions)
            columns = ["request_id", "ts", "model", "version", "features"] + [
                c for c in ("entities", "features_at") if c in names]
            return _arrow(con, f"SELECT {', '.join(columns)} FROM {self.predictions} WHERE {' AND '.join(where)}",
                          params)


def _arrow(con: Any, sql: str, params: Sequence[Any]) -> pa.Table:
    table = con.sql(sql, params=list(params)).to_arrow_table()
    if table is None:
        raise InputError("query", "returned no result set", sql[:80])
    return table
