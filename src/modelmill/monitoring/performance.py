"""Delayed-label performance: labels that arrive later, joined to the prediction log by request id.

The prediction log and the labels are joined by :class:`modelmill.store.Feedback`
(the one label join): when a request was labelled twice the label with the
newest ``ts`` wins. Metrics are then computed per model
version, variant and time bucket with numpy:

    >>> import numpy as np
    >>> m = classification_metrics(np.array([0, 0, 1, 1]), np.array([0.1, 0.6, 0.4, 0.9]))
    >>> m["accuracy"], m["auc"]
    (0.5, 0.75)
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
from scipy import stats

from modelmill.errors import InputError
from modelmill.project import Project
from modelmill.store.feedback import Feedback

__all__ = [
    "METRICS",
    "TASK_METRICS",
    "PerformanceMonitor",
    "classification_metrics",
    "log_losses",
    "parse_duration",
    "query_arrow",
    "regression_metrics",
    "task_metrics",
    "task_of",
]

METRICS = ("accuracy", "precision", "recall", "auc", "log_loss", "brier", "calibration_error")
#: The delayed-label metrics ``monitor`` reports for every served version, rules or not, by the model's task
#: (multiclass: none yet, so such a version's row says no data rather than guess what its output holds).
TASK_METRICS: dict[str, tuple[str, ...]] = {"binary": ("auc", "log_loss", "accuracy"), "regression": ("mae", "rmse"),
                                            "multiclass": ()}
_BINARY_HINTS = ("auc", "log_loss", "logloss", "accuracy", "brier", "precision", "recall")
_REGRESSION_HINTS = ("mae", "rmse", "mse", "r2")
_EPS = float(np.finfo(np.float64).eps)  # where scikit-learn (1.5+) clips log loss: equal at p = 0 or 1 too
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str | float | int, *, field: str = "window") -> float:
    """Seconds in ``"90s"``, ``"15m"``, ``"1h"``, ``"7d"`` or a plain number of seconds.

    >>> parse_duration("15m"), parse_duration(30)
    (900.0, 30.0)
    """
    if isinstance(text, int | float) and not isinstance(text, bool):
        seconds = float(text)
    else:
        s = str(text).strip()
        try:
            seconds = float(s[:-1]) * _UNITS[s[-1]] if s and s[-1] in _UNITS else float(s)
        except ValueError:
            raise InputError(field, "must be a duration such as '90s', '15m', '1h' or '7d'", text) from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise InputError(field, "must be a positive duration", text)
    return seconds


def log_losses(y: np.ndarray, p: np.ndarray, *, eps: float = _EPS) -> np.ndarray:
    """Per-row log loss of probabilities ``p`` for 0/1 labels ``y``, with ``p`` clipped to [eps, 1 - eps].

        >>> log_losses(np.array([1.0, 0.0]), np.array([0.5, 0.0])).round(4).tolist()
        [0.6931, 0.0]
    """
    y = np.asarray(y, dtype=np.float64)
    q = np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)
    return -(y * np.log(q) + (1 - y) * np.log(1 - q))


def classification_metrics(y: np.ndarray, p: np.ndarray, *, threshold: float = 0.5, bins: int = 10) -> dict[str, float]:
    """Accuracy, precision, recall, ROC AUC, log loss, Brier score and calibration of binary predictions.

    ``calibration_error`` is the expected calibration error over ``bins``
    equal-width probability bins (weighted mean of |mean prediction − positive rate|).
    Undefined metrics (AUC with one class, precision with no positive prediction) are NaN.
    """
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    n = len(y)
    out: dict[str, float] = {"n": float(n), "positive_rate": float(y.mean()) if n else math.nan,
                             "mean_prediction": float(p.mean()) if n else math.nan}
    if n == 0:
        return out | dict.fromkeys(METRICS, math.nan)
    pred = p >= threshold
    pos = y == 1
    tp = float(np.count_nonzero(pred & pos))
    out["accuracy"] = float(np.count_nonzero(pred == pos)) / n
    out["precision"] = tp / np.count_nonzero(pred) if np.any(pred) else math.nan
    out["recall"] = tp / np.count_nonzero(pos) if np.any(pos) else math.nan
    n_pos = int(np.count_nonzero(pos))
    n_neg = n - n_pos
    if n_pos and n_neg:
        ranks = stats.rankdata(p)  # ties get their average rank: the Mann-Whitney form of the AUC
        out["auc"] = float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    else:
        out["auc"] = math.nan
    out["log_loss"] = float(np.mean(log_losses(y, p)))
    out["brier"] = float(np.mean((p - y) ** 2))
    idx = np.clip((p * bins).astype(np.int64), 0, bins - 1)
    count = np.bincount(idx, minlength=bins)
    gap = np.abs(np.bincount(idx, weights=p, minlength=bins) - np.bincount(idx, weights=y, minlength=bins))
    out["calibration_error"] = float(gap.sum() / n) if np.any(count) else math.nan
    return out


def regression_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """Mean absolute error and root mean squared error of predictions ``p`` of labels ``y`` (NaN when empty).

        >>> regression_metrics(np.array([1.0, 2.0]), np.array([2.0, 4.0]))
        {'mae': 1.5, 'rmse': 1.5811388300841898}
    """
    err = np.asarray(p, dtype=np.float64) - np.asarray(y, dtype=np.float64)
    if len(err) == 0:
        return {"mae": math.nan, "rmse": math.nan}
    return {"mae": float(np.mean(np.abs(err))), "rmse": float(np.sqrt(np.mean(err ** 2)))}


def task_of(*, declared: str | None = None, metrics: Mapping[str, Any] | None = None,
            labels: np.ndarray | None = None) -> tuple[str, str]:
    """The task of a model version and what said so: ``(task, source)``.

    In order: the task it records (``declared``: the kind :func:`modelmill.store.feedback.label_task`
    reads, as the labels route does: a ``task`` tag or lineage key, or a signature whose one output is
    ``probability``), the metrics it was registered with (``auc``, ``log_loss`` … say binary; ``mae``,
    ``rmse`` … regression), its labels (all 0 or 1: binary, else regression); with none of these,
    binary (every built-in trainer is a binary classifier).

        >>> task_of(metrics={"auc": 0.8}), task_of(labels=np.array([0.5, 3.0])), task_of()
        (('binary', 'metrics'), ('regression', 'labels'), ('binary', 'default'))
    """
    if declared in TASK_METRICS:
        return str(declared), "declared"
    names = {str(k).lower() for k in (metrics or {})}
    if names & set(_BINARY_HINTS):
        return "binary", "metrics"
    if names & set(_REGRESSION_HINTS):
        return "regression", "metrics"
    if labels is not None and len(labels):
        y = np.asarray(labels, dtype=np.float64)
        return ("binary" if bool(np.all((y == 0) | (y == 1))) else "regression"), "labels"
    return "binary", "default"


def task_metrics(task: str, y: np.ndarray, p: np.ndarray, *, threshold: float = 0.5) -> dict[str, dict[str, Any]]:
    """Each of the task's :data:`TASK_METRICS` as ``{"value", "n", "status", "reason"}``.

    ``n`` is the number of labelled predictions behind it. ``status`` is ``measured`` with a finite
    ``value``, or ``no_data`` with ``value`` None and a ``reason``: no labelled predictions, labels that
    are not 0/1 for a binary model, or (AUC) labels of one class only. A binary model's ``accuracy``
    counts ``p >= threshold`` as a positive prediction.

        >>> m = task_metrics("binary", np.array([0, 1, 1]), np.array([0.2, 0.7, 0.4]))
        >>> m["auc"]["value"], m["accuracy"]["value"], m["accuracy"]["n"]
        (1.0, 0.6666666666666666, 3)
        >>> task_metrics("regression", np.array([]), np.array([]))["mae"]
        {'value': None, 'n': 0, 'status': 'no_data', 'reason': 'no labelled predictions in the window'}
    """
    if task not in TASK_METRICS:
        raise InputError("task", f"must be one of {', '.join(TASK_METRICS)}", task)
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    n = len(y)
    names = TASK_METRICS[task]

    def none(reason: str) -> dict[str, dict[str, Any]]:
        return {m: {"value": None, "n": n, "status": "no_data", "reason": reason} for m in names}

    if not names:
        return {}

    if n == 0:
        return none("no labelled predictions in the window")
    if task == "regression":
        values = regression_metrics(y, p)
    else:
        odd = int(np.count_nonzero((y != 0) & (y != 1)))
        if odd:
            return none(f"{odd} of {n} labels are not 0 or 1, as a binary model's labels must be")
        values = classification_metrics(y, p, threshold=threshold)
    out = {}
    for m in names:
        value = values.get(m, math.nan)
        if math.isfinite(value):
            out[m] = {"value": float(value), "n": n, "status": "measured", "reason": None}
        else:
            why = "the labels are of one class only" if m == "auc" else "undefined on these labels"
            out[m] = {"value": None, "n": n, "status": "no_data", "reason": why}
    return out


def query_arrow(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] = ()) -> pa.Table:
    """Run ``sql`` on a DuckDB connection and return the result as Arrow."""
    table = con.sql(sql, params=list(params)).to_arrow_table()
    if table is None:
        raise InputError("query", "returned no result set", sql[:80])
    return table


class PerformanceMonitor:
    """Rolling model quality and latency from the prediction log and the delayed labels."""

    def __init__(self, project: Project, *, predictions_table: str = "predictions", labels_table: str = "labels",
                 threshold: float = 0.5) -> None:
        self.project = project
        self.predictions_table = predictions_table
        self.labels_table = labels_table
        self.threshold = threshold

    def __repr__(self) -> str:
        return f"PerformanceMonitor({self.project!r}, predictions_table={self.predictions_table!r})"

    @property
    def feedback(self) -> Feedback:
        return Feedback(self.project.offline, predictions=self.predictions_table, labels=self.labels_table)

    def joined(self, *, start: dt.datetime | None = None, end: dt.datetime | None = None,
               model: str | None = None) -> pa.Table:
        """Predictions that have a label: model, version, variant, ts, output, label (latest per request)."""
        return self.feedback.labelled(model=model, start=start, end=end)

    def rolling(self, *, window: str | float = "1h", start: dt.datetime | None = None,
                end: dt.datetime | None = None, model: str | None = None,
                by: Sequence[str] = ("model", "version", "variant")) -> list[dict[str, Any]]:
        """One row per group and time bucket of ``window``: the group, ``bucket`` (UTC start) and the metrics."""
        seconds = parse_duration(window)
        table = self.joined(start=start, end=end, model=model)
        return _grouped(table, by, seconds, self.threshold)

    def summary(self, *, start: dt.datetime | None = None, end: dt.datetime | None = None,
                model: str | None = None, by: Sequence[str] = ("model", "version", "variant")) -> list[dict[str, Any]]:
        """Metrics per group over the whole span."""
        table = self.joined(start=start, end=end, model=model)
        return _grouped(table, by, None, self.threshold)

    def latency(self, *, window: str | float = "1h", start: dt.datetime | None = None,
                end: dt.datetime | None = None, model: str | None = None) -> list[dict[str, Any]]:
        """p50/p95/p99 latency (ms) and request count per model, version, variant and time bucket."""
        return self.feedback.latency(bucket_s=int(parse_duration(window)), start=start, end=end, model=model)


def _grouped(table: pa.Table, by: Sequence[str], seconds: float | None, threshold: float) -> list[dict[str, Any]]:
    if table.num_rows == 0:
        return []
    for key in by:
        if key not in table.column_names:
            raise InputError("by", f"no column {key!r} in the prediction log", key)
    frame = table.to_pandas()
    keys = list(by)
    if seconds is not None:
        ts = frame["ts"]
        epoch = ts.astype("int64") // 10 ** _ts_exponent(ts)
        frame["bucket"] = (epoch // int(seconds) * int(seconds)).astype("int64")
        keys.append("bucket")
    rows = []
    for group, part in frame.groupby(keys, sort=True, dropna=False):
        values = group if isinstance(group, tuple) else (group,)
        row: dict[str, Any] = {k: (v.item() if hasattr(v, "item") else v) for k, v in zip(keys, values, strict=True)}
        if "bucket" in row:
            row["bucket"] = dt.datetime.fromtimestamp(row["bucket"], tz=dt.UTC)
        row.update(classification_metrics(part["label"].to_numpy(), part["output"].to_numpy(), threshold=threshold))
        rows.append(row)
    return rows


def _ts_exponent(ts: Any) -> int:
    unit = getattr(ts.dtype, "unit", "us")
    return {"s": 0, "ms": 3, "us": 6, "ns": 9}.get(unit, 6)
