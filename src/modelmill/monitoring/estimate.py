"""Performance before the labels arrive: confidence-based estimation of a binary classifier's metrics.

A calibrated classifier's probability ``p`` *is* the chance that the label is 1. So before any label has
arrived, a window's predicted probabilities alone say what its accuracy, AUC and log loss will be once the
labels are in (the idea of NannyML's CBPE; this is modelmill's own code):

- **accuracy**: a prediction ``p >= threshold`` is right with probability ``p``, one below with ``1 - p``;
  the expected accuracy is the mean of those;
- **log loss**: the expected log loss of a row is the binary entropy of its ``p``; the window's is their mean;
- **AUC**: no closed form; labels are drawn ``y ~ Bernoulli(p)`` ``samples`` times (a fixed seed: the same
  window gives the same estimate) and each draw's AUC computed exactly (Mann-Whitney, ties averaged).

The same draws give each metric's **interval**: the central ``level`` share of the metric's values over the
draws, that is, where the realised metric of this very window should fall, if the model is calibrated.

**Calibration is the whole assumption.** An over-confident model (probabilities too close to 0 and 1) is
estimated too good; an estimate says nothing a calibrated model would not. So an :class:`Estimate` carries
the reference's calibration error (the expected calibration error measured on labelled data, e.g. the
version's holdout) when it is known, and a reader should trust the estimate no more than that error allows.
Drift the model has not seen breaks calibration too: the estimate is a first signal, the realised metric the
verdict once labels come.

    >>> import numpy as np
    >>> est = estimate(np.array([0.1, 0.2, 0.8, 0.9, 0.7, 0.3]), samples=500)
    >>> round(est.metrics["accuracy"].value, 4), round(est.metrics["log_loss"].value, 4)
    (0.8, 0.4788)
    >>> est.metrics["auc"].low <= est.metrics["auc"].value <= est.metrics["auc"].high
    True
    >>> estimate(np.array([])).status, estimate(np.array([])).reason
    ('no_data', 'no predictions in the window')
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import stats

from modelmill.errors import InputError

__all__ = ["ESTIMATED_METRICS", "Estimate", "EstimatedMetric", "estimate", "expected_log_losses", "is_worse",
           "recorded"]

#: The metrics estimated, and which way is better (True: higher).
ESTIMATED_METRICS: dict[str, bool] = {"accuracy": True, "auc": True, "log_loss": False}
_EPS = float(np.finfo(np.float64).eps)  # the clip of modelmill.monitoring.performance.log_losses
_CELLS = 4_000_000  # label draws held in memory at once (rows x draws): about 4 MB of booleans


@dataclasses.dataclass(frozen=True)
class EstimatedMetric:
    """One metric's estimate and the interval where the realised metric should fall (None: undefined)."""

    value: float | None
    low: float | None
    high: float | None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Estimate:
    """A window's estimated metrics: ``status`` ``estimated``, or ``no_data`` with a ``reason``."""

    n: int
    status: str
    reason: str | None = None
    metrics: dict[str, EstimatedMetric] = dataclasses.field(default_factory=dict)
    level: float = 0.9
    samples: int = 0
    threshold: float = 0.5
    calibration_error: float | None = None

    def value(self, metric: str) -> float | None:
        """The estimate of ``metric`` (None when there is none)."""
        m = self.metrics.get(metric)
        return None if m is None else m.value

    def as_dict(self) -> dict[str, Any]:
        return {"n": self.n, "status": self.status, "reason": self.reason, "level": self.level,
                "samples": self.samples, "threshold": self.threshold, "calibration_error": self.calibration_error,
                "metrics": {k: m.as_dict() for k, m in self.metrics.items()}}


def expected_log_losses(p: NDArray[np.float64], *, eps: float = _EPS) -> NDArray[np.float64]:
    """Each row's expected log loss under its own probability: the binary entropy of ``p`` (clipped to
    [eps, 1 - eps], as the realised log loss is).

        >>> expected_log_losses(np.array([0.5, 0.0])).round(4).tolist()
        [0.6931, 0.0]
    """
    q = np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)
    return -(q * np.log(q) + (1 - q) * np.log(1 - q))


def estimate(p: NDArray[np.float64], *, threshold: float = 0.5, samples: int = 200, level: float = 0.9,
             seed: int = 0, calibration_error: float | None = None) -> Estimate:
    """Estimated accuracy, AUC and log loss of the probabilities ``p`` of one window (see the module).

    ``samples`` label draws give the AUC and every interval (the central ``level`` share of the draws);
    ``seed`` fixes them. Outputs that are not probabilities (outside [0, 1], or not finite) are no data:
    a regression model's outputs have no such estimate.
    """
    if samples < 2:
        raise InputError("samples", "need at least 2 label draws for an interval", samples)
    if not 0 < level < 1:
        raise InputError("level", "must lie strictly between 0 and 1", level)
    if not 0 < threshold < 1:
        raise InputError("threshold", "must lie strictly between 0 and 1", threshold)
    # sorted: the estimate is a function of the window's probabilities, not of the order its rows were read in
    # (a fleet's hosts write the log in files of their own, so one window's rows come back in any order)
    p = np.sort(np.asarray(p, dtype=np.float64).ravel())
    n = int(p.size)
    common: dict[str, Any] = {"n": n, "level": level, "samples": samples, "threshold": threshold,
                              "calibration_error": calibration_error}
    if n == 0:
        return Estimate(status="no_data", reason="no predictions in the window", **common)
    odd = int(np.count_nonzero(~np.isfinite(p) | (p < 0) | (p > 1)))
    if odd:
        return Estimate(status="no_data", reason=f"{odd} of {n} outputs are not probabilities in [0, 1]", **common)
    pred = p >= threshold
    q = np.clip(p, _EPS, 1 - _EPS)
    log_neg = np.log(1 - q)
    logit = np.log(q) - log_neg
    sign = np.where(pred, 1.0, -1.0)
    ranks = stats.rankdata(p)
    acc, loss, auc = (np.empty(samples) for _ in range(3))
    rng = np.random.default_rng(seed)
    block = max(1, _CELLS // n)
    for start in range(0, samples, block):
        stop = min(samples, start + block)
        y = (rng.random((stop - start, n)) < p).astype(np.float64)
        # Every metric is linear in the labels but the AUC's normalisation: one product per metric and draw.
        acc[start:stop] = (np.count_nonzero(~pred) + y @ sign) / n
        loss[start:stop] = -(log_neg.sum() + y @ logit) / n
        n_pos = y.sum(axis=1)
        n_neg = n - n_pos
        with np.errstate(divide="ignore", invalid="ignore"):
            auc[start:stop] = np.where((n_pos > 0) & (n_neg > 0),
                                       (y @ ranks - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg), np.nan)
    tail = (1 - level) / 2
    metrics = {
        "accuracy": _metric(float(np.mean(np.where(pred, p, 1 - p))), acc, tail),
        "auc": _metric(None, auc, tail),
        "log_loss": _metric(float(np.mean(expected_log_losses(p))), loss, tail),
    }
    return Estimate(status="estimated", metrics=metrics, **common)


def _metric(exact: float | None, draws: NDArray[np.float64], tail: float) -> EstimatedMetric:
    """The metric's expectation (``exact`` where known, else the mean of the draws) and its draws' interval."""
    defined = draws[np.isfinite(draws)]
    if defined.size < 2:  # e.g. the AUC of a window whose every draw has one class only
        return EstimatedMetric(None, None, None)
    low, high = (float(v) for v in np.quantile(defined, [tail, 1 - tail]))
    value = exact if exact is not None else float(defined.mean())
    return EstimatedMetric(value, min(low, value), max(high, value))


def recorded(metrics: Any, metric: str) -> Any:
    """``metric`` as a version records it: the gate spells the log loss ``logloss``, the trainers ``log_loss``.

        >>> recorded({"logloss": 0.3}, "log_loss"), recorded({"auc": 0.8}, "log_loss")
        (0.3, None)
    """
    found = dict(metrics or {})
    for name in (metric, *_SPELLINGS.get(metric, ())):
        if name in found:
            return found[name]
    return None


_SPELLINGS = {"log_loss": ("logloss",), "logloss": ("log_loss",)}


def is_worse(metric: str, value: float, baseline: float, margin: float) -> bool:
    """Whether ``value`` of ``metric`` is worse than ``baseline`` by more than ``margin`` (log loss: above)."""
    if math.isnan(value):
        return False
    if ESTIMATED_METRICS.get(metric, True):
        return value < baseline - margin
    return value > baseline + margin
