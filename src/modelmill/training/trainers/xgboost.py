"""XGBoost's XGBClassifier (binary or multiclass) or XGBRegressor (``task="regression"``), with the
validation metric of every boosting round logged."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import xgboost  # here, not in fit: without it, get_trainer names the extra to install

from modelmill.errors import InputError
from modelmill.training.tracking import Run
from modelmill.training.trainers.base import TASKS, TrainResult, evaluate_task, log_result

__all__ = ["CLASSES_ATTR", "XGBoostTrainer"]

#: The booster attribute that keeps a multiclass model's label names (XGBoost itself learns classes 0..K-1);
#: the registry's ``xgboost`` flavour serves them as the class names.
CLASSES_ATTR = "modelmill_classes"

_CURVE_METRIC = {"binary": "logloss", "multiclass": "mlogloss", "regression": "rmse"}


class _Labelled:
    """A multiclass XGBClassifier scored against the original labels (what ``evaluate_task`` reads)."""

    def __init__(self, model: Any, classes: np.ndarray) -> None:
        self.model, self.classes_ = model, classes

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict_proba(X))


class XGBoostTrainer:
    """Settings are stored; ``fit`` trains (``n_jobs`` threads, the ``hist`` tree method).

    >>> import numpy as np
    >>> rng = np.random.default_rng(0); X = rng.normal(size=(400, 3)); y = (X[:, 0] > 0).astype(int)
    >>> res = XGBoostTrainer(n_estimators=20, n_jobs=1).fit(X[:300], y[:300], X[300:], y[300:])
    >>> res.metrics["auc"] > 0.9
    True
    """

    name = "xgboost"
    flavor = "xgboost"

    def __init__(self, *, n_estimators: int = 200, learning_rate: float = 0.05, max_depth: int = 6,
                 min_child_weight: float = 1.0, subsample: float = 1.0, colsample_bytree: float = 1.0,
                 reg_lambda: float = 1.0, seed: int = 0, n_jobs: int = 1, task: str = "binary") -> None:
        if task not in TASKS:
            raise InputError("task", f"must be one of {', '.join(TASKS)}", task)
        self.task = task
        self.params: dict[str, Any] = {"n_estimators": n_estimators, "learning_rate": learning_rate,
                                       "max_depth": max_depth, "min_child_weight": min_child_weight,
                                       "subsample": subsample, "colsample_bytree": colsample_bytree,
                                       "reg_lambda": reg_lambda, "seed": seed, "n_jobs": n_jobs}

    def __repr__(self) -> str:
        return f"XGBoostTrainer({self.params})"

    def fit(self, X: np.ndarray, y: np.ndarray, X_valid: np.ndarray, y_valid: np.ndarray, *,
            run: Run | None = None, feature_names: list[str] | None = None) -> TrainResult:
        p = self.params
        if not isinstance(p["n_estimators"], int) or p["n_estimators"] < 1:
            raise InputError("n_estimators", "must be an integer of at least 1", p["n_estimators"])
        if not isinstance(p["max_depth"], int) or p["max_depth"] < 0:
            raise InputError("max_depth", "must be an integer of at least 0", p["max_depth"])
        if not 0.0 < float(p["learning_rate"]) <= 1.0:
            raise InputError("learning_rate", "must be in (0, 1]", p["learning_rate"])
        for key in ("subsample", "colsample_bytree"):
            if not 0.0 < float(p[key]) <= 1.0:
                raise InputError(key, "must be in (0, 1]", p[key])
        kind = xgboost.XGBRegressor if self.task == "regression" else xgboost.XGBClassifier
        model: Any = kind(
            n_estimators=p["n_estimators"], learning_rate=p["learning_rate"], max_depth=p["max_depth"],
            min_child_weight=p["min_child_weight"], subsample=p["subsample"],
            colsample_bytree=p["colsample_bytree"], reg_lambda=p["reg_lambda"], random_state=p["seed"],
            n_jobs=p["n_jobs"], tree_method="hist", eval_metric=_CURVE_METRIC[self.task])
        classes: np.ndarray | None = None
        y_fit, y_eval = y, y_valid
        if self.task == "multiclass":  # XGBoost learns classes 0..K-1: encode, and keep the names
            classes = np.unique(y)
            y_fit, y_eval = np.searchsorted(classes, y), np.searchsorted(classes, y_valid)
            if not np.isin(y_valid, classes).all():
                raise InputError("label", "has validation classes the training part lacks",
                                 [str(v) for v in np.setdiff1d(y_valid, classes)[:5]])
        model.fit(X, y_fit, eval_set=[(X_valid, y_eval)], verbose=False)
        if classes is not None:
            model.get_booster().set_attr(**{CLASSES_ATTR: json.dumps([str(c) for c in classes.tolist()])})
        if run is not None:
            curves = model.evals_result().get("validation_0", {})
            run.log_batch([(f"valid_{name}_curve", float(v), i)
                           for name, values in curves.items() for i, v in enumerate(values, start=1)])
        scored: Any = _Labelled(model, classes) if classes is not None else model
        metrics = evaluate_task(scored, X_valid, y_valid, self.task)
        log_result(run, {"trainer": self.name, **p, **({"task": self.task} if self.task != "binary" else {})},
                   metrics)
        return TrainResult(model=model, native=model, trainer=self.name, flavor=self.flavor, params=dict(p),
                           metrics=metrics, feature_names=feature_names or [f"f{i}" for i in range(X.shape[1])],
                           run_id=None if run is None else run.run_id)
