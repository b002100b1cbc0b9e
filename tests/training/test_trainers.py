"""Trainers: each fits, reaches a sane AUC on an easy problem, and logs to its run."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from modelmill.errors import InputError
from modelmill.project import Project
from modelmill.training import Runs, start_run
from modelmill.training.trainers import frame_to_xy, get_trainer, train


def _frame(n: int = 600, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n), "c": rng.normal(size=n)})
    df.loc[::17, "c"] = np.nan  # missing values must not break any trainer
    df["late"] = (df.a + 0.5 * df.b + 0.3 * rng.normal(size=n) > 0).astype(int)
    df["carrier"] = "UA"  # non-numeric columns are left out
    return df


@pytest.mark.parametrize(("trainer", "params"), [
    ("sklearn-hgb", {"max_iter": 30}),
    ("lightgbm", {"n_estimators": 30, "n_jobs": 1}),
    ("torch-mlp", {"hidden": [16], "epochs": 8, "batch_size": 64, "lr": 0.1}),
])
def test_trainer_fits_evaluates_and_logs(project: Project, trainer: str, params: dict[str, object]) -> None:
    df = _frame()
    with start_run("trainers", project=project) as run:
        result = train(trainer, df, "late", run=run, **params)
    assert result.feature_names == ["a", "b", "c"]
    assert result.metrics["auc"] > 0.9 and 0 < result.metrics["log_loss"] < 0.5
    proba = result.model.predict_proba(df[["a", "b", "c"]].to_numpy())
    assert proba.shape == (len(df), 2) and np.allclose(proba.sum(axis=1), 1.0)
    info = Runs(project).get(run.run_id)
    assert info.params["trainer"] == trainer and info.params["n_valid"] == "120"
    assert info.metrics["valid_auc"]["last"] == pytest.approx(result.metrics["auc"])
    assert any(k.endswith("_curve") or k == "train_loss" for k in info.metrics)


def test_bad_trainer_input_is_named() -> None:
    with pytest.raises(InputError, match="trainer"):
        get_trainer("xgboost")
    with pytest.raises(InputError, match="params"):
        get_trainer("lightgbm", n_trees=3)
    with pytest.raises(InputError, match="label"):
        frame_to_xy(_frame(), "delay")
    three = _frame().assign(late=np.arange(600) % 3)
    with pytest.raises(InputError, match="two classes"):
        frame_to_xy(three, "late")
    with pytest.raises(InputError, match="multiple of the process count"):
        get_trainer("torch-mlp", batch_size=63, nproc=2).config.validate(2)
