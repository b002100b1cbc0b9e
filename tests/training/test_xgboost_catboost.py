"""The XGBoost and CatBoost trainers (binary, multiclass, regression), their registry flavours (a round trip
that scores as the native model, the wrong kind of model refused, a changed byte refused) and ONNX export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from modelmill.errors import ArtifactIntegrityError, InputError
from modelmill.registry import Registry
from modelmill.registry.flavors import flavor
from modelmill.registry.onnx import export_onnx, to_onnx
from modelmill.registry.signature import Field, Signature
from modelmill.training.tracking import Runs, start_run
from modelmill.training.trainers import get_trainer, train

pytest.importorskip("xgboost")
pytest.importorskip("catboost")

FEATURES = ["a", "b", "c"]
SIG = Signature(inputs=[Field(c) for c in FEATURES])
SMALL = {"xgboost": {"n_estimators": 25}, "catboost": {"iterations": 25}}


def _frame(n: int = 500, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({c: rng.normal(size=n) for c in FEATURES})
    df["late"] = (df.a + 0.5 * df.b > 0).astype(int)
    df["kind"] = np.where(df.a > 0.5, "cat", np.where(df.a < -0.5, "fish", "dog"))
    df["price"] = 2.0 * df.a - df.b + rng.normal(scale=0.1, size=n)
    return df


@pytest.fixture(scope="module")
def df() -> pd.DataFrame:
    return _frame()


@pytest.mark.parametrize("trainer", ["xgboost", "catboost"])
@pytest.mark.parametrize(("task", "label"), [("binary", "late"), ("multiclass", "kind"), ("regression", "price")])
def test_trains_each_task_and_the_flavour_scores_like_the_native_model(df: pd.DataFrame, trainer: str, task: str,
                                                                       label: str) -> None:
    res = train(trainer, df, label, features=FEATURES, task=task, **SMALL[trainer])
    assert res.flavor == trainer and res.trainer == trainer
    if task == "binary":
        assert set(res.metrics) == {"auc", "log_loss", "calibration_error"} and res.metrics["auc"] > 0.95
    elif task == "multiclass":
        assert set(res.metrics) == {"log_loss", "macro_f1", "accuracy"} and res.metrics["accuracy"] > 0.9
    else:
        assert set(res.metrics) == {"rmse", "mae"} and res.metrics["rmse"] < 0.5 * df.price.std()
    fl = flavor(trainer)
    loaded = fl.load(fl.dump(res.native, SIG), SIG, name="m", version=1, sha256="", threads=1)
    X = _frame(20, seed=5)[FEATURES].to_numpy()
    got = loaded.predict(X)
    assert loaded.options["task"] == task
    if task == "binary":
        np.testing.assert_allclose(got, res.native.predict_proba(X)[:, 1], rtol=1e-6)
    elif task == "multiclass":
        assert got.shape == (20, 3) and loaded.options["classes"] == ["cat", "dog", "fish"]  # the labels
        np.testing.assert_allclose(got, res.native.predict_proba(X), rtol=1e-6)
        true = np.where(X[:, 0] > 0.5, "cat", np.where(X[:, 0] < -0.5, "fish", "dog"))
        assert np.mean(np.asarray(loaded.options["classes"])[got.argmax(axis=1)] == true) > 0.8
    else:
        np.testing.assert_allclose(got, res.native.predict(X), rtol=1e-6)


@pytest.mark.parametrize("trainer", ["xgboost", "catboost"])
def test_a_run_logs_the_boosting_curve_and_the_params(tmp_path: Path, df: pd.DataFrame, trainer: str) -> None:
    from modelmill.config import load_settings
    from modelmill.project import Project

    (tmp_path / "modelmill.toml").write_text('home = ".modelmill"\n')
    project = Project(load_settings(cwd=tmp_path))
    try:
        with start_run("t", project=project) as run:
            train(trainer, df, "late", features=FEATURES, run=run, **SMALL[trainer])
        runs = Runs(project)
        assert runs.get(run.run_id).params["trainer"] == trainer
        curve = [p for p in runs.history(run.run_id) if p.key.endswith("_curve")]
        assert [p.step for p in curve] == list(range(1, SMALL[trainer][next(iter(SMALL[trainer]))] + 1))
    finally:
        project.close()


def test_bad_params_are_clear_errors(df: pd.DataFrame) -> None:
    with pytest.raises(InputError, match="xgboost params") as info:
        get_trainer("xgboost", n_trees=3)
    assert "n_trees" in str(info.value)
    with pytest.raises(InputError, match="n_estimators"):
        train("xgboost", df, "late", features=FEATURES, n_estimators=0)
    with pytest.raises(InputError, match="learning_rate"):
        train("xgboost", df, "late", features=FEATURES, n_estimators=5, learning_rate=3.0)
    with pytest.raises(InputError, match="catboost params"):
        get_trainer("catboost", n_estimators=3)
    with pytest.raises(InputError, match="depth"):
        train("catboost", df, "late", features=FEATURES, iterations=5, depth=40)
    with pytest.raises(InputError, match="must be one of binary, multiclass, regression"):
        train("catboost", df, "late", features=FEATURES, task="ranking")
    with pytest.raises(InputError, match="at least three classes"):
        train("xgboost", df, "late", features=FEATURES, task="multiclass")


@pytest.mark.parametrize("name", ["xgboost", "catboost"])
def test_the_flavour_refuses_another_librarys_model(name: str) -> None:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression().fit(np.array([[0.0, 0, 0], [1, 1, 1]]), [0, 1])
    with pytest.raises(InputError, match=f"flavor '{name}' needs"):
        flavor(name).dump(model, SIG)


@pytest.fixture
def registry(tmp_path: Path) -> Any:
    from modelmill.config import load_settings
    from modelmill.project import Project
    from modelmill.registry import clear_cache

    (tmp_path / "modelmill.toml").write_text('home = ".modelmill"\n')
    clear_cache()
    project = Project(load_settings(cwd=tmp_path))
    yield Registry(project)
    project.close()
    clear_cache()


@pytest.mark.parametrize("trainer", ["xgboost", "catboost"])
def test_registered_artifact_is_checksummed_and_a_changed_byte_refuses_to_load(registry: Registry,
                                                                                df: pd.DataFrame, trainer: str) -> None:
    res = train(trainer, df, "late", features=FEATURES, **SMALL[trainer])
    mv = registry.register("m", res.native, flavor=res.flavor, signature=SIG)
    assert mv.flavor == trainer and len(mv.sha256) == 64
    X = df[FEATURES].to_numpy()[:5]
    np.testing.assert_allclose(registry.load(mv).predict(X), res.native.predict_proba(X)[:, 1], rtol=1e-6)
    from modelmill.registry import clear_cache

    clear_cache()
    file = Path(registry.project.settings.artifacts) / mv.artifact_path
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0x01
    file.write_bytes(bytes(data))
    with pytest.raises(ArtifactIntegrityError, match="tampered"):
        registry.load(mv)


@pytest.mark.parametrize("trainer", ["xgboost", "catboost"])
def test_onnx_export_scores_like_the_native_model(registry: Registry, df: pd.DataFrame, trainer: str) -> None:
    res = train(trainer, df, "late", features=FEATURES, **SMALL[trainer])
    mv = registry.register("m", res.native, flavor=res.flavor, signature=SIG)
    exported = export_onnx(registry, mv)
    assert exported.flavor == "onnx" and exported.version == 2
    X = _frame(50, seed=3)[FEATURES].to_numpy()
    np.testing.assert_allclose(registry.load(exported).predict(X), res.native.predict_proba(X)[:, 1], atol=1e-5)


def test_onnx_export_refuses_an_unknown_flavour() -> None:
    with pytest.raises(InputError, match="xgboost, catboost"):
        to_onnx(object(), "nope", n_features=3)


def test_cli_trains_xgboost_multiclass_and_prints_the_tasks_metrics(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from typer.testing import CliRunner

    from modelmill.cli import app

    for key in [k for k in os.environ if k.startswith("MODELMILL_")]:
        monkeypatch.delenv(key)
    (tmp_path / "modelmill.toml").write_text('home = ".modelmill"\n')
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "train.csv"
    _frame(300).to_csv(data, index=False)
    out = CliRunner().invoke(app, ["train", "--trainer", "xgboost", "--task", "multiclass", "--data", str(data),
                                   "--label", "kind", "--features", "a,b,c", "-p", "n_estimators=5"])
    assert out.exit_code == 0, out.output
    assert "macro f1" in out.output and "accuracy" in out.output and "auc" not in out.output
    bad = CliRunner().invoke(app, ["train", "--trainer", "catboost", "--data", str(data), "--label", "late",
                                   "--features", "a,b,c", "-p", "depth=99"])
    assert bad.exit_code != 0 and isinstance(bad.exception, InputError) and "depth" in str(bad.exception)


@pytest.mark.parametrize("trainer", ["xgboost", "catboost"])
def test_calibrated_binary_models_register_as_sklearn_and_runs_record_the_library_version(
        df: pd.DataFrame, trainer: str) -> None:
    from importlib.metadata import version

    from modelmill.training.tracking import environment

    res = train(trainer, df, "late", features=FEATURES, calibrate="sigmoid", **SMALL[trainer])
    assert res.flavor == "sklearn" and res.extra["calibrate"] == "sigmoid" and "auc" in res.extra["uncalibrated"]
    dist = "xgboost-cpu" if trainer == "xgboost" else trainer  # the xgboost extra installs the CPU build
    assert environment()["packages"][dist] == version(dist)
    with pytest.raises(InputError, match="calibrates binary classifiers"):
        train(trainer, df, "kind", features=FEATURES, task="multiclass", calibrate="sigmoid", **SMALL[trainer])


@pytest.mark.parametrize("trainer", ["xgboost", "catboost"])
def test_without_the_library_the_trainer_names_the_extra_to_install(trainer: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, trainer, None)  # import xgboost / catboost now fails
    monkeypatch.delitem(sys.modules, f"modelmill.training.trainers.{trainer}", raising=False)
    with pytest.raises(InputError, match=rf"install modelmill\[{trainer}\]"):
        get_trainer(trainer)
