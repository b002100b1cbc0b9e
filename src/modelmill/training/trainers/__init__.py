"""Trainers: one per model family, each ``fit(X, y, X_valid, y_valid, run=...) -> TrainResult``.

``sklearn-hgb`` (HistGradientBoostingClassifier), ``lightgbm``, ``xgboost``, ``catboost`` and ``torch-mlp``
(DistributedDataParallel through torchrun when ``nproc > 1``). Modules are imported on first use, so LightGBM,
XGBoost, CatBoost and torch stay optional.

``calibrate="isotonic"`` or ``"sigmoid"`` (:mod:`modelmill.training.calibration`) keeps a calibration slice
out of the training part, fits the model on the rest and its probability map on that slice; the
validation metrics are the calibrated model's (the uncalibrated ones are in ``extra["uncalibrated"]``).
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

import numpy as np
import pandas as pd

from modelmill.errors import InputError
from modelmill.training.calibration import CALIBRATION_SPLITS, calibration_slice, check_method
from modelmill.training.calibration import calibrate as calibrate_model
from modelmill.training.tracking import Run
from modelmill.training.trainers.base import TrainResult, evaluate, frame_to_xy, split_train_valid

__all__ = ["TRAINERS", "TrainResult", "calibrated", "evaluate", "fit_arrays", "frame_to_xy", "get_trainer",
           "split_train_valid", "train"]

TRAINERS = {
    "sklearn-hgb": "modelmill.training.trainers.sklearn:HistGradientBoostingTrainer",
    "lightgbm": "modelmill.training.trainers.lightgbm:LightGBMTrainer",
    "xgboost": "modelmill.training.trainers.xgboost:XGBoostTrainer",
    "catboost": "modelmill.training.trainers.catboost:CatBoostTrainer",
    "torch-mlp": "modelmill.training.trainers.torch_mlp:TorchMLPTrainer",
}

#: The extra that installs each optional trainer's library.
_EXTRAS = {"lightgbm": "lightgbm", "xgboost": "xgboost", "catboost": "catboost", "torch-mlp": "torch"}
#: The trainers that take ``task`` (multiclass, regression); the others train binary classifiers.
TASK_TRAINERS = ("sklearn-hgb", "xgboost", "catboost")
#: The trainers whose binary models ``calibrate`` wraps (torch-mlp's network has no sklearn predict_proba).
CALIBRATED_TRAINERS = tuple(name for name in TRAINERS if name != "torch-mlp")


def get_trainer(name: str, **params: Any) -> Any:
    """A trainer by name, with its settings; unknown settings are a clear :class:`InputError`."""
    if name not in TRAINERS:
        raise InputError("trainer", f"must be one of {', '.join(TRAINERS)}", name)
    module_name, cls_name = TRAINERS[name].split(":")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except ImportError as exc:
        raise InputError("trainer", f"needs a package that is not installed ({exc.name}); "
                         f"install modelmill[{_EXTRAS.get(name, name)}]", name) from exc
    try:
        return cls(**params)
    except TypeError as exc:
        raise InputError(f"{name} params", str(exc), sorted(params)) from exc


def train(trainer: str, data: pd.DataFrame, label: str, *, run: Run | None = None, valid_fraction: float = 0.2,
          seed: int = 0, features: list[str] | None = None, task: str = "binary", calibrate: str = "none",
          calibration_fraction: float = 0.2, calibration_split: str = "random", **params: Any) -> TrainResult:
    """Split ``data`` (seeded, stratified), fit ``trainer`` and evaluate it on the held-out part.

        >>> import numpy as np, pandas as pd
        >>> rng = np.random.default_rng(1)
        >>> df = pd.DataFrame({"a": rng.normal(size=300), "b": rng.normal(size=300)})
        >>> df["late"] = (df.a > 0).astype(int)
        >>> res = train("sklearn-hgb", df, "late", max_iter=10)
        >>> res.feature_names, res.metrics["auc"] > 0.9
        (['a', 'b'], True)
    """
    X, y, names = frame_to_xy(data, label, features, task=task)
    return fit_arrays(trainer, X, y, feature_names=names, run=run, valid_fraction=valid_fraction, seed=seed,
                      task=task, calibrate=calibrate, calibration_fraction=calibration_fraction,
                      calibration_split=calibration_split, **params)


def fit_arrays(trainer: str, X: np.ndarray, y: np.ndarray, *, feature_names: list[str] | None = None,
               run: Run | None = None, valid_fraction: float = 0.2, seed: int = 0, task: str = "binary",
               calibrate: str = "none", calibration_fraction: float = 0.2, calibration_split: str = "random",
               **params: Any) -> TrainResult:
    """Like :func:`train` for arrays. ``seed`` seeds the split, and the trainer unless ``params`` has one.

    ``task``: ``binary`` (every trainer), ``multiclass`` or ``regression`` (sklearn-hgb, xgboost, catboost). ``calibrate``
    (``none``, ``isotonic``, ``sigmoid``; binary sklearn-hgb, lightgbm, xgboost, catboost) fits a probability map on
    ``calibration_fraction`` of the training part, which the model does not train on: a stratified random
    share, or with ``calibration_split="latest"`` its last rows (for rows in time order).
    """
    method = check_method(calibrate)
    if calibration_split not in CALIBRATION_SPLITS:
        raise InputError("calibration_split", f"must be one of {', '.join(CALIBRATION_SPLITS)}",
                         calibration_split)
    if method != "none":
        if task != "binary":
            raise InputError("calibrate", f"calibrates binary classifiers; task is {task}", method)
        if trainer not in CALIBRATED_TRAINERS:
            raise InputError("calibrate", f"calibrates the models of {', '.join(CALIBRATED_TRAINERS)}; not "
                             f"{trainer}'s", trainer)
    if task != "binary":
        if trainer not in TASK_TRAINERS:
            raise InputError("task", f"{task} is trained by {', '.join(TASK_TRAINERS)}; {trainer} trains "
                             "binary classifiers", task)
        params = {**params, "task": task}
    impl = get_trainer(trainer, **{"seed": seed, **params})
    X_train, y_train, X_valid, y_valid = split_train_valid(X, y, valid_fraction=valid_fraction, seed=seed,
                                                           task=task)
    X_cal, y_cal = X_train[:0], y_train[:0]
    if method != "none":
        X_train, y_train, X_cal, y_cal = calibration_slice(X_train, y_train, fraction=calibration_fraction,
                                                           split=calibration_split, seed=seed + 1)
    if run is not None:
        run.log_params({"valid_fraction": valid_fraction, "split_seed": seed, "n_train": len(y_train),
                        "n_valid": len(y_valid), "features": feature_names or [],
                        **({"calibrate": method, "calibration_split": calibration_split,
                            "n_calibration": len(y_cal)} if method != "none" else {})})
    result: TrainResult = impl.fit(X_train, y_train, X_valid, y_valid, run=run, feature_names=feature_names)
    if method == "none":
        return result
    return calibrated(result, X_cal, y_cal, X_valid, y_valid, method=method, run=run)


def calibrated(result: TrainResult, X_cal: np.ndarray, y_cal: np.ndarray, X_valid: np.ndarray,
               y_valid: np.ndarray, *, method: str, run: Run | None = None) -> TrainResult:
    """``result`` with its model calibrated by ``method`` on ``X_cal, y_cal`` and re-evaluated on the
    validation rows; the calibrated model registers with the ``sklearn`` flavour."""
    model = calibrate_model(result.model, X_cal, y_cal, method=method)
    metrics = evaluate(model, X_valid, y_valid)
    if run is not None:
        run.log_metrics({f"valid_{k}": v for k, v in metrics.items()}, step=1)
    return dataclasses.replace(result, model=model, native=model, flavor="sklearn",
                               params={**result.params, "calibrate": method}, metrics=metrics,
                               extra={**result.extra, "uncalibrated": result.metrics, "calibrate": method})
