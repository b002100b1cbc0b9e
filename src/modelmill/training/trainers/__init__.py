"""Trainers: one per model family, each ``fit(X, y, X_valid, y_valid, run=...) -> TrainResult``.

``sklearn-hgb`` (HistGradientBoostingClassifier), ``lightgbm`` and ``torch-mlp`` (DistributedDataParallel
through torchrun when ``nproc > 1``). Modules are imported on first use, so LightGBM and torch stay optional.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import pandas as pd

from modelmill.errors import InputError
from modelmill.training.tracking import Run
from modelmill.training.trainers.base import TrainResult, evaluate, frame_to_xy, split_train_valid

__all__ = ["TRAINERS", "TrainResult", "evaluate", "fit_arrays", "frame_to_xy", "get_trainer", "split_train_valid",
           "train"]

TRAINERS = {
    "sklearn-hgb": "modelmill.training.trainers.sklearn:HistGradientBoostingTrainer",
    "lightgbm": "modelmill.training.trainers.lightgbm:LightGBMTrainer",
    "torch-mlp": "modelmill.training.trainers.torch_mlp:TorchMLPTrainer",
}


def get_trainer(name: str, **params: Any) -> Any:
    """A trainer by name, with its settings; unknown settings are a clear :class:`InputError`."""
    if name not in TRAINERS:
        raise InputError("trainer", f"must be one of {', '.join(TRAINERS)}", name)
    module_name, cls_name = TRAINERS[name].split(":")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except ImportError as exc:
        raise InputError("trainer", f"needs a package that is not installed ({exc.name}); "
                         "install modelmill[lightgbm] or modelmill[torch]", name) from exc
    try:
        return cls(**params)
    except TypeError as exc:
        raise InputError(f"{name} params", str(exc), sorted(params)) from exc


def train(trainer: str, data: pd.DataFrame, label: str, *, run: Run | None = None, valid_fraction: float = 0.2,
          seed: int = 0, features: list[str] | None = None, **params: Any) -> TrainResult:
    """Split ``data`` (seeded, stratified), fit ``trainer`` and evaluate it on the held-out part.

        >>> import numpy as np, pandas as pd
        >>> rng = np.random.default_rng(1)
        >>> df = pd.DataFrame({"a": rng.normal(size=300), "b": rng.normal(size=300)})
        >>> df["late"] = (df.a > 0).astype(int)
        >>> res = train("sklearn-hgb", df, "late", max_iter=10)
        >>> res.feature_names, res.metrics["auc"] > 0.9
        (['a', 'b'], True)
    """
    X, y, names = frame_to_xy(data, label, features)
    return fit_arrays(trainer, X, y, feature_names=names, run=run, valid_fraction=valid_fraction, seed=seed,
                      **params)


def fit_arrays(trainer: str, X: np.ndarray, y: np.ndarray, *, feature_names: list[str] | None = None,
               run: Run | None = None, valid_fraction: float = 0.2, seed: int = 0, **params: Any) -> TrainResult:
    """Like :func:`train` for arrays. ``seed`` seeds the split, and the trainer unless ``params`` has one."""
    impl = get_trainer(trainer, **{"seed": seed, **params})
    X_train, y_train, X_valid, y_valid = split_train_valid(X, y, valid_fraction=valid_fraction, seed=seed)
    if run is not None:
        run.log_params({"valid_fraction": valid_fraction, "split_seed": seed, "n_train": len(y_train),
                        "n_valid": len(y_valid), "features": feature_names or []})
    result: TrainResult = impl.fit(X_train, y_train, X_valid, y_valid, run=run, feature_names=feature_names)
    return result
