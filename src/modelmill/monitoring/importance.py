"""Permutation importance of a model's features, stored with its reference profile to weight drift.

A feature matters to a model as much as its predictions get worse when the
feature's values are shuffled among the rows (Breiman's permutation importance).
With labels, worse is the loss: log loss for a binary model's probabilities,
squared error otherwise. Without labels (a training sample the label was not
kept with), it is how far the outputs move: the mean absolute change of the
prediction, a label-free measure of how much the model leans on the feature.
Either way the importances are normalised to sum to 1 (negative ones, noise,
count as 0), and :attr:`~modelmill.monitoring.drift.DriftReport.importance_score`
weights each drifted feature by its share.

    >>> import numpy as np, pandas as pd
    >>> rng = np.random.default_rng(0)
    >>> X = pd.DataFrame({"a": rng.normal(size=500), "b": rng.normal(size=500)})
    >>> imp = permutation_importance(lambda x: 3 * x[:, 0] + 0.1 * x[:, 1], X)
    >>> imp.method, imp.values["a"] > 0.9 > imp.values["b"]
    ('output', True)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from modelmill.errors import InputError

__all__ = ["Importance", "permutation_importance"]

#: Rows an importance is measured on at most (a fixed-seed sample): enough to rank features, quick to score.
MAX_ROWS = 2_000
_EPS = 1e-7


@dataclasses.dataclass(frozen=True, kw_only=True)
class Importance:
    """Each feature's share of the model's permutation importance, and how it was measured.

    ``method``: ``log_loss`` or ``squared_error`` (the loss rose, labels known) or ``output`` (the
    predictions moved, no labels); ``n_rows`` the rows it was measured on; ``source`` where they came from.
    """

    values: Mapping[str, float]
    method: str
    n_rows: int
    source: str = ""

    def describe(self) -> str:
        how = {"log_loss": "log-loss increase", "squared_error": "squared-error increase",
               "output": "mean output change (no labels)"}.get(self.method, self.method)
        where = f" of {self.source}" if self.source else ""
        return f"permutation importance ({how}) on {self.n_rows:,} rows{where}"


def permutation_importance(predict: Callable[[np.ndarray], Any], X: pd.DataFrame, y: Any = None, *,
                           repeats: int = 3, seed: int = 0, max_rows: int = MAX_ROWS,
                           source: str = "") -> Importance:
    """Permutation importance of every column of ``X`` for ``predict`` (a float matrix in, outputs out).

    ``y`` (labels, one per row) makes it the loss's increase; without, the outputs' mean absolute change.
    Deterministic for a ``seed``; ``repeats`` shuffles per column, averaged; at most ``max_rows`` rows.
    """
    if len(X) == 0 or X.shape[1] == 0:
        raise InputError("data", "has no rows or no columns to measure importance on")
    rng = np.random.default_rng(seed)
    rows = np.arange(len(X))
    if len(X) > max_rows:
        rows = np.sort(rng.choice(len(X), size=max_rows, replace=False))
    matrix = X.iloc[rows].to_numpy(dtype=np.float64)
    labels = None if y is None else np.asarray(y, dtype=np.float64)[rows]
    base_out = _outputs(predict, matrix)
    method = "output"
    if labels is not None:
        binary = bool(np.isin(labels, (0.0, 1.0)).all() and ((base_out >= 0) & (base_out <= 1)).all())
        method = "log_loss" if binary else "squared_error"
    base = _loss(method, labels, base_out, base_out)
    raw: dict[str, float] = {}
    for j, name in enumerate(X.columns):
        rises = []
        for _ in range(repeats):
            shuffled = matrix.copy()
            shuffled[:, j] = shuffled[rng.permutation(len(shuffled)), j]
            rises.append(_loss(method, labels, _outputs(predict, shuffled), base_out) - base)
        raw[str(name)] = max(float(np.mean(rises)), 0.0)
    total = sum(raw.values())
    values = {k: (v / total if total > 0 else 0.0) for k, v in raw.items()}
    return Importance(values=values, method=method, n_rows=len(rows), source=source)


def _outputs(predict: Callable[[np.ndarray], Any], matrix: np.ndarray) -> np.ndarray:
    out = np.asarray(predict(matrix), dtype=np.float64)
    if out.ndim == 2 and out.shape[1] == 2:  # predict_proba's two columns: the positive class
        out = out[:, 1]
    return out.reshape(len(matrix), -1).mean(axis=1) if out.ndim > 1 else out


def _loss(method: str, y: np.ndarray | None, out: np.ndarray, base_out: np.ndarray) -> float:
    if method == "output":
        return float(np.mean(np.abs(out - base_out)))
    assert y is not None
    if method == "log_loss":
        p = np.clip(out, _EPS, 1 - _EPS)
        return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    return float(np.mean((out - y) ** 2))
