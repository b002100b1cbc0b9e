"""Delayed-label performance: labels that arrive later, joined to the prediction log by request id.

The prediction log and the labels are joined by :class:`modelmill.store.Feedback`
(the one label join): when a request was labelled twice the label with the
newest ``ts`` wins. Metrics are then computed per model
version, variant and time bucket with numpy:

    >>> import numpy as np
    >>> m = classification_metrics(np.array([0, 0, 1, 1]), np.array([0.1, 0.6, 0.4, 0.9]))
    >>> m["accuracy"], m["auc"]
    (0.5, 0.75)

A multiclass model's rows carry its probability per class (the log's ``probabilities``; ``output`` is the
predicted class's index), and its labels are its classes: the class values the version records
(``classes``), else the classes' indices. Its metrics are log loss, macro F1 and accuracy:

    >>> m = multiclass_metrics(np.array([0, 2]), np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]))
    >>> round(m["log_loss"], 4), m["macro_f1"], m["accuracy"]
    (0.4338, 1.0, 1.0)
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
    "PROBABILITIES",
    "TASK_METRICS",
    "PerformanceMonitor",
    "class_indices",
    "classification_metrics",
    "log_losses",
    "multiclass_metrics",
    "parse_duration",
    "query_arrow",
    "regression_metrics",
    "stacked_probabilities",
    "task_metrics",
    "task_of",
]

METRICS = ("accuracy", "precision", "recall", "auc", "log_loss", "brier", "calibration_error")
#: The delayed-label metrics ``monitor`` reports for every served version, rules or not, by the model's task.
TASK_METRICS: dict[str, tuple[str, ...]] = {"binary": ("auc", "log_loss", "accuracy"), "regression": ("mae", "rmse"),
                                            "multiclass": ("log_loss", "macro_f1", "accuracy")}
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


def class_indices(y: np.ndarray, classes: Sequence[float] = ()) -> np.ndarray:
    """Multiclass labels as the index of their class in the model's output order: the label's position in
    ``classes`` (the class values the version records), else the label itself (it is the index); -1 for
    a label that is neither (one of a class the model does not have).

        >>> class_indices(np.array([5.0, 3.0, 4.0]), (3.0, 5.0)).tolist(), class_indices(np.array([2.0, 0.5])).tolist()
        ([1, 0, -1], [2, -1])
    """
    y = np.asarray(y, dtype=np.float64)
    if len(classes):
        values = np.asarray(classes, dtype=np.float64)
        order = np.argsort(values, kind="stable")
        pos = np.clip(np.searchsorted(values[order], y), 0, len(values) - 1)
        return np.where(values[order][pos] == y, order[pos], -1).astype(np.int64)
    whole = np.isfinite(y) & (y >= 0) & (y == np.floor(y))
    return np.where(whole, y, -1).astype(np.int64)


def multiclass_metrics(y: np.ndarray, probabilities: np.ndarray | None, predicted: np.ndarray | None = None, *,
                       eps: float = _EPS) -> dict[str, float]:
    """Log loss, macro F1 and accuracy of a multiclass model: its labels ``y`` (class indices, see
    :func:`class_indices`), its ``probabilities`` (``[n, C]``) and its predicted class indices (``predicted``;
    by default each row's most probable class).

    Log loss takes each row's probability of its label, clipped to [eps, 1 - eps] (None probabilities: NaN).
    Macro F1 is the mean F1 over the classes among the labels and the predictions (as scikit-learn's
    ``f1_score(average="macro")``). Empty: NaN.
    """
    y = np.asarray(y, dtype=np.int64)
    n = len(y)
    if predicted is None:
        if probabilities is None:
            raise InputError("predicted", "is required without probabilities")
        predicted = np.asarray(probabilities).argmax(axis=1)
    pred = np.asarray(predicted, dtype=np.int64)
    out = {"n": float(n), "log_loss": math.nan, "macro_f1": math.nan, "accuracy": math.nan}
    if n == 0:
        return out
    out["accuracy"] = float(np.count_nonzero(pred == y)) / n
    seen = np.union1d(y, pred)
    f1 = []
    for k in seen:
        tp = np.count_nonzero((pred == k) & (y == k))
        fp = np.count_nonzero((pred == k) & (y != k))
        fn = np.count_nonzero((pred != k) & (y == k))
        f1.append(2 * tp / (2 * tp + fp + fn))
    out["macro_f1"] = float(np.mean(f1))
    if probabilities is not None:
        proba = np.asarray(probabilities, dtype=np.float64)
        if proba.ndim == 2 and len(proba) == n and bool(np.all((y >= 0) & (y < proba.shape[1]))):
            out["log_loss"] = float(-np.mean(np.log(np.clip(proba[np.arange(n), y], eps, 1 - eps))))
    return out


#: The column of a window's frame that holds a multiclass model's logged class probabilities (a list per row).
PROBABILITIES = "__probabilities__"


def stacked_probabilities(probabilities: Any, n: int | None = None) -> np.ndarray | None:
    """The probabilities of ``n`` rows (default: as many as given) as ``[n, C]``; None unless every row has
    them, all of one width."""
    if probabilities is None:
        return None
    if n is None:
        n = len(probabilities)
    if isinstance(probabilities, np.ndarray) and probabilities.ndim == 2:
        return probabilities.astype(np.float64, copy=False) if len(probabilities) == n else None
    rows = list(probabilities)
    if len(rows) != n or n == 0 or any(r is None or not hasattr(r, "__len__") for r in rows):
        return None
    widths = {len(r) for r in rows}
    return np.asarray([np.asarray(r, dtype=np.float64) for r in rows]) if len(widths) == 1 else None


def _multiclass(y: np.ndarray, p: np.ndarray, probabilities: Any, classes: Sequence[float],
                names: Sequence[str]) -> dict[str, dict[str, Any]]:
    n = len(y)
    idx = class_indices(y, classes)
    stray = int(np.count_nonzero(idx < 0))
    if stray:
        expects = f"one of the classes {', '.join(f'{c:g}' for c in classes)}" if len(classes) else \
            "a class index (a whole number from 0)"
        return {m: {"value": None, "n": n, "status": "no_data",
                    "reason": f"{stray} of {n} labels are not {expects}, as this multiclass model's labels must be"}
                for m in names}
    proba = stacked_probabilities(probabilities, n)
    predicted = np.asarray(p, dtype=np.float64)
    values = multiclass_metrics(idx, proba, predicted if len(predicted) == n else None)
    out = {}
    for m in names:
        value = values.get(m, math.nan)
        if math.isfinite(value):
            out[m] = {"value": float(value), "n": n, "status": "measured", "reason": None}
        elif m == "log_loss" and proba is None:
            out[m] = {"value": None, "n": n, "status": "no_data", "reason": "some of these predictions were logged "
                      "without their class probabilities (a log written before modelmill recorded them)"}
        elif m == "log_loss":
            out[m] = {"value": None, "n": n, "status": "no_data",
                      "reason": "a label names a class beyond the model's logged probabilities"}
        else:
            out[m] = {"value": None, "n": n, "status": "no_data", "reason": "undefined on these labels"}
    return out


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


def task_metrics(task: str, y: np.ndarray, p: np.ndarray, *, threshold: float = 0.5, probabilities: Any = None,
                 classes: Sequence[float] = ()) -> dict[str, dict[str, Any]]:
    """Each of the task's :data:`TASK_METRICS` as ``{"value", "n", "status", "reason"}``.

    ``n`` is the number of labelled predictions behind it. ``status`` is ``measured`` with a finite
    ``value``, or ``no_data`` with ``value`` None and a ``reason``: no labelled predictions, labels that
    are not 0/1 for a binary model, or (AUC) labels of one class only. A binary model's ``accuracy``
    counts ``p >= threshold`` as a positive prediction. A multiclass model's ``p`` is the predicted class's
    index, ``probabilities`` its rows' probabilities per class (``[n, C]`` or a list per row: log loss needs
    every row's) and ``classes`` the class values the version records (its labels; else they are indices).

        >>> m = task_metrics("binary", np.array([0, 1, 1]), np.array([0.2, 0.7, 0.4]))
        >>> m["auc"]["value"], m["accuracy"]["value"], m["accuracy"]["n"]
        (1.0, 0.6666666666666666, 3)
        >>> task_metrics("regression", np.array([]), np.array([]))["mae"]
        {'value': None, 'n': 0, 'status': 'no_data', 'reason': 'no labelled predictions in the window'}
        >>> m = task_metrics("multiclass", np.array([2, 0]), np.array([2, 1]), probabilities=[[0.2, 0.2, 0.6], None])
        >>> m["accuracy"]["value"], m["log_loss"]["status"]
        (0.5, 'no_data')
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
    if task == "multiclass":
        return _multiclass(y, p, probabilities, classes, names)
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
                 threshold: float = 0.5, clock: str = "wall") -> None:
        """``clock``: which time the windows are over (:class:`~modelmill.store.feedback.Feedback`)."""
        self.project = project
        self.predictions_table = predictions_table
        self.labels_table = labels_table
        self.threshold = threshold
        self.clock = clock

    def __repr__(self) -> str:
        return f"PerformanceMonitor({self.project!r}, predictions_table={self.predictions_table!r})"

    @property
    def feedback(self) -> Feedback:
        return Feedback(self.project.offline, predictions=self.predictions_table, labels=self.labels_table,
                        clock=self.clock)

    def joined(self, *, start: dt.datetime | None = None, end: dt.datetime | None = None,
               model: str | None = None) -> pa.Table:
        """Predictions that have a label: model, version, variant, ts, output, label (latest per request)."""
        return self.feedback.labelled(model=model, start=start, end=end)

    def rolling(self, *, window: str | float = "1h", start: dt.datetime | None = None,
                end: dt.datetime | None = None, model: str | None = None,
                by: Sequence[str] = ("model", "version", "variant")) -> list[dict[str, Any]]:
        """One row per group and time bucket of ``window``: the group, ``bucket`` (UTC start, on the monitor's
        clock: when answered, or under the event clock the event time the features were judged at) and the
        metrics."""
        seconds = parse_duration(window)
        table = self.joined(start=start, end=end, model=model)
        return _grouped(table, by, seconds, self.threshold, self._classes)

    def summary(self, *, start: dt.datetime | None = None, end: dt.datetime | None = None,
                model: str | None = None, by: Sequence[str] = ("model", "version", "variant")) -> list[dict[str, Any]]:
        """Metrics per group over the whole span."""
        table = self.joined(start=start, end=end, model=model)
        return _grouped(table, by, None, self.threshold, self._classes)

    def _classes(self, model: str, version: int) -> tuple[float, ...]:
        """The class values a multiclass version records (its labels), or () where they are class indices."""
        from modelmill.errors import ModelmillError
        from modelmill.registry import Registry  # late: the registry makes profiles through monitoring
        from modelmill.store.feedback import label_task

        try:
            return label_task(Registry(self.project).get(model, version)).classes
        except ModelmillError:  # logged under a name the registry does not know, or an unreadable record
            return ()

    def latency(self, *, window: str | float = "1h", start: dt.datetime | None = None,
                end: dt.datetime | None = None, model: str | None = None) -> list[dict[str, Any]]:
        """p50/p95/p99 latency (ms) and request count per model, version, variant and time bucket."""
        return self.feedback.latency(bucket_s=int(parse_duration(window)), start=start, end=end, model=model)


def _grouped(table: pa.Table, by: Sequence[str], seconds: float | None, threshold: float,
             classes_of: Any = None) -> list[dict[str, Any]]:
    """Metrics per group (and bucket): a binary model's :func:`classification_metrics`, or a multiclass
    model's :func:`multiclass_metrics` where the group's rows carry class probabilities."""
    if table.num_rows == 0:
        return []
    for key in by:
        if key not in table.column_names:
            raise InputError("by", f"no column {key!r} in the prediction log", key)
    frame = table.to_pandas()
    keys = list(by)
    if seconds is not None:
        ts = frame["at"] if "at" in frame else frame["ts"]  # the buckets are on the reader's clock
        epoch = ts.astype("int64") // 10 ** _ts_exponent(ts)
        frame["bucket"] = (epoch // int(seconds) * int(seconds)).astype("int64")
        keys.append("bucket")
    probs_column = frame.get("probabilities")
    if probs_column is None or not probs_column.notna().any():
        fast = _binary_grouped(frame, keys, threshold)
        if fast is not None:
            return fast
    rows = []
    for group, part in frame.groupby(keys, sort=True, dropna=False):
        row = _group_row(keys, group)
        probs = part.get("probabilities")
        if probs is not None and probs.notna().any():
            classes = classes_of(row["model"], int(row["version"])) if classes_of is not None and {
                "model", "version"} <= row.keys() else ()
            y = class_indices(part["label"].to_numpy(), classes)
            proba = stacked_probabilities(probs.to_numpy(), len(part))
            ok = y >= 0
            row.update(multiclass_metrics(y[ok], proba[ok] if proba is not None else None,
                                          part["output"].to_numpy()[ok]))
            row["n_unknown_class"] = int(np.count_nonzero(~ok))
        else:
            row.update(classification_metrics(part["label"].to_numpy(), part["output"].to_numpy(),
                                              threshold=threshold))
        rows.append(row)
    return rows


def _binary_grouped(frame: Any, keys: list[str], threshold: float, bins: int = 10) -> list[dict[str, Any]] | None:
    """:func:`classification_metrics` of every group of a binary log at once: grouped sums and one grouped
    rank, instead of one call per group (661 groups of the demo's monitoring page: 830 → ~60 ms). None
    where an output or label is not a number (the per-group path then says what it says)."""
    y = frame["label"].to_numpy(dtype=np.float64, na_value=np.nan)
    p = frame["output"].to_numpy(dtype=np.float64, na_value=np.nan)
    if not (np.isfinite(y).all() and np.isfinite(p).all()):
        return None
    grouped = frame.groupby(keys, sort=True, dropna=False)
    g = grouped.ngroup().to_numpy()
    sizes = grouped.size()
    n_groups = len(sizes)

    def total(weights: np.ndarray) -> np.ndarray:
        return np.bincount(g, weights=weights, minlength=n_groups)

    n = total(np.ones_like(y))
    pos, pred = y == 1, p >= threshold
    n_pos = total(pos.astype(np.float64))
    n_neg = n - n_pos
    n_pred = total(pred.astype(np.float64))
    tp = total((pred & pos).astype(np.float64))
    correct = total((pred == pos).astype(np.float64))
    # ties get their average rank within the group: the Mann-Whitney form of the AUC, as classification_metrics
    ranks = grouped["output"].rank(method="average").to_numpy(dtype=np.float64)
    rank_pos = total(np.where(pos, ranks, 0.0))
    idx = g * bins + np.clip((p * bins).astype(np.int64), 0, bins - 1)
    gap = np.abs(np.bincount(idx, weights=p, minlength=n_groups * bins)
                 - np.bincount(idx, weights=y, minlength=n_groups * bins)).reshape(n_groups, bins).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        metrics = {
            "n": n,
            "positive_rate": total(y) / n,
            "mean_prediction": total(p) / n,
            "accuracy": correct / n,
            "precision": np.where(n_pred > 0, tp / n_pred, np.nan),
            "recall": np.where(n_pos > 0, tp / n_pos, np.nan),
            "auc": np.where((n_pos > 0) & (n_neg > 0), (rank_pos - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg), np.nan),
            "log_loss": total(log_losses(y, p)) / n,
            "brier": total((p - y) ** 2) / n,
            "calibration_error": gap / n,
        }
    return [_group_row(keys, group) | {name: float(column[i]) for name, column in metrics.items()}
            for i, group in enumerate(sizes.index)]


def _group_row(keys: Sequence[str], group: Any) -> dict[str, Any]:
    """A group's key of ``frame.groupby(keys)`` as a row's first fields (``bucket`` as a UTC datetime)."""
    values = group if isinstance(group, tuple) else (group,)
    row: dict[str, Any] = {k: (v.item() if hasattr(v, "item") else v) for k, v in zip(keys, values, strict=True)}
    if "bucket" in row:
        row["bucket"] = dt.datetime.fromtimestamp(row["bucket"], tz=dt.UTC)
    return row


def _ts_exponent(ts: Any) -> int:
    unit = getattr(ts.dtype, "unit", "us")
    return {"s": 0, "ms": 3, "us": 6, "ns": 9}.get(unit, 6)
