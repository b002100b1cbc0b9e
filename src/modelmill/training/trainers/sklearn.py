"""scikit-learn's HistGradientBoostingClassifier (binary or multiclass) or HistGradientBoostingRegressor
(``task="regression"``), with the binary validation log loss logged per boosting stage."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.metrics import log_loss

from modelmill.errors import InputError
from modelmill.training.tracking import Run
from modelmill.training.trainers.base import TASKS, TrainResult, evaluate_task, log_result

__all__ = ["HistGradientBoostingTrainer"]


class HistGradientBoostingTrainer:
    """Settings are stored; ``fit`` trains.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0); X = rng.normal(size=(400, 3)); y = (X[:, 0] > 0).astype(int)
    >>> res = HistGradientBoostingTrainer(max_iter=20).fit(X[:300], y[:300], X[300:], y[300:])
    >>> res.metrics["auc"] > 0.9
    True
    """

    name = "sklearn-hgb"
    flavor = "sklearn"

    def __init__(self, *, max_iter: int = 200, learning_rate: float = 0.1, max_leaf_nodes: int = 31,
                 min_samples_leaf: int = 20, l2_regularization: float = 0.0, seed: int = 0,
                 log_every: int = 10, task: str = "binary") -> None:
        if task not in TASKS:
            raise InputError("task", f"must be one of {', '.join(TASKS)}", task)
        self.task = task
        self.params: dict[str, Any] = {"max_iter": max_iter, "learning_rate": learning_rate,
                                       "max_leaf_nodes": max_leaf_nodes, "min_samples_leaf": min_samples_leaf,
                                       "l2_regularization": l2_regularization, "seed": seed}
        self.log_every = log_every

    def __repr__(self) -> str:
        return f"HistGradientBoostingTrainer({self.params})"

    def fit(self, X: np.ndarray, y: np.ndarray, X_valid: np.ndarray, y_valid: np.ndarray, *,
            run: Run | None = None, feature_names: list[str] | None = None) -> TrainResult:
        p = self.params
        if p["max_iter"] < 1:
            raise InputError("max_iter", "must be at least 1", p["max_iter"])
        kind = HistGradientBoostingRegressor if self.task == "regression" else HistGradientBoostingClassifier
        model: Any = kind(
            max_iter=p["max_iter"], learning_rate=p["learning_rate"], max_leaf_nodes=p["max_leaf_nodes"],
            min_samples_leaf=p["min_samples_leaf"], l2_regularization=p["l2_regularization"],
            early_stopping=False, random_state=p["seed"])
        model.fit(X, y)
        if run is not None and self.log_every > 0 and self.task == "binary":
            points = []
            for i, proba in enumerate(model.staged_predict_proba(X_valid), start=1):
                if i % self.log_every == 0 or i == model.n_iter_:
                    points.append(("valid_log_loss_curve",
                                   float(log_loss(y_valid, np.clip(proba[:, 1], 1e-7, 1 - 1e-7), labels=[0, 1])), i))
            run.log_batch(points)
        metrics = evaluate_task(model, X_valid, y_valid, self.task)
        log_result(run, {"trainer": self.name, **p, **({"task": self.task} if self.task != "binary" else {})},
                   metrics)
        return TrainResult(model=model, native=model, trainer=self.name, flavor=self.flavor, params=dict(p), metrics=metrics,
                           feature_names=feature_names or [f"f{i}" for i in range(X.shape[1])],
                           run_id=None if run is None else run.run_id)
