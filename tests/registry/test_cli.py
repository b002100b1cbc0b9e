"""``modelmill models ...`` and ``modelmill gate`` as a user runs them: a subprocess, JSON on stdout, exit codes."""

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

from modelmill.config import Settings
from modelmill.project import Project
from modelmill.registry import Registry, Signature


def mm(args: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELMILL_")} | {"MODELMILL_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "modelmill", *args], cwd=home.parent, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / ".modelmill"


@pytest.fixture
def registry(home: Path) -> Registry:
    project = Project(Settings.defaults(home=home))
    yield Registry(project)
    project.close()


def _frame(X: np.ndarray, y: np.ndarray) -> pd.DataFrame:
    df = pd.DataFrame(X, columns=[f"f{i}" for i in range(X.shape[1])])
    df["label"] = y
    return df


def test_show_json_leads_to_run_training_set_and_feature_definitions(
        registry: Registry, home: Path, classification, signature6: Signature) -> None:
    training = pytest.importorskip("modelmill.training")
    X, y, _, _ = classification
    snapshot = home.parent / "snapshots" / "train-2013-06.parquet"
    snapshot.parent.mkdir(parents=True)
    _frame(X, y).to_parquet(snapshot)
    with training.start_run("delays", project=registry.project, data_snapshot=str(snapshot),
                            feature_version="fv-3f2a") as run:
        run.log_params({"C": 1.0})
    lineage = {"training_set": str(snapshot), "feature_definitions": "fv-3f2a", "feature_service": "delay_v1"}
    registry.register("delays", LogisticRegression().fit(X, y), flavor="sklearn", signature=signature6,
                      run_id=run.run_id, lineage=lineage, metrics={"auc": 0.9})

    out = mm(["models", "show", "delays@1", "--json"], home)
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert shown["run_id"] == run.run_id and shown["lineage"] == lineage
    assert shown["run"]["found"] is True and shown["run"]["experiment"] == "delays"
    assert shown["run"]["data_snapshot"] == str(snapshot) and shown["run"]["feature_version"] == "fv-3f2a"
    assert shown["run"]["params"] == {"C": "1.0"}
    # the snapshot it names is the data the model was trained on
    assert pd.read_parquet(shown["lineage"]["training_set"]).shape == (len(X), 7)
    assert [f["name"] for f in shown["signature"]["inputs"]] == [f"f{i}" for i in range(6)]


def test_gate_rejects_worse_and_accepts_better(registry: Registry, home: Path, classification,
                                               signature6: Signature) -> None:
    X, y, Xt, yt = classification
    good = LogisticRegression().fit(X, y)
    noisy = np.random.default_rng(0).permutation(y)  # labels shuffled: a model of noise
    worse = LogisticRegression().fit(X, noisy)
    registry.register("m", good, flavor="sklearn", signature=signature6)
    registry.register("m", worse, flavor="sklearn", signature=signature6)
    registry.register("m", LogisticRegression(C=0.5).fit(np.vstack([X, Xt[:1000]]), np.r_[y, yt[:1000]]),
                      flavor="sklearn", signature=signature6)
    registry.set_alias("m", "production", 1, actor="ci", reason="baseline")
    data = home.parent / "holdout.parquet"
    _frame(Xt[1000:], yt[1000:]).to_parquet(data)
    args = ["--against", "m@production", "--data", str(data), "--min", "auc=0.70", "--max-regression", "auc=0.005"]

    rejected = mm(["gate", "--candidate", "m@2", *args], home)
    assert rejected.returncode == 1, rejected.stdout + rejected.stderr
    assert "REJECT" in rejected.stdout and "rejected m@2" in rejected.stdout and "auc" in rejected.stdout

    accepted = mm(["gate", "--candidate", "m@3", *args, "--json"], home)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    result = json.loads(accepted.stdout)
    assert result["accepted"] is True and result["against"] == "m@1"
    assert {c["rule"] for c in result["checks"]} == {"min", "max_regression"}

    assert registry.get("m", 2).gate["accepted"] is False
    assert "minimum 0.7000" in registry.get("m", 2).gate["reason"]
    assert registry.get("m", 3).gate["decision"] == "accept"
