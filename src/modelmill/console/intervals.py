"""95% confidence intervals of the delayed-label metrics, from the counts a metrics row carries.

A precision of 1.0 on three labelled rows and one on three thousand are different claims; the
console and the report draw each metric with the interval and the sample size behind it. Rows are
those of :func:`~modelmill.monitoring.performance.classification_metrics` (``n``, ``positive_rate``,
``accuracy``, ``precision``, ``recall``, ``auc``): proportions get a Wilson interval on their own
denominator (accuracy: every row; recall: the positives; precision: the positive predictions), the
AUC Hanley and McNeil's. Other metrics (log loss, calibration) get none, only their ``n``.

    >>> low, high, n = metric_interval("precision", {"n": 3, "positive_rate": 1.0, "precision": 1.0, "recall": 1.0})
    >>> n, round(low, 2), high
    (3, 0.44, 1.0)
    >>> metric_interval("log_loss", {"n": 40, "log_loss": 0.5})
    (None, None, 40)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["auc_interval", "metric_interval", "wilson"]

Z95 = 1.959963984540054


def wilson(p: float, n: float, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``p`` observed on ``n`` trials."""
    if n <= 0:
        return (math.nan, math.nan)
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(max(p * (1 - p) / n + z * z / (4 * n * n), 0.0)) / denom
    return (max(centre - half, 0.0), min(centre + half, 1.0))


def auc_interval(auc: float, n_pos: float, n_neg: float, z: float = Z95) -> tuple[float, float]:
    """Hanley and McNeil's (1982) normal interval of an ROC AUC over ``n_pos`` positives, ``n_neg`` negatives."""
    if n_pos < 1 or n_neg < 1:
        return (math.nan, math.nan)
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc * auc) + (n_neg - 1) * (q2 - auc * auc)) / (n_pos * n_neg)
    half = z * math.sqrt(max(var, 0.0))
    return (max(auc - half, 0.0), min(auc + half, 1.0))


def _number(row: Mapping[str, Any], key: str) -> float | None:
    v = row.get(key)
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def metric_interval(metric: str, row: Mapping[str, Any]) -> tuple[float | None, float | None, int | None]:
    """``(low, high, n)`` of ``row[metric]``: its 95% interval (None when it has none) and the count behind it."""
    total = _number(row, "n")
    value = _number(row, metric)
    if total is None:
        return (None, None, None)
    positives = None if _number(row, "positive_rate") is None else total * float(row["positive_rate"])
    denominator: float | None = None
    if metric == "accuracy":
        denominator = total
    elif metric == "recall":
        denominator = positives
    elif metric == "precision":
        recall = _number(row, "recall")
        if value and recall is not None and positives is not None:
            denominator = round(recall * positives / value)
    if value is None:
        return (None, None, int(denominator if denominator is not None else total))
    if metric == "auc" and positives is not None:
        low, high = auc_interval(value, round(positives), round(total - positives))
        return (None, None, int(total)) if math.isnan(low) else (low, high, int(total))
    if denominator is None:
        return (None, None, int(total))
    low, high = wilson(value, denominator)
    return (None, None, int(denominator)) if math.isnan(low) else (low, high, int(denominator))
