"""The contract of trainers: ``fit(X, y, X_valid, y_valid, *, run, feature_names) -> TrainResult``.

A trainer has a ``name``, a registry ``flavor`` and ``fit``; the check fits it on an easy, seeded problem with
missing values (600 rows, 3 features), in a scratch project unless ``project`` is given.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np
import pandas as pd

from modelmill.project import Project
from modelmill.registry import Field, Registry, Signature
from modelmill.testing.base import expect, scratch_project
from modelmill.training import Run, Runs, start_run
from modelmill.training.trainers import TrainResult, frame_to_xy, split_train_valid

__all__ = ["Trainer", "check_trainer", "easy_frame"]


class Trainer(Protocol):
    """What :func:`check_trainer` calls."""

    name: str
    flavor: str

    def fit(self, X: np.ndarray, y: np.ndarray, X_valid: np.ndarray, y_valid: np.ndarray, *,
            run: Run | None = None, feature_names: list[str] | None = None) -> TrainResult: ...


def easy_frame(n: int = 600, seed: int = 0) -> pd.DataFrame:
    """Features ``a``, ``b``, ``c`` (every 17th ``c`` missing), a text column and a label ``late`` that ``a`` and
    ``b`` nearly decide."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n), "c": rng.normal(size=n)})
    df.loc[::17, "c"] = np.nan  # missing values must not break any trainer
    df["late"] = (df.a + 0.5 * df.b + 0.3 * rng.normal(size=n) > 0).astype(int)
    df["carrier"] = "UA"  # non-numeric columns are left out
    return df


def check_trainer(trainer: Trainer, *, project: Project | None = None) -> None:
    """Check a trainer: it fits, scores an easy problem well, logs to its run, and its model registers.

    Asserts that ``fit`` returns a :class:`~modelmill.training.trainers.TrainResult` naming the trainer, its
    flavor and the feature names; that the validation AUC is above 0.9 and the log loss below 0.5; that
    ``model.predict_proba`` gives ``[n, 2]`` rows summing to 1, missing values included; that ``fit`` leaves its
    inputs unchanged; that the run holds the parameters (``trainer``), ``valid_auc`` equal to the result's and
    a curve; and that ``native`` registered with ``flavor`` loads to the same scores. Raises
    :class:`AssertionError` naming the broken promise.
    """
    X, y, names = frame_to_xy(easy_frame(), "late")
    X_train, y_train, X_valid, y_valid = split_train_valid(X, y, valid_fraction=0.2, seed=0)
    before = (X_train.copy(), y_train.copy(), X_valid.copy(), y_valid.copy())
    what = f"check_trainer({trainer!r})"
    with scratch_project(project) as proj:
        with start_run("check-trainer", project=proj) as run:
            result = trainer.fit(X_train, y_train, X_valid, y_valid, run=run, feature_names=names)
        expect(isinstance(result, TrainResult), f"{what}: fit returned {type(result).__name__}, not a TrainResult")
        expect(result.trainer == trainer.name, f"{what}: the result names trainer {result.trainer!r}")
        expect(result.flavor == trainer.flavor, f"{what}: the result's flavor is {result.flavor!r}, "
                                                f"the trainer's {trainer.flavor!r}")
        expect(result.feature_names == names, f"{what}: feature names {result.feature_names}, want {names}")
        expect(result.run_id == run.run_id, f"{what}: the result's run_id is {result.run_id!r}, not its run's")
        auc, loss = result.metrics.get("auc", math.nan), result.metrics.get("log_loss", math.nan)
        expect(auc > 0.9, f"{what}: validation AUC {auc} on an easy problem (want > 0.9)")
        expect(0 < loss < 0.5, f"{what}: validation log loss {loss} on an easy problem (want in (0, 0.5))")
        for got, want, label in zip((X_train, y_train, X_valid, y_valid), before, ("X", "y", "X_valid", "y_valid"),
                                    strict=True):
            expect(np.array_equal(got, want, equal_nan=True), f"{what}: fit changed its input {label}")
        proba = np.asarray(result.model.predict_proba(X))
        expect(proba.shape == (len(X), 2), f"{what}: predict_proba gave shape {proba.shape}, want ({len(X)}, 2)")
        expect(np.allclose(proba.sum(axis=1), 1.0), f"{what}: predict_proba rows do not sum to 1")
        info = Runs(proj).get(run.run_id)
        expect(info.params.get("trainer") == trainer.name,
               f"{what}: the run's trainer parameter is {info.params.get('trainer')!r}")
        logged: Any = info.metrics.get("valid_auc", {}).get("last")
        expect(logged is not None and math.isclose(logged, auc, rel_tol=1e-9, abs_tol=1e-12),
               f"{what}: the run's valid_auc is {logged}, the result's auc {auc}")
        expect(any(k.endswith("_curve") or k == "train_loss" for k in info.metrics),
               f"{what}: the run has no training curve (a metric named *_curve or train_loss): {sorted(info.metrics)}")
        registry = Registry(proj)
        mv = registry.register("check-trainer", result.native, flavor=result.flavor,
                               signature=Signature(inputs=[Field(n, "float64") for n in names]))
        scores = registry.load(mv, cache=False).predict(X_valid)
        want = np.asarray(result.model.predict_proba(X_valid))[:, 1]
        worst = float(np.max(np.abs(scores - want)))
        expect(np.allclose(scores, want, rtol=1e-5, atol=1e-6),
               f"{what}: the registered model ({result.flavor}) scores up to {worst:.3g} away from result.model")
