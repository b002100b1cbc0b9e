"""LightGBM's LGBMClassifier, with the validation loss of every boosting round logged."""

from __future__ import annotations

from typing import Any

import numpy as np

from modelmill.errors import InputError
from modelmill.training.tracking import Run
from modelmill.training.trainers.base import TrainResult, evaluate, log_result

__all__ = ["LightGBMTrainer"]


class LightGBMTrainer:
    """Settings are stored; ``fit`` trains (``n_jobs`` threads).

    >>> import numpy as np
    >>> rng = np.random.default_rng(0); X = rng.normal(size=(400, 3)); y = (X[:, 0] > 0).astype(int)
    >>> res = LightGBMTrainer(n_estimators=20, n_jobs=1).fit(X[:300], y[:300], X[300:], y[300:])
    >>> res.metrics["auc"] > 0.9
    True
    """

    name = "lightgbm"
    flavor = "lightgbm"

    def __init__(self, *, n_estimators: int = 200, learning_rate: float = 0.05, num_leaves: int = 31,
                 min_child_samples: int = 20, subsample: float = 1.0, colsample_bytree: float = 1.0,
                 reg_lambda: float = 0.0, seed: int = 0, n_jobs: int = 1) -> None:
        self.params: dict[str, Any] = {"n_estimators": n_estimators, "learning_rate": learning_rate,
                                       "num_leaves": num_leaves, "min_child_samples": min_child_samples,
                                       "subsample": subsample, "colsample_bytree": colsample_bytree,
                                       "reg_lambda": reg_lambda, "seed": seed, "n_jobs": n_jobs}

    def __repr__(self) -> str:
        return f"LightGBMTrainer({self.params})"

    def fit(self, X: np.ndarray, y: np.ndarray, X_valid: np.ndarray, y_valid: np.ndarray, *,
            run: Run | None = None, feature_names: list[str] | None = None) -> TrainResult:
        import lightgbm

        p = self.params
        if p["n_estimators"] < 1:
            raise InputError("n_estimators", "must be at least 1", p["n_estimators"])
        model = lightgbm.LGBMClassifier(
            n_estimators=p["n_estimators"], learning_rate=p["learning_rate"], num_leaves=p["num_leaves"],
            min_child_samples=p["min_child_samples"], subsample=p["subsample"], subsample_freq=1 if p["subsample"] < 1 else 0,
            colsample_bytree=p["colsample_bytree"], reg_lambda=p["reg_lambda"], random_state=p["seed"],
            n_jobs=p["n_jobs"], verbose=-1, deterministic=True)
        model.fit(X, y, eval_X=(X_valid,), eval_y=(y_valid,), eval_metric="auc")
        if run is not None:
            curves = model.evals_result_.get("valid_0", {})
            run.log_batch([(f"valid_{name}_curve", float(v), i)
                           for name, values in curves.items() for i, v in enumerate(values, start=1)])
        metrics = evaluate(model, X_valid, y_valid)
        log_result(run, {"trainer": self.name, **p}, metrics)
        return TrainResult(model=model, native=model, trainer=self.name, flavor=self.flavor, params=dict(p), metrics=metrics,
                           feature_names=feature_names or [f"f{i}" for i in range(X.shape[1])],
                           run_id=None if run is None else run.run_id)
