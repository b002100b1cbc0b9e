"""Probability calibration of a fitted binary classifier, on rows it did not train on.

A boosted model can rank well (high AUC) and still be off in its probabilities: a candidate
retrained on a window whose positive rate differs from the next month's, or one that overfits, is
then rolled back by a loss guardrail although its ranking is fine. :func:`calibrate` fits a map
from the model's scores to probabilities on a held-out calibration slice: ``isotonic`` (a monotone
step function: flexible, needs a few thousand rows) or ``sigmoid`` (Platt scaling: two parameters,
keeps the ranking, so the AUC). The result is a scikit-learn estimator (``CalibratedClassifierCV``
over the frozen model), registered with the ``sklearn`` flavour and served like any other.

    >>> import numpy as np
    >>> from sklearn.linear_model import LogisticRegression
    >>> from modelmill.registry.evaluate import calibration_error
    >>> rng = np.random.default_rng(0); X = rng.normal(size=(2000, 1))
    >>> y = (rng.random(2000) < 1 / (1 + np.exp(-X[:, 0]))).astype(int)
    >>> shy = LogisticRegression().fit(X * 4, y)  # fitted on X * 4, called on X: probabilities too timid
    >>> def ece(p): return calibration_error(y[:1000], p)
    >>> raw = shy.predict_proba(X[:1000])[:, 1]
    >>> fixed = calibrate(shy, X[1000:], y[1000:], method="sigmoid").predict_proba(X[:1000])[:, 1]
    >>> bool(ece(fixed) < ece(raw) / 2)
    True
"""

from __future__ import annotations

from typing import Any

import numpy as np

from modelmill.errors import InputError

__all__ = ["CALIBRATIONS", "CALIBRATION_SPLITS", "calibrate", "calibration_slice", "check_method"]

#: What ``calibrate=`` (the trainers, the pipeline steps, ``modelmill train --calibrate``) accepts.
CALIBRATIONS = ("none", "isotonic", "sigmoid")
#: Which rows of the training part calibrate: a stratified random share, or its last rows (time-ordered
#: data: the probabilities are fitted to the most recent rows, the ones nearest the rows to be served).
CALIBRATION_SPLITS = ("random", "latest")


def check_method(method: Any, field: str = "calibrate") -> str:
    """``method`` when it is one of :data:`CALIBRATIONS`, else an :class:`InputError` naming ``field``."""
    if not isinstance(method, str) or method not in CALIBRATIONS:
        raise InputError(field, f"must be one of {', '.join(CALIBRATIONS)}", method)
    return method


def calibration_slice(X: np.ndarray, y: np.ndarray, *, fraction: float, split: str = "random", seed: int = 0
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(X_fit, y_fit, X_cal, y_cal)``: ``fraction`` of the rows kept out for calibration.

        >>> X = np.arange(10.0).reshape(-1, 1); y = np.array([0, 1] * 5)
        >>> calibration_slice(X, y, fraction=0.2, split="latest")[2].ravel().tolist()
        [8.0, 9.0]
    """
    if not 0.0 < fraction < 1.0:
        raise InputError("calibration_fraction", "must be between 0 and 1", fraction)
    if split not in CALIBRATION_SPLITS:
        raise InputError("calibration_split", f"must be one of {', '.join(CALIBRATION_SPLITS)}", split)
    if split == "latest":
        cut = len(y) - max(1, round(len(y) * fraction))
        return X[:cut], y[:cut], X[cut:], y[cut:]
    from modelmill.training.trainers.base import split_train_valid

    return split_train_valid(X, y, valid_fraction=fraction, seed=seed)


def calibrate(model: Any, X_cal: np.ndarray, y_cal: np.ndarray, *, method: str) -> Any:
    """``model`` (fitted, with ``predict_proba``) with its probabilities mapped by ``method``, fitted on
    ``X_cal, y_cal`` only; the model itself is not refitted. ``method="none"`` returns ``model``."""
    method = check_method(method)
    if method == "none":
        return model
    if not hasattr(model, "predict_proba"):
        raise InputError("calibrate", "needs a classifier with predict_proba", type(model).__name__)
    y_cal = np.asarray(y_cal)
    positives = int(np.count_nonzero(y_cal == 1))
    if positives == 0 or positives == len(y_cal):
        raise InputError("calibrate", "the calibration slice needs rows of both classes",
                         {"rows": len(y_cal), "positives": positives})
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.frozen import FrozenEstimator

    return CalibratedClassifierCV(FrozenEstimator(model), method=method).fit(np.asarray(X_cal), y_cal)

