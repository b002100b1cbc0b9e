"""What every trainer shares: the result type, data preparation and the evaluation metrics."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score, log_loss, mean_absolute_error, mean_squared_error, roc_auc_score

from modelmill.errors import InputError
from modelmill.training.tracking import Run

__all__ = ["TASKS", "Classifier", "TrainResult", "evaluate", "evaluate_task", "frame_to_xy", "split_train_valid",
           "task_labels"]

#: What a trainer can learn (``--task``): the label's kind decides the metrics.
TASKS = ("binary", "multiclass", "regression")


class Classifier(Protocol):
    def predict_proba(self, X: np.ndarray) -> np.ndarray: ...


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainResult:
    """A fitted model (with ``predict_proba``), the object to register (``native``) and validation metrics."""

    model: Any
    native: Any  # what Registry.register(..., flavor=flavor) takes: the estimator, or the torch nn.Module
    trainer: str
    flavor: str  # how the registry should store it: "sklearn", "lightgbm", "xgboost", "catboost" or "torch"
    params: dict[str, Any]
    metrics: dict[str, float]
    feature_names: list[str]
    run_id: str | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


def frame_to_xy(df: pd.DataFrame, label: str, features: Sequence[str] | None = None, *, task: str = "binary"
                ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Numeric feature matrix (float64), the labels for ``task`` (binary: 0/1) and the feature names."""
    if label not in df.columns:
        raise InputError("label", f"is not a column; columns are {', '.join(map(str, df.columns))}", label)
    if features is None:
        features = [c for c in df.columns if c != label and pd.api.types.is_numeric_dtype(df[c])]
    else:
        missing = [f for f in features if f not in df.columns]
        if missing:
            raise InputError("features", "are not columns of the data", missing)
    if not features:
        raise InputError("data", "has no numeric feature columns besides the label", list(df.columns))
    X = df[list(features)].to_numpy(dtype=np.float64, na_value=np.nan)
    return X, task_labels(df[label].to_numpy(), task), [str(f) for f in features]


def binary_labels(y: Any) -> np.ndarray:
    arr = np.asarray(y)
    if arr.dtype == bool:
        return arr.astype(np.int64)
    values = np.unique(arr[~pd.isna(arr)]) if arr.dtype == object else np.unique(arr)
    if len(values) != 2 and not (len(values) == 1 and values[0] in (0, 1)):
        raise InputError("label", "must have exactly two classes for a binary classifier",
                         [str(v) for v in values[:5]])
    if set(values.tolist()) <= {0, 1}:
        return arr.astype(np.int64)
    return (arr == values[1]).astype(np.int64)


def task_labels(y: Any, task: str) -> np.ndarray:
    """The label column for ``task``: 0/1 (binary), the class values (multiclass, at least three), floats
    (regression)."""
    if task not in TASKS:
        raise InputError("task", f"must be one of {', '.join(TASKS)}", task)
    if task == "binary":
        return binary_labels(y)
    arr = np.asarray(y)
    if task == "regression":
        try:
            out = arr.astype(np.float64)
        except (TypeError, ValueError):
            raise InputError("label", "must be numeric for task regression", str(arr[:3].tolist())) from None
        if not np.isfinite(out).all():
            raise InputError("label", "must hold no NaN or infinity for task regression")
        return out
    values = np.unique(arr.astype(str) if arr.dtype == object else arr)
    if len(values) < 3:
        raise InputError("label", "must have at least three classes for task multiclass (two: use binary)",
                         [str(v) for v in values])
    return arr.astype(str) if arr.dtype == object else arr


def split_train_valid(X: np.ndarray, y: np.ndarray, *, valid_fraction: float = 0.2, seed: int = 0,
                      task: str = "binary") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A seeded split (validation part last), stratified by class for a classifier."""
    if not 0.0 < valid_fraction < 1.0:
        raise InputError("valid_fraction", "must be between 0 and 1", valid_fraction)
    rng = np.random.default_rng(seed)
    valid = np.zeros(len(y), dtype=bool)
    if task == "regression":
        idx = rng.permutation(len(y))
        valid[idx[: round(len(y) * valid_fraction)]] = True
        return X[~valid], y[~valid], X[valid], y[valid]
    for cls in (np.unique(y) if task == "multiclass" else (0, 1)):
        idx = np.flatnonzero(y == cls)
        rng.shuffle(idx)
        valid[idx[: round(len(idx) * valid_fraction)]] = True
    return X[~valid], y[~valid], X[valid], y[valid]


def evaluate(model: Classifier, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """AUC, log loss and expected calibration error of the positive-class probability."""
    from modelmill.registry.evaluate import calibration_error

    p = np.clip(np.asarray(model.predict_proba(X))[:, 1], 1e-7, 1 - 1e-7)
    out = {"log_loss": float(log_loss(y, p, labels=[0, 1]))}
    out["auc"] = float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")
    out["calibration_error"] = calibration_error(y, p)
    return out


def evaluate_task(model: Any, X: np.ndarray, y: np.ndarray, task: str) -> dict[str, float]:
    """The validation metrics of ``task``: AUC and log loss (binary), log loss, macro F1 and accuracy
    (multiclass), RMSE and MAE (regression)."""
    if task == "binary":
        return evaluate(model, X, y)
    if task == "regression":
        pred = np.asarray(model.predict(X), dtype=np.float64)
        return {"rmse": float(np.sqrt(mean_squared_error(y, pred))), "mae": float(mean_absolute_error(y, pred))}
    proba = np.clip(np.asarray(model.predict_proba(X), dtype=np.float64), 1e-7, 1.0)
    classes = list(model.classes_)
    # the classes' own dtype: scikit-learn cannot tell the target type of numbers held as objects
    pred = np.asarray(classes)[np.argmax(proba, axis=1)]
    return {"log_loss": float(log_loss(y, proba / proba.sum(axis=1, keepdims=True), labels=classes)),
            "macro_f1": float(f1_score(y, pred, average="macro", labels=classes)),
            "accuracy": float(np.mean(pred == y))}


def log_result(run: Run | None, params: dict[str, Any], metrics: dict[str, float], *, step: int = 0) -> None:
    if run is not None:
        run.log_params(params)
        run.log_metrics({f"valid_{k}": v for k, v in metrics.items()}, step=step)
