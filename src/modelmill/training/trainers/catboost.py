"""CatBoost's CatBoostClassifier (binary or multiclass) or CatBoostRegressor (``task="regression"``), with
the validation loss of every boosting round logged."""

from __future__ import annotations

from typing import Any

import catboost  # here, not in fit: without it, get_trainer names the extra to install
import numpy as np

from modelmill.errors import InputError
from modelmill.training.tracking import Run
from modelmill.training.trainers.base import TASKS, TrainResult, evaluate_task, log_result

__all__ = ["CatBoostTrainer"]

_LOSS = {"binary": "Logloss", "multiclass": "MultiClass", "regression": "RMSE"}


class CatBoostTrainer:
    """Settings are stored; ``fit`` trains (``thread_count`` threads; nothing is written to disk).

    >>> import numpy as np
    >>> rng = np.random.default_rng(0); X = rng.normal(size=(400, 3)); y = (X[:, 0] > 0).astype(int)
    >>> res = CatBoostTrainer(iterations=30, thread_count=1).fit(X[:300], y[:300], X[300:], y[300:])
    >>> res.metrics["auc"] > 0.9
    True
    """

    name = "catboost"
    flavor = "catboost"

    def __init__(self, *, iterations: int = 200, learning_rate: float = 0.05, depth: int = 6,
                 l2_leaf_reg: float = 3.0, seed: int = 0, thread_count: int = 1, task: str = "binary") -> None:
        if task not in TASKS:
            raise InputError("task", f"must be one of {', '.join(TASKS)}", task)
        self.task = task
        self.params: dict[str, Any] = {"iterations": iterations, "learning_rate": learning_rate, "depth": depth,
                                       "l2_leaf_reg": l2_leaf_reg, "seed": seed, "thread_count": thread_count}

    def __repr__(self) -> str:
        return f"CatBoostTrainer({self.params})"

    def fit(self, X: np.ndarray, y: np.ndarray, X_valid: np.ndarray, y_valid: np.ndarray, *,
            run: Run | None = None, feature_names: list[str] | None = None) -> TrainResult:
        p = self.params
        if not isinstance(p["iterations"], int) or p["iterations"] < 1:
            raise InputError("iterations", "must be an integer of at least 1", p["iterations"])
        if not isinstance(p["depth"], int) or not 1 <= p["depth"] <= 16:
            raise InputError("depth", "must be an integer from 1 to 16", p["depth"])
        if not 0.0 < float(p["learning_rate"]) <= 1.0:
            raise InputError("learning_rate", "must be in (0, 1]", p["learning_rate"])
        kind = catboost.CatBoostRegressor if self.task == "regression" else catboost.CatBoostClassifier
        model: Any = kind(
            iterations=p["iterations"], learning_rate=p["learning_rate"], depth=p["depth"],
            l2_leaf_reg=p["l2_leaf_reg"], random_seed=p["seed"], thread_count=p["thread_count"],
            loss_function=_LOSS[self.task], verbose=False, allow_writing_files=False)
        try:
            model.fit(X, y, eval_set=(X_valid, y_valid))
        except catboost.CatBoostError as exc:
            raise InputError("catboost params", str(exc).splitlines()[-1], sorted(p)) from exc
        if run is not None:
            curves = model.get_evals_result().get("validation", {})
            run.log_batch([(f"valid_{name}_curve", float(v), i)
                           for name, values in curves.items() for i, v in enumerate(values, start=1)])
        metrics = evaluate_task(model, X_valid, y_valid, self.task)
        log_result(run, {"trainer": self.name, **p, **({"task": self.task} if self.task != "binary" else {})},
                   metrics)
        return TrainResult(model=model, native=model, trainer=self.name, flavor=self.flavor, params=dict(p),
                           metrics=metrics, feature_names=feature_names or [f"f{i}" for i in range(X.shape[1])],
                           run_id=None if run is None else run.run_id)
