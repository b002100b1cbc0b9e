"""Trainers take a task: multiclass (log loss, macro F1, accuracy) and regression (RMSE, MAE) beside binary,
in the library and through `modelmill train --task`, and the registered model serves as that task."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from modelmill.cli import app
from modelmill.config import load_settings
from modelmill.errors import InputError
from modelmill.project import Project
from modelmill.registry import Registry, clear_cache
from modelmill.training.trainers import train


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """OpenMP on a shared 2-core machine: one thread is many times quicker than two fighting others."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield



def _frame(n: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    kind = np.array(["cat", "dog", "fish"])[np.argmax(X + rng.normal(scale=0.2, size=X.shape), axis=1)]
    return pd.DataFrame({"a": X[:, 0], "b": X[:, 1], "c": X[:, 2], "kind": kind,
                         "price": X @ [2.0, -1.0, 0.5] + rng.normal(scale=0.1, size=n),
                         "late": (X[:, 0] > 0).astype(int)})


def test_multiclass_metrics_and_a_probability_per_class() -> None:
    df = _frame()
    res = train("sklearn-hgb", df, "kind", features=["a", "b", "c"], task="multiclass", max_iter=15)
    assert set(res.metrics) == {"log_loss", "macro_f1", "accuracy"}
    assert res.metrics["accuracy"] > 0.7 and 0 < res.metrics["macro_f1"] <= 1 and res.metrics["log_loss"] > 0
    assert list(res.model.classes_) == ["cat", "dog", "fish"]
    assert res.model.predict_proba(df[["a", "b", "c"]].to_numpy()[:4]).shape == (4, 3)


def test_regression_metrics() -> None:
    df = _frame()
    res = train("sklearn-hgb", df, "price", features=["a", "b", "c"], task="regression", max_iter=30)
    assert set(res.metrics) == {"rmse", "mae"}
    assert res.metrics["mae"] <= res.metrics["rmse"] < df["price"].std()
    assert not hasattr(res.model, "predict_proba")


def test_binary_is_the_default_and_tasks_are_checked() -> None:
    df = _frame()
    assert set(train("sklearn-hgb", df, "late", features=["a", "b", "c"], max_iter=10).metrics) == {
        "log_loss", "auc", "calibration_error"}
    with pytest.raises(InputError, match="at least three classes"):
        train("sklearn-hgb", df, "late", features=["a", "b", "c"], task="multiclass")
    with pytest.raises(InputError, match="numeric for task regression"):
        train("sklearn-hgb", df, "kind", features=["a", "b", "c"], task="regression")
    with pytest.raises(InputError, match="must be one of binary, multiclass, regression"):
        train("sklearn-hgb", df, "late", features=["a", "b", "c"], task="ranking")
    with pytest.raises(InputError, match="trained by sklearn-hgb, xgboost, catboost; lightgbm trains binary"):
        train("lightgbm", df, "kind", features=["a", "b", "c"], task="multiclass")


@pytest.mark.slow  # a CLI training run, registration and a served model (about 5 s)
def test_cli_trains_registers_and_serves_a_multiclass_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from starlette.testclient import TestClient

    from modelmill.serving import ModelServer, ServerConfig, create_app

    for key in [k for k in os.environ if k.startswith("MODELMILL_")]:
        monkeypatch.delenv(key)
    (tmp_path / "modelmill.toml").write_text('home = ".modelmill"\n')
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "animals.csv"
    _frame().drop(columns=["price", "late"]).to_csv(data, index=False)
    out = CliRunner().invoke(app, ["train", "--trainer", "sklearn-hgb", "--task", "multiclass", "--data", str(data),
                                   "--label", "kind", "--register", "animals", "-p", "max_iter=10", "--json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert doc["model_version"] == "animals@1" and set(doc["metrics"]) == {"log_loss", "macro_f1", "accuracy"}
    bad = CliRunner().invoke(app, ["train", "--trainer", "sklearn-hgb", "--task", "ranking", "--data", str(data),
                                   "--label", "kind"])
    # the console script turns the InputError into a message and a non-zero exit
    assert bad.exit_code != 0 and isinstance(bad.exception, InputError) and "task" in str(bad.exception)
    clear_cache()
    project = Project(load_settings(cwd=tmp_path))
    try:
        server = ModelServer(Registry(project), config=ServerConfig(models=["animals@1"], log_predictions=False))
        with TestClient(create_app(server)) as c:
            meta = c.get("/v2/models/animals").json()
            assert meta["task"] == "multiclass" and meta["classes"] == ["cat", "dog", "fish"]
            r = c.post("/v2/models/animals/infer", json={"inputs": [
                {"name": n, "datatype": "FP64", "shape": [1], "data": [v]} for n, v in (("a", 2.0), ("b", 0.0),
                                                                                        ("c", 0.0))]})
            assert r.status_code == 200, r.text
            assert r.json()["outputs"][1]["data"] == ["cat"]
    finally:
        project.close()
        clear_cache()
