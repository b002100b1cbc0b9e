"""Metrics from logs, reduced to one :class:`~modelmill.experiments.stats.Sample` per variant.

Three kinds:

- ``proportion`` — a 0/1 value per unit (click-through, conversion);
- ``mean`` — a number per unit (revenue per user, engagement);
- ``ratio`` — ``sum(numerator) / sum(denominator)`` over units whose rows are
  not independent (clicks per impression with users randomised), with the
  variance from the delta method.

    >>> import pandas as pd
    >>> df = pd.DataFrame({"v": ["A", "A", "B", "B"], "u": ["x", "y", "z", "z"], "click": [1, 0, 1, 1]})
    >>> {s.name: (s.n, s.mean) for s in summarize(df, variant_column="v", metric="click")}
    {'A': (2, 0.5), 'B': (2, 1.0)}
    >>> {s.name: (s.n, s.mean) for s in summarize(df, variant_column="v", metric="click", unit_column="u")}
    {'A': (2, 0.5), 'B': (1, 1.0)}

Every metric has a direction: ``higher`` or ``lower`` is better. Unless told,
a name ending in ``loss``, ``error`` or ``latency`` and the served metrics
``log_loss``, ``brier`` and ``latency_ms`` are lower-is-better, anything else higher:

    >>> direction_of("log_loss"), direction_of("val_error"), direction_of("click"), direction_of("click", "lower")
    ('lower', 'lower', 'higher', 'lower')

An experiment on a served model measures one of :data:`SERVED_METRICS` per request, from the
prediction log joined with the delayed labels (see :func:`served_values`):

- ``output`` and ``latency_ms``: columns of the log;
- ``label``: the label itself; ``conversion``: the same mean under its usual name, for 0/1 labels
  (the conversion rate);
- ``log_loss``, ``brier`` and ``accuracy``: per-request scores of the output (the probability of
  class 1) against a 0/1 label; ``accuracy`` counts ``output >= 0.5`` as predicting 1;
- for a **multiclass** model, ``log_loss`` of the logged probability of the label's class (the log's
  ``probabilities``) and ``accuracy`` of the predicted class (``output``, its index);
- for a **regression** model, ``squared_error`` and ``absolute_error`` of the output against the label
  (lower is better; their means are the MSE and MAE).

    >>> frame = pd.DataFrame({"output": [0.9, 0.4, 0.2], "label": [1.0, 1.0, 0.0]})
    >>> served_values(frame, "accuracy").tolist(), served_values(frame, "conversion").tolist()
    ([1.0, 0.0, 1.0], [1.0, 1.0, 0.0])
    >>> served_values(frame.assign(label=[1.0, 2.4, 0.2]), "squared_error", task="regression").round(4).tolist()
    [0.01, 4.0, 0.0]
    >>> check_served_metric("metric", "auc")
    Traceback (most recent call last):
    ...
    modelmill.errors.InputError: metric: is not measured for a served model; the prediction log gives
    label, conversion, output, accuracy (higher is better) and latency_ms, log_loss, brier (lower is better);
    for a regression model squared_error, absolute_error (lower is better) (got auc)

Which of them fit a model depends on its task (:data:`TASK_SERVED_METRICS`; see :func:`check_task_metric`):

    >>> check_task_metric("primary_metric", "brier", "regression", "price")
    Traceback (most recent call last):
    ...
    modelmill.errors.InputError: primary_metric: does not fit price, a regression model: its per-request
    metrics are label, output, latency_ms, squared_error, absolute_error (got brier)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from modelmill.errors import InputError
from modelmill.experiments.stats import Sample

__all__ = ["DIRECTIONS", "LABELLED_METRICS", "SCORED_METRICS", "SERVED_METRICS", "TASK_SERVED_METRICS",
           "check_served_metric", "check_task_metric", "direction_of", "is_binary", "mean", "proportion", "ratio",
           "served_values", "summarize"]

DIRECTIONS = ("higher", "lower")
# What an experiment on a served model can measure per request, with the direction that is better: columns of
# the prediction log, the joined label (``conversion`` is its mean under the name A/B tests give it), and the
# per-request scores computed from output and label.
SERVED_METRICS: dict[str, str] = {"label": "higher", "conversion": "higher", "output": "higher",
                                  "latency_ms": "lower", "log_loss": "lower", "brier": "lower", "accuracy": "higher",
                                  "squared_error": "lower", "absolute_error": "lower"}
# Served metrics scored from the output against the label: they need both.
SCORED_METRICS = ("log_loss", "brier", "accuracy", "squared_error", "absolute_error")
# The served metrics of any model, and those that fit a model of each task (a model recording no task: all).
ANY_TASK_METRICS = ("label", "output", "latency_ms")
TASK_SERVED_METRICS: dict[str, tuple[str, ...]] = {
    "binary": (*ANY_TASK_METRICS, "conversion", "log_loss", "brier", "accuracy"),
    "multiclass": (*ANY_TASK_METRICS, "log_loss", "accuracy"),
    "regression": (*ANY_TASK_METRICS, "squared_error", "absolute_error"),
}
# Served metrics that need the delayed label (only labelled predictions count).
LABELLED_METRICS = ("label", "conversion", *SCORED_METRICS)
ACCURACY_THRESHOLD = 0.5
_LOWER_SUFFIXES = ("loss", "error", "latency")


def direction_of(metric: str, direction: str | None = None) -> str:
    """``direction`` checked, or the default for ``metric`` (see the module docstring)."""
    if direction is not None:
        if direction not in DIRECTIONS:
            raise InputError("direction", "must be 'higher' or 'lower' (which way is better)", direction)
        return direction
    if metric in SERVED_METRICS:
        return SERVED_METRICS[metric]
    return "lower" if metric.lower().endswith(_LOWER_SUFFIXES) else "higher"


def check_served_metric(field: str, metric: str) -> str:
    """``metric`` when an experiment on a served model can measure it; an :class:`InputError` listing the
    served metrics and their directions otherwise."""
    if metric not in SERVED_METRICS:
        regression = TASK_SERVED_METRICS["regression"][len(ANY_TASK_METRICS):]
        accepted = " and ".join(", ".join(m for m, d in SERVED_METRICS.items() if d == way and m not in regression)
                                + f" ({way} is better)" for way in DIRECTIONS)
        accepted += f"; for a regression model {', '.join(regression)} (lower is better)"
        raise InputError(field, f"is not measured for a served model; the prediction log gives {accepted}", metric)
    return metric


def check_task_metric(field: str, metric: str, task: str | None, model: str = "the model") -> str:
    """``metric`` when it is a served metric that fits a model of ``task`` (:data:`TASK_SERVED_METRICS`;
    ``None``, a model that records no task: any served metric); an :class:`InputError` naming the metrics
    that fit otherwise."""
    check_served_metric(field, metric)
    fits = TASK_SERVED_METRICS.get(task) if task is not None else None
    if fits is not None and metric not in fits:
        raise InputError(field, f"does not fit {model}, a {task} model: its per-request metrics are "
                                f"{', '.join(fits)}", metric)
    return metric


def served_values(frame: pd.DataFrame, metric: str, *, task: str | None = None,
                  classes: Sequence[float] = ()) -> pd.Series:
    """The per-request values of served metric ``metric`` on ``frame`` (the joined log: ``output``,
    ``latency_ms``, and ``label`` for the labelled metrics; ``probabilities`` for a multiclass log loss).

    ``task`` is the model's (``binary``, ``multiclass``, ``regression``, or None when it records none: scored
    as binary) and ``classes`` the class values a multiclass version records (else its labels are class
    indices). A metric that does not fit the task is an :class:`InputError` (:func:`check_task_metric`), as
    is a binary score or ``conversion`` on labels that are not all 0 or 1 (there is no rate or probability
    score to compare), a multiclass score of a label that is not one of the model's classes, or a multiclass
    log loss of a request logged without its class probabilities."""
    check_task_metric("metric", metric, task)
    if metric in ANY_TASK_METRICS:
        return frame[metric]
    y = frame["label"].to_numpy(dtype=np.float64)
    if metric in ("squared_error", "absolute_error"):
        err = frame["output"].to_numpy(dtype=np.float64) - y
        return pd.Series(err ** 2 if metric == "squared_error" else np.abs(err), index=frame.index)
    if task == "multiclass":
        return pd.Series(_multiclass_values(frame, metric, y, classes), index=frame.index)
    if y.size and not is_binary(y):
        bad = y[~np.isin(y, (0.0, 1.0))][0]
        raise InputError("label", f"{metric} needs 0/1 labels (a binary model); use 'label' for the mean "
                                  "of any label", float(bad))
    if metric == "conversion":
        return pd.Series(y, index=frame.index)
    p = frame["output"].to_numpy(dtype=np.float64)
    if metric == "log_loss":
        from modelmill.monitoring import log_losses

        score = log_losses(y, p)
    elif metric == "brier":
        score = (p - y) ** 2
    else:
        score = ((p >= ACCURACY_THRESHOLD) == (y == 1.0)).astype(np.float64)
    return pd.Series(score, index=frame.index)


def _multiclass_values(frame: pd.DataFrame, metric: str, y: np.ndarray, classes: Sequence[float]) -> np.ndarray:
    """A multiclass model's per-request ``log_loss`` (of the logged probability of the label's class, clipped
    as the monitoring's) or ``accuracy`` (the logged predicted index is the label's class)."""
    from modelmill.monitoring.performance import class_indices, stacked_probabilities

    eps = float(np.finfo(np.float64).eps)  # where the monitoring (and scikit-learn) clip log loss

    idx = class_indices(y, classes)
    if (idx < 0).any():
        expects = f"one of its classes {', '.join(f'{c:g}' for c in classes)}" if len(classes) else \
            "a class index (a whole number from 0)"
        raise InputError("label", f"{metric} of a multiclass model needs labels that are {expects}",
                         float(y[idx < 0][0]))
    logged: Any = frame["probabilities"] if "probabilities" in frame.columns else None
    proba = stacked_probabilities(None if logged is None else list(logged), len(frame))
    if proba is not None and (idx >= proba.shape[1]).any():
        raise InputError("label", f"names a class beyond the model's {proba.shape[1]} logged probabilities (a "
                                  "label is a class index, a whole number from 0)", float(y[idx >= proba.shape[1]][0]))
    if metric == "accuracy":
        return (frame["output"].to_numpy(dtype=np.float64) == idx).astype(np.float64)
    if proba is None:
        missing = len(frame) if logged is None else int(sum(not hasattr(p, "__len__") for p in logged))
        raise InputError("probabilities", "log_loss of a multiclass model needs each request's logged class "
                                          f"probabilities; {missing} of {len(frame)} requests lack them")
    return -np.log(np.clip(proba[np.arange(len(idx)), idx], eps, 1 - eps))


def is_binary(values: ArrayLike) -> bool:
    """True when every value is 0 or 1."""
    x = np.asarray(values, dtype=np.float64)
    return bool(x.size) and bool(np.isin(x, (0.0, 1.0)).all())


def proportion(name: str, values: ArrayLike) -> Sample:
    """A 0/1 metric, one value per unit."""
    x = np.asarray(values, dtype=np.float64)
    if not is_binary(x):
        raise InputError(f"{name}.values", "a proportion metric needs only 0/1 values")
    return Sample.from_counts(name, int(x.sum()), int(x.size))


def mean(name: str, values: ArrayLike) -> Sample:
    """A numeric metric, one value per unit."""
    return Sample.from_values(name, values)


def ratio(name: str, numerators: ArrayLike, denominators: ArrayLike) -> Sample:
    """``Σ numerator / Σ denominator`` over units, with the delta-method variance.

    ``Var(R) ≈ (s²_y − 2R·s_xy + R²·s²_x) / (n · x̄²)``; the returned ``variance`` is
    ``n · Var(R)`` so that ``Sample.sem2`` is ``Var(R)`` like any other metric.
    """
    y = np.asarray(numerators, dtype=np.float64)
    x = np.asarray(denominators, dtype=np.float64)
    if y.shape != x.shape or y.ndim != 1 or y.size == 0:
        raise InputError(f"{name}.values", "need one numerator and one denominator per unit")
    if (x < 0).any() or x.sum() <= 0:
        raise InputError(f"{name}.denominator", "must be non-negative with a positive total")
    n = y.size
    r = float(y.sum() / x.sum())
    if n < 2:
        return Sample(name, n, r, 0.0)
    cov = np.cov(y, x, ddof=1)
    var_r = (cov[0, 0] - 2 * r * cov[0, 1] + r * r * cov[1, 1]) / (n * x.mean() ** 2)
    return Sample(name, n, r, float(max(var_r, 0.0) * n))


def summarize(frame: pd.DataFrame, *, variant_column: str, metric: str, unit_column: str | None = None,
              kind: str | None = None) -> list[Sample]:
    """One Sample per variant, in sorted variant order.

    Without ``unit_column`` each row is a unit: a 0/1 metric becomes a
    proportion, anything else a mean (``kind`` forces one). With ``unit_column``
    rows are summed per unit and the metric is the ratio metric
    ``Σ metric / Σ rows`` (delta method); a unit seen in two variants is an input error.
    """
    for col in (variant_column, metric, unit_column):
        if col is not None and col not in frame.columns:
            raise InputError("column", f"not in the input; columns are {', '.join(map(str, frame.columns))}", col)
    values = pd.to_numeric(frame[metric], errors="coerce")
    if values.isna().any():
        bad = frame[metric][values.isna()].iloc[0]
        raise InputError(metric, "must be numeric on every row", bad)
    variants = frame[variant_column].astype(str)
    if unit_column is not None:
        units = frame[unit_column].astype(str)
        per_unit = pd.DataFrame({"variant": variants, "unit": units, "y": values})
        spread = per_unit.groupby("unit")["variant"].nunique()
        if (spread > 1).any():
            raise InputError(unit_column, "a unit appears in more than one variant; assignment must be sticky",
                             spread[spread > 1].index[0])
        grouped = per_unit.groupby(["variant", "unit"], sort=True)["y"].agg(["sum", "count"]).reset_index()
        return [ratio(str(v), g["sum"].to_numpy(), g["count"].to_numpy())
                for v, g in grouped.groupby("variant", sort=True)]
    binary = is_binary(values.to_numpy()) if kind is None else kind == "proportion"
    make = proportion if binary else mean
    return [make(str(v), g.to_numpy()) for v, g in values.groupby(variants, sort=True)]
