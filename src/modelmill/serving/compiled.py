"""Compiled fast paths: linear scikit-learn models as one numpy expression.

scikit-learn spends hundreds of microseconds validating a one-row input
before a 20-term dot product; for a served model that is most of the request.
For models whose math is a few numpy operations (a logistic or linear
regression, optionally after a ``StandardScaler`` in a ``Pipeline``) the
server evaluates those operations itself. A compiled function is used only
after it has matched the model's own ``predict`` on probe rows; anything
else keeps the model's ``predict``.

    >>> import numpy as np
    >>> from sklearn.linear_model import LogisticRegression
    >>> X = np.array([[0.0], [1.0], [2.0], [3.0]]); y = np.array([0, 0, 1, 1])
    >>> lr = LogisticRegression().fit(X, y)
    >>> fn = compile_linear(lr)
    >>> bool(np.allclose(fn(X), lr.predict_proba(X)[:, 1], rtol=1e-12))
    True
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["compile_linear", "fast_predict"]

Predict = Callable[[np.ndarray], np.ndarray]
_REGRESSORS = {"LinearRegression", "Ridge", "Lasso", "ElasticNet", "SGDRegressor", "LinearSVR", "HuberRegressor"}


def _expit(z: np.ndarray) -> np.ndarray:
    return np.asarray(_scipy_expit()(z), dtype=np.float64)


@functools.cache
def _scipy_expit() -> Callable[[np.ndarray], np.ndarray]:
    from scipy.special import expit  # the same function scikit-learn uses, so results match exactly

    return expit  # type: ignore[no-any-return]


def compile_linear(model: Any) -> Predict | None:
    """A numpy function equal to the served score of ``model``, or None when it is not a plain linear model."""
    steps: list[Any] = []
    est = model
    if type(model).__name__ == "Pipeline":
        *pre, (_, est) = model.steps
        steps = [s for _, s in pre]
    transforms: list[Callable[[np.ndarray], np.ndarray]] = []
    for step in steps:
        if type(step).__name__ != "StandardScaler":
            return None
        mean = getattr(step, "mean_", None) if step.with_mean else None
        scale = getattr(step, "scale_", None) if step.with_std else None
        transforms.append(_scaler(mean, scale))
    name = type(est).__name__
    coef = getattr(est, "coef_", None)
    intercept = getattr(est, "intercept_", 0.0)
    if coef is None:
        return None
    coef = np.asarray(coef, dtype=np.float64)
    if name == "LogisticRegression" and len(getattr(est, "classes_", ())) == 2 and coef.shape[0] == 1:
        w = np.ascontiguousarray(coef.T)
        b = np.asarray(intercept, dtype=np.float64)

        def logistic(X: np.ndarray) -> np.ndarray:
            for t in transforms:
                X = t(X)
            return _expit((X @ w + b).ravel())

        return logistic
    if name in _REGRESSORS and coef.ndim == 1:
        w1 = coef
        b1 = float(np.asarray(intercept, dtype=np.float64).reshape(-1)[0]) if np.size(intercept) else 0.0

        def linear(X: np.ndarray) -> np.ndarray:
            for t in transforms:
                X = t(X)
            return np.asarray(X @ w1 + b1, dtype=np.float64)

        return linear
    return None


def _scaler(mean: np.ndarray | None, scale: np.ndarray | None) -> Callable[[np.ndarray], np.ndarray]:
    def transform(X: np.ndarray) -> np.ndarray:
        if mean is not None:
            X = X - mean
        if scale is not None:
            X = X / scale
        return X

    return transform


def fast_predict(handle: Any, n_features: int) -> Predict | None:
    """The compiled form of a loaded model (its ``raw`` object), checked against its ``predict``."""
    raw = getattr(handle, "raw", None)
    if raw is None:
        return None
    try:
        fn = compile_linear(raw)
        if fn is None:
            return None
        probe = np.random.default_rng(0).normal(scale=3.0, size=(32, n_features))
        if not np.allclose(fn(probe), np.asarray(handle.predict(probe), dtype=np.float64), rtol=1e-9, atol=1e-12):
            return None
        return fn
    except Exception:  # an unexpected model shape: keep the model's own predict
        return None
