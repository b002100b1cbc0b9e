"""Scoring and timing shared by the gate and the optimisations (ONNX, INT8, pruning, distillation).

    >>> import numpy as np
    >>> y = np.array([0, 0, 1, 1]); p = np.array([0.1, 0.4, 0.35, 0.8])
    >>> round(score("auc", y, p), 2)
    0.75
    >>> METRICS["logloss"].higher_is_better
    False
    >>> round(score("calibration_error", y, p), 2)  # expected calibration error, 10 equal-width bins
    0.34
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from modelmill.errors import InputError

__all__ = ["METRICS", "PROBABILITY_METRICS", "Comparison", "Latency", "Metric", "calibration_error", "compare",
           "measure_latency", "score"]


@dataclasses.dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool
    fn: Callable[[np.ndarray, np.ndarray], float]


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if len(np.unique(y)) < 2:
        raise InputError("label", "AUC needs both classes among the labels", f"only {np.unique(y).tolist()}")
    return float(roc_auc_score(y, p))


def _logloss(y: np.ndarray, p: np.ndarray) -> float:
    q = np.clip(p, 1e-15, 1 - 1e-15)
    return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))


def calibration_error(y: np.ndarray, p: np.ndarray) -> float:
    """Expected calibration error of probabilities ``p``: the monitoring's own measure
    (:func:`~modelmill.monitoring.performance.classification_metrics`), so that the gate and the monitor
    agree; NaN when a prediction is not a probability (outside [0, 1], or not finite)."""
    from modelmill.monitoring.performance import classification_metrics

    p = np.asarray(p, dtype=np.float64)
    if not len(p) or not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1:
        return float("nan")
    return float(classification_metrics(np.asarray(y, dtype=np.float64), p)["calibration_error"])


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("accuracy", True, lambda y, p: float(np.mean((p >= 0.5) == (y == 1)))),
    Metric("auc", True, _auc),
    Metric("brier", False, lambda y, p: float(np.mean((p - y) ** 2))),
    Metric("calibration_error", False, calibration_error),
    Metric("logloss", False, _logloss),
    Metric("mae", False, lambda y, p: float(np.mean(np.abs(p - y)))),
    Metric("r2", True, lambda y, p: float(1 - np.sum((y - p) ** 2) / max(np.sum((y - np.mean(y)) ** 2), 1e-300))),
    Metric("rmse", False, lambda y, p: float(np.sqrt(np.mean((p - y) ** 2)))),
)}

#: Metrics of probabilities: undefined (no data) for a model whose outputs are not in [0, 1].
PROBABILITY_METRICS = frozenset({"brier", "calibration_error", "logloss"})


def metric(name: str) -> Metric:
    try:
        return METRICS[name]
    except KeyError:
        raise InputError("metric", f"must be one of {', '.join(sorted(METRICS))}", name) from None


def score(name: str, y: Any, p: Any) -> float:
    """Metric ``name`` of predictions ``p`` against labels ``y``."""
    return metric(name).fn(np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Latency:
    """Median milliseconds for one row and for a batch of 1,000 rows."""

    per_row_ms: float
    per_1000_ms: float

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def measure_latency(predict: Callable[[np.ndarray], Any], X: np.ndarray, *, single: int = 200, batches: int = 10,
                    budget_s: float = 1.5) -> Latency:
    """Time ``predict`` on single rows and on 1,000-row batches; bounded by ``budget_s`` per kind."""
    X = np.asarray(X)
    batch = X[np.arange(1000) % len(X)]
    rows = [X[i % len(X)].reshape(1, -1) for i in range(single)]
    predict(batch)  # warm up: lazy initialisation is not latency
    predict(rows[0])
    return Latency(per_row_ms=_median_ms(predict, rows, budget_s),
                   per_1000_ms=_median_ms(predict, [batch] * batches, budget_s))


def _median_ms(predict: Callable[[np.ndarray], Any], inputs: list[np.ndarray], budget_s: float) -> float:
    samples = []
    deadline = time.perf_counter() + budget_s
    for x in inputs:
        t0 = time.perf_counter()
        predict(x)
        samples.append(time.perf_counter() - t0)
        if time.perf_counter() > deadline and len(samples) >= 3:
            break
    return float(np.median(samples) * 1000)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Comparison:
    """An optimised variant measured against its original on the same rows."""

    label: str
    metric: str
    before: float
    after: float
    latency_before: Latency
    latency_after: Latency
    size_before: int | None = None
    size_after: int | None = None
    max_drop: float | None = None
    accepted: bool = True
    reason: str = ""
    version: Any = None  # the registered ModelVersion when the variant was accepted and registered

    @property
    def change(self) -> float:
        """after - before (negative is worse for AUC)."""
        return self.after - self.before

    @property
    def speedup_row(self) -> float:
        return self.latency_before.per_row_ms / max(self.latency_after.per_row_ms, 1e-9)

    @property
    def speedup_1000(self) -> float:
        return self.latency_before.per_1000_ms / max(self.latency_after.per_1000_ms, 1e-9)

    def with_version(self, version: Any) -> Comparison:
        return dataclasses.replace(self, version=version)

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label, "metric": self.metric, "before": self.before, "after": self.after,
            "change": self.change, "max_drop": self.max_drop, "accepted": self.accepted, "reason": self.reason,
            "latency_before": self.latency_before.to_dict(), "latency_after": self.latency_after.to_dict(),
            "speedup_row": self.speedup_row, "speedup_1000": self.speedup_1000,
            "size_before": self.size_before, "size_after": self.size_after,
            "version": None if self.version is None else self.version.ref,
        }


def compare(label: str, original: Callable[[np.ndarray], Any], variant: Callable[[np.ndarray], Any], X: Any, y: Any,
            *, metric_name: str = "auc", max_drop: float | None = None, sizes: tuple[int | None, int | None] = (None, None),
            timing: Mapping[str, Any] | None = None) -> Comparison:
    """Score and time ``variant`` against ``original`` on ``X, y``.

    With ``max_drop`` the variant is rejected when its metric is worse than the original's
    by more than ``max_drop`` (lower for AUC, higher for a loss).
    """
    X = np.asarray(X)
    m = metric(metric_name)
    before = m.fn(np.asarray(y, dtype=np.float64), np.asarray(original(X), dtype=np.float64))
    after = m.fn(np.asarray(y, dtype=np.float64), np.asarray(variant(X), dtype=np.float64))
    worse_by = (before - after) if m.higher_is_better else (after - before)
    accepted, reason = True, f"{metric_name} {before:.4f} -> {after:.4f}"
    if max_drop is not None and worse_by > max_drop:
        accepted = False
        reason = (f"{label} rejected: {metric_name} worsened by {worse_by:.4f} ({before:.4f} -> {after:.4f}), "
                  f"more than the allowed {max_drop:.4f}")
    elif max_drop is not None:
        reason = f"{label} accepted: {reason}, within the allowed {max_drop:.4f}"
    kw = dict(timing or {})
    return Comparison(label=label, metric=metric_name, before=before, after=after,
                      latency_before=measure_latency(original, X, **kw), latency_after=measure_latency(variant, X, **kw),
                      size_before=sizes[0], size_after=sizes[1], max_drop=max_drop, accepted=accepted, reason=reason)
