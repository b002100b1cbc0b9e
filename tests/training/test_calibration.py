"""The calibration step: better-calibrated probabilities on rows it did not fit, a servable artifact,
clear errors for what it cannot do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from starlette.testclient import TestClient
from threadpoolctl import threadpool_limits

from modelmill.config import Settings
from modelmill.errors import InputError
from modelmill.project import Project
from modelmill.registry import Field, Registry, Signature, clear_cache
from modelmill.registry.evaluate import calibration_error
from modelmill.serving import ModelServer, ServerConfig, StaticSource, create_app
from modelmill.training.calibration import calibrate, calibration_slice
from modelmill.training.trainers import train

ROOT = Path(__file__).resolve().parents[2]


def _noisy(n: int, seed: int = 0) -> pd.DataFrame:
    """Labels drawn from a known probability: a model that fits them hard is over-confident."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n), "c": rng.normal(size=n)})
    df["late"] = (rng.random(n) < 1 / (1 + np.exp(-(0.8 * df.a - 0.5 * df.b)))).astype(int)
    return df


@pytest.mark.parametrize("method", ["isotonic", "sigmoid"])
def test_calibration_lowers_the_ece_of_a_miscalibrated_model(method: str) -> None:
    df = _noisy(6000)
    X, y = df[["a", "b", "c"]].to_numpy(), df["late"].to_numpy()
    timid = LogisticRegression().fit(X[:2000] * 5, y[:2000])  # served X: probabilities squeezed toward 0.5
    fixed = calibrate(timid, X[2000:4000], y[2000:4000], method=method)
    fresh, truth = X[4000:], y[4000:]
    before = calibration_error(truth, timid.predict_proba(fresh)[:, 1])
    after = calibration_error(truth, fixed.predict_proba(fresh)[:, 1])
    assert before > 0.05 and after < before / 2


def test_the_trainer_calibrates_on_a_slice_it_does_not_train_on() -> None:
    # Deep, fast boosting on noisy labels: over-confident probabilities on the validation rows.
    df = _noisy(5000, seed=1)
    with threadpool_limits(1):  # OpenMP threads on a busy machine cost more than they give
        result = train("sklearn-hgb", df, "late", max_iter=60, learning_rate=0.5, min_samples_leaf=2,
                       log_every=0, calibrate="isotonic")
    uncalibrated = result.extra["uncalibrated"]
    assert uncalibrated["calibration_error"] > 0.05
    # The same validation rows: calibrated better than the model it wraps, and better in log loss.
    assert result.metrics["calibration_error"] < uncalibrated["calibration_error"] / 2
    assert result.metrics["log_loss"] < uncalibrated["log_loss"]
    assert result.flavor == "sklearn" and result.params["calibrate"] == "isotonic"
    assert type(result.native).__name__ == "CalibratedClassifierCV"


def test_a_calibrated_model_registers_loads_and_serves_its_probabilities(tmp_path: Path) -> None:
    df = _noisy(3000, seed=2)
    with threadpool_limits(1):
        result = train("sklearn-hgb", df, "late", max_iter=30, calibrate="sigmoid")
    signature = Signature(inputs=[Field(c, "float64") for c in ("a", "b", "c")],
                          outputs=[Field("probability")])
    with Project(Settings.defaults(home=tmp_path / "home")) as project:
        clear_cache()
        registry = Registry(project)
        mv = registry.register("late", result.native, flavor=result.flavor, signature=signature,
                               metrics=result.metrics)
        clear_cache()
        loaded = registry.load(mv)
        X = df[["a", "b", "c"]].to_numpy()[:50]
        calibrated = result.model.predict_proba(X)[:, 1]
        uncalibrated = result.native.estimator.estimator.predict_proba(X)[:, 1]  # the frozen model inside
        assert np.allclose(loaded.predict(X), calibrated) and not np.allclose(calibrated, uncalibrated)
        assert loaded.options["task"] == "binary"
        clear_cache()
    # The server's predict path (OIP infer) answers the calibrated probabilities.
    server = ModelServer(StaticSource([loaded], aliases={"late@production": mv.version}),
                         config=ServerConfig(models=["late@production"], log_predictions=False))
    with TestClient(create_app(server)) as client:
        body = {"inputs": [{"name": c, "datatype": "FP64", "shape": [len(X)], "data": X[:, i].tolist()}
                           for i, c in enumerate(("a", "b", "c"))]}
        answer = client.post("/v2/models/late/infer", json=body)
        assert answer.status_code == 200, answer.text
        np.testing.assert_allclose(answer.json()["outputs"][0]["data"], calibrated, rtol=1e-12)


def test_latest_split_keeps_the_last_rows() -> None:
    X = np.arange(20.0).reshape(-1, 1)
    y = np.array([0, 1] * 10)
    X_fit, _, X_cal, _ = calibration_slice(X, y, fraction=0.25, split="latest")
    assert X_cal.ravel().tolist() == [15.0, 16.0, 17.0, 18.0, 19.0] and len(X_fit) == 15
    _, _, X_rand, y_rand = calibration_slice(X, y, fraction=0.2, split="random", seed=3)
    assert len(X_rand) == 4 and sorted(y_rand.tolist()) == [0, 0, 1, 1]  # stratified


def test_what_it_cannot_calibrate_is_a_clear_error() -> None:
    df = _noisy(400)
    with pytest.raises(InputError) as info:
        train("sklearn-hgb", df, "late", max_iter=5, calibrate="platt")
    assert info.value.field == "calibrate" and "isotonic" in info.value.message
    with pytest.raises(InputError, match="binary"):
        train("sklearn-hgb", df.assign(late=df.a.round().clip(-1, 1)), "late", task="multiclass", max_iter=5,
              calibrate="sigmoid")
    with pytest.raises(InputError) as torch:
        train("torch-mlp", df, "late", calibrate="sigmoid")
    # The message names every trainer it does calibrate, xgboost and catboost included.
    assert torch.value.field == "calibrate" and torch.value.value == "torch-mlp"
    assert "sklearn-hgb, lightgbm, xgboost, catboost" in torch.value.problem
    with pytest.raises(InputError) as split:
        train("sklearn-hgb", df, "late", max_iter=5, calibrate="sigmoid", calibration_split="oldest")
    assert split.value.field == "calibration_split"
    with pytest.raises(InputError, match="both classes"):
        calibrate(LogisticRegression().fit(df[["a"]], df["late"]), df[["a"]].to_numpy()[:5], np.zeros(5),
                  method="sigmoid")


def _mm(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELMILL_")}
    env |= {"MODELMILL_HOME": str(cwd / "home"), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "modelmill", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_cli_train_refuses_a_bad_calibrate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from modelmill.cli import main

    data = tmp_path / "flights.csv"
    _noisy(300).to_csv(data, index=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MODELMILL_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(sys, "argv", ["modelmill", "train", "-t", "sklearn-hgb", "--data", str(data),
                                      "--label", "late", "--calibrate", "platt", "--json"])
    with pytest.raises(SystemExit) as exited:
        main()  # the console script's entry point: an error is a message and an exit code, never a traceback
    assert exited.value.code == 2
    error = json.loads(capsys.readouterr().out)
    assert error["type"] == "InputError" and error["field"] == "--calibrate" and "isotonic" in error["error"]
    assert not (tmp_path / "home").exists()  # refused before a project was opened or anything trained


@pytest.mark.slow
def test_cli_train_calibrate_registers_the_calibrated_model(tmp_path: Path) -> None:
    data = tmp_path / "flights.csv"
    _noisy(1500).to_csv(data, index=False)
    ok = _mm(["train", "-t", "sklearn-hgb", "--data", str(data), "--label", "late", "-p", "max_iter=20",
              "--calibrate", "sigmoid", "--register", "late", "--json"], tmp_path)
    assert ok.returncode == 0, ok.stderr[-3000:]
    out = json.loads(ok.stdout)
    assert out["params"]["calibrate"] == "sigmoid" and out["model_version"] == "late@1"
    assert 0 <= out["metrics"]["calibration_error"] < 0.2
