"""Reference profiles without code: made when a version is registered from a training set (``train --data``, a
pipeline, the registry given its data or a lineage naming it) and when it is promoted; a profile that cannot be made
never fails the registration, and `monitor` then says the version's drift has no data."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from typer.testing import CliRunner

from modelmill.cli import app
from modelmill.config import load_settings
from modelmill.monitoring import Monitor, MonitoringConfig, ReferenceStore
from modelmill.monitoring.reference import PREDICTION_COLUMN
from modelmill.project import Project
from modelmill.registry import Field, Registry, Signature
from modelmill.training import Pipeline, StepContext, step

from .conftest import log_predictions

SIGNATURE = Signature(inputs=[Field("x0", "float64"), Field("x1", "float64")])


def _frame(n: int = 500, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    return pd.DataFrame({"x0": x[:, 0], "x1": x[:, 1], "note": ["a"] * n,
                         "y": (x[:, 0] + rng.normal(size=n) > 0).astype(int)})


def _model(frame: pd.DataFrame) -> LogisticRegression:
    return LogisticRegression().fit(frame[["x0", "x1"]], frame["y"])


def _in_project_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key in [k for k in os.environ if k.startswith("MODELMILL_")]:
        monkeypatch.delenv(key)
    (tmp_path / "modelmill.toml").write_text('home = ".modelmill"\n')
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_train_data_registers_a_version_with_its_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _in_project_dir(tmp_path, monkeypatch)
    data = root / "train.csv"
    _frame(600).drop(columns="note").to_csv(data, index=False)
    out = CliRunner().invoke(app, ["train", "--trainer", "sklearn-hgb", "--data", str(data), "--label", "y",
                                   "--register", "credit", "-p", "max_iter=5", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["model_version"] == "credit@1"
    with Project(load_settings(cwd=root)) as project:
        profile = ReferenceStore(project).load("credit", 1)
    assert set(profile.columns) == {"x0", "x1", PREDICTION_COLUMN} and profile.n_rows == 600
    assert profile.columns["x0"].n == 600


def test_registering_with_training_data_or_a_lineage_training_set_stores_the_profile(project: Project) -> None:
    frame = _frame()
    reg, refs = Registry(project), ReferenceStore(project)
    reg.register("credit", _model(frame), flavor="sklearn", signature=SIGNATURE, training_data=frame)
    assert refs.load("credit", 1).n_rows == 500 and PREDICTION_COLUMN in refs.load("credit", 1).columns
    buf = io.BytesIO()
    frame.iloc[:300].to_parquet(buf, index=False)
    project.artifacts.put_bytes("training_sets/credit.parquet", buf.getvalue())
    uri = project.artifacts.uri("training_sets/credit.parquet")
    mv = reg.register("credit", _model(frame), flavor="sklearn", signature=SIGNATURE, lineage={"training_set": uri})
    profile = refs.load("credit", 2)
    assert profile.n_rows == 300
    # the outputs profiled are version 2's own on the training set
    expected = reg.load(mv).predict(frame.iloc[:300][["x0", "x1"]].to_numpy())
    outputs = profile.columns[PREDICTION_COLUMN]
    assert outputs.n == 300 and outputs.values is not None
    assert np.allclose(np.sort(outputs.values), np.sort(expected))
    # a derived version (an ONNX export, say) without readable data gets its parent's profile
    reg.register("credit", _model(frame), flavor="sklearn", signature=SIGNATURE,
                 lineage={"derived_from": "credit@1", "derivation": "test"})
    assert refs.load("credit", 3).n_rows == 500


def test_a_pipeline_that_records_its_training_set_leaves_the_version_profiled(project: Project) -> None:
    @step(inputs=["n"], outputs=["frame"])
    def build(ctx: StepContext, n: int) -> pd.DataFrame:
        frame = _frame(n, seed=4)
        buf = io.BytesIO()
        frame.to_parquet(buf, index=False)
        ctx.project.artifacts.put_bytes("training_sets/piped.parquet", buf.getvalue())
        ctx.record(training_set=ctx.project.artifacts.uri("training_sets/piped.parquet"))
        return frame

    @step(inputs=["frame"], outputs=["version"])
    def fit_and_register(ctx: StepContext, frame: pd.DataFrame) -> int:
        # registered without the training set in its lineage: the run's lineage has it
        mv = Registry(ctx.project).register("piped", _model(frame), flavor="sklearn", signature=SIGNATURE)
        assert not ReferenceStore(ctx.project).exists("piped", mv.version)
        ctx.record(model_version=mv.ref)
        return mv.version

    result = Pipeline("auto_profile_test", [build, fit_and_register]).run(project, params={"n": 250})
    assert result.status == "finished", result.error
    assert ReferenceStore(project).load("piped", 1).n_rows == 250


def test_promotion_makes_the_profile_registration_could_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    root = _in_project_dir(tmp_path, monkeypatch)
    later = root / "later.parquet"  # the training set named in lineage is written after the registration
    frame = _frame(400, seed=5)
    with Project(load_settings(cwd=root)) as project, caplog.at_level(logging.WARNING, "modelmill.monitoring"):
        mv = Registry(project).register("credit", _model(frame), flavor="sklearn", signature=SIGNATURE,
                                        lineage={"training_set": str(later)})
        assert mv.version == 1 and not ReferenceStore(project).exists("credit", 1)
    assert "no reference profile for credit@1" in caplog.text and "later.parquet" in caplog.text
    frame.to_parquet(later, index=False)
    out = CliRunner().invoke(app, ["models", "alias", "credit", "production", "1", "--json"])
    assert out.exit_code == 0, out.output
    with Project(load_settings(cwd=root)) as project:
        assert ReferenceStore(project).load("credit", 1).n_rows == 400


def test_a_profile_that_cannot_be_made_fails_nothing_and_monitor_says_no_data(
        project: Project, caplog: pytest.LogCaptureFixture) -> None:
    frame = _frame()
    reg = Registry(project)
    broken = project.artifacts.put_bytes("training_sets/broken.parquet", b"not parquet at all")
    with caplog.at_level(logging.WARNING, "modelmill.monitoring"):
        one = reg.register("credit", _model(frame), flavor="sklearn", signature=SIGNATURE,
                           training_data=frame[["x0"]])  # the signature's x1 is missing
        two = reg.register("credit", _model(frame), flavor="sklearn", signature=SIGNATURE,
                           lineage={"training_set": project.artifacts.uri(broken.path)})
        reg.set_alias("credit", "production", 2)  # promotion tries again, fails again, and still promotes
    assert (one.version, two.version) == (1, 2) and reg.resolve("credit@production").version == 2
    assert "no reference profile for credit@1: making it from the training data it was registered with failed" \
        in caplog.text and "x1" in caplog.text
    assert "no reference profile for credit@2" in caplog.text
    refs = ReferenceStore(project)
    assert not refs.exists("credit", 1) and not refs.exists("credit", 2)
    # promoted with nothing to profile: said plainly
    reg.register("plain", _model(frame), flavor="sklearn", signature=SIGNATURE)
    with caplog.at_level(logging.WARNING, "modelmill.monitoring"):
        reg.set_alias("plain", "production", 1)
    assert "plain@1 is production without a reference profile" in caplog.text

    at = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    log_predictions(project, model="credit", version=2, ts=at, features=frame[["x0", "x1"]].iloc[:50],
                    outputs=np.full(50, 0.5), latency_ms=1.0)
    result = Monitor(project, MonitoringConfig.from_section({})).run_once()
    [window] = result["windows"]
    assert window["status"] == "no_data" and result["status"] == "no_data"
    assert "no reference profile for credit@2" in window["reason"]


def test_the_http_alias_route_promotes_with_a_profile(tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    from modelmill.security import Authenticator, TokenStore
    from modelmill.serving import ServerConfig, build_server, create_app
    from tests.serving.conftest import COLUMNS, make_project, open_project_at, signature, train_lr

    project = open_project_at(make_project(tmp_path / "proj"))  # clf v1 (production), v2: neither profiled
    try:
        train = tmp_path / "clf-train.parquet"  # named in v3's lineage, written only after its registration
        Registry(project).register("clf", train_lr(3), flavor="sklearn", signature=signature(),
                                   lineage={"training_set": str(train)})
        refs = ReferenceStore(project)
        assert not refs.exists("clf", 3)
        pd.DataFrame(np.random.default_rng(8).normal(size=(300, len(COLUMNS))), columns=COLUMNS).to_parquet(train)
        store = TokenStore(project)
        headers = {"Authorization": f"Bearer {store.create('admin')[1]}"}
        config = ServerConfig(models=["clf@production"], reload_interval_s=60, log_predictions=False)
        app = create_app(build_server(project, config), auth=Authenticator(store))
        with TestClient(app, headers=headers) as client:
            assert client.put("/v1/models/clf/aliases/canary", json={"version": 3}).status_code == 200
            assert not refs.exists("clf", 3)  # only production is a promotion
            assert client.put("/v1/models/clf/aliases/production", json={"version": 3}).status_code == 200
            assert refs.load("clf", 3).n_rows == 300
            made = refs.versions("clf")
            assert client.put("/v1/models/clf/aliases/production", json={"version": 3}).status_code == 200
        assert refs.versions("clf") == made  # kept, not made again
    finally:
        project.close()


def test_a_rollout_finishing_promotes_with_a_profile(project: Project, tmp_path: Path) -> None:
    from modelmill.rollout import RolloutController

    frame = _frame(350, seed=6)
    reg = Registry(project)
    reg.register("credit", _model(frame), flavor="sklearn", signature=SIGNATURE)
    reg.set_alias("credit", "production", 1)
    later = tmp_path / "v2-train.parquet"
    reg.register("credit", _model(frame), flavor="sklearn", signature=SIGNATURE,
                 lineage={"training_set": str(later)})
    frame.to_parquet(later, index=False)  # written after v2's registration: only its promotion can profile it
    refs = ReferenceStore(project)
    assert not refs.exists("credit", 2)

    class Routes:
        def set_weights(self, model: str, variants: object, *, reason: str) -> None:
            pass

    ctl = RolloutController(project, routes=Routes(), source=None)  # type: ignore[arg-type]
    ctl.start("credit", 2, baseline=1, plan="shadow,50,100")
    for _ in range(3):
        ctl.promote("credit")
    assert ctl.get("credit").status == "completed" and reg.resolve("credit@production").version == 2
    assert refs.load("credit", 2).n_rows == 350
