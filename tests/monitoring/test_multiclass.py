"""Monitoring knows a multiclass model, through the real server, the real prediction log and the real labels
route: the log keeps each row's class probabilities, delayed labels give sklearn's log loss and macro F1, and a
reference profile (``modelmill reference``) holds the predicted distribution per class, which then drifts."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, log_loss
from starlette.testclient import TestClient
from typer.testing import CliRunner

from modelmill.cli import app as cli
from modelmill.config import load_settings
from modelmill.monitoring import Monitor, MonitoringConfig
from modelmill.monitoring.performance import PerformanceMonitor
from modelmill.project import Project
from modelmill.registry import Field, Registry, Signature, clear_cache
from modelmill.security import Authenticator, TokenStore
from modelmill.serving import ServerConfig, build_server, create_app
from modelmill.store.feedback import Feedback

COLS = ["a", "b", "c"]
CLASSES = [3, 5, 7]  # numeric class values that are not their indices: labels must be mapped, not assumed


def _data(n: int, seed: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    X = np.random.default_rng(seed).normal(size=(n, 3))
    X[:, 0] += shift
    y = np.asarray(CLASSES)[np.argmax(X + np.random.default_rng(seed + 1).normal(scale=0.7, size=X.shape), axis=1)]
    return X, y


class Served:
    def __init__(self, root: Path, project: Project, client: TestClient, model: Any, label_token: str) -> None:
        self.root, self.project, self.client, self.model, self.label_token = root, project, client, model, label_token

    def infer(self, X: np.ndarray, rid: str) -> dict[str, Any]:
        body = {"id": rid, "inputs": [{"name": c, "datatype": "FP64", "shape": [len(X)], "data": X[:, i].tolist()}
                                      for i, c in enumerate(COLS)]}
        r = self.client.post("/v2/models/animals/infer", json=body)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def flush(self) -> None:
        self.client.app.state.server.predlog.flush()  # type: ignore[attr-defined]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    root = tmp_path / "proj"
    root.mkdir()
    (root / "modelmill.toml").write_text('home = ".modelmill"\n\n[serving]\ncache = false\n')
    clear_cache()
    project = Project(load_settings(cwd=root))
    X, y = _data(600, 0)
    model = LogisticRegression(max_iter=500).fit(X, y)
    # no task recorded by hand: registering a classifier of three classes records it (lineage task, classes)
    mv = Registry(project).register("animals", model, flavor="sklearn",
                                    signature=Signature(inputs=[Field(c) for c in COLS]))
    assert (mv.lineage["task"], mv.lineage["classes"]) == ("multiclass", [float(c) for c in CLASSES])
    pd.DataFrame(X, columns=COLS).to_parquet(root / "train.parquet")
    store = TokenStore(project)
    _, label = store.create("label", name="labeller")
    config = ServerConfig.from_section(project.settings.section("serving"), models=["animals@1"])
    with TestClient(create_app(build_server(project, config), auth=Authenticator(store, mode="control"))) as client:
        yield Served(root, project, client, model, label)
    project.close()


def test_the_log_keeps_the_probabilities_and_labels_give_sklearns_multiclass_metrics(served: Served) -> None:
    X, y = _data(120, 7)
    answer = served.infer(X, "batch")
    served.flush()
    proba = served.model.predict_proba(X)
    np.testing.assert_allclose(np.asarray(answer["outputs"][0]["data"]).reshape(-1, 3), proba, rtol=1e-12)

    served_rows = Feedback(served.project.offline).served_features("animals", 1)
    assert served_rows is not None and served_rows.num_rows == 120
    np.testing.assert_allclose(np.asarray(served_rows.column("probabilities").to_pylist()), proba, rtol=1e-12)
    np.testing.assert_array_equal(served_rows.column("output").to_numpy(), proba.argmax(axis=1))

    labelled = 100  # the last 20 predictions stay unlabelled: they must not count
    body = {"labels": [{"id": f"batch/{i}", "label": int(y[i])} for i in range(labelled)]}
    r = served.client.post("/v1/models/animals/labels", json=body,
                           headers={"Authorization": f"Bearer {served.label_token}"})
    assert r.status_code == 200 and r.json()["accepted"] == labelled, r.text
    refused = served.client.post("/v1/models/animals/labels", json={"labels": [{"id": "batch/0", "label": 4}]},
                                 headers={"Authorization": f"Bearer {served.label_token}"})
    assert refused.status_code == 400 and "labels[0].label" in refused.text  # 4 is not one of the classes

    yl, pl = y[:labelled], proba[:labelled]
    expected = {"log_loss": log_loss(yl, pl, labels=CLASSES),
                "macro_f1": f1_score(yl, served.model.predict(X[:labelled]), average="macro"),
                "accuracy": accuracy_score(yl, served.model.predict(X[:labelled]))}
    [row] = Monitor(served.project, MonitoringConfig.from_section({})).performance(now=time.time() + 1)
    assert (row["model"], row["version"], row["task"], row["task_from"]) == ("animals", 1, "multiclass", "declared")
    assert row["status"] == "measured" and row["n"] == labelled
    for name, value in expected.items():
        m = row["metrics"][name]
        assert m["status"] == "measured" and m["n"] == labelled, m
        assert m["value"] == pytest.approx(value, rel=1e-9), name

    [summary] = PerformanceMonitor(served.project).summary(model="animals")
    assert summary["n"] == labelled and summary["n_unknown_class"] == 0
    for name, value in expected.items():
        assert summary[name] == pytest.approx(value, rel=1e-9), name


def test_a_multiclass_reference_profiles_each_class_and_the_served_distribution_drifts(served: Served) -> None:
    runner = CliRunner()


    here = os.getcwd()
    os.chdir(served.root)
    try:
        result = runner.invoke(cli, ["reference", "animals@1", "--data", "train.parquet", "--json"])
    finally:
        os.chdir(here)
    assert result.exit_code == 0, result.output
    names = [f"__prediction__[{k}]" for k in range(3)]
    assert set(names) <= set(json.loads(result.output)["columns"])

    monitor = Monitor(served.project, MonitoringConfig.from_section({}))
    t0 = time.time()
    served.infer(_data(400, 11)[0], "same")  # the training distribution
    served.flush()
    t1 = time.time()
    same = monitor.window_drift("animals", 1, start=t0 - 1, end=t1 + 1)
    assert same is not None
    same_report, n = same
    assert n == 400 and set(names) <= set(same_report.columns)
    assert not any(same_report.columns[c].drift for c in names)

    time.sleep(0.01)
    t2 = time.time()
    served.infer(_data(400, 12, shift=1.5)[0], "shifted")  # pushes rows towards the first class
    served.flush()
    shifted = monitor.window_drift("animals", 1, start=t2, end=time.time() + 1)
    assert shifted is not None
    report, n = shifted
    assert n == 400
    assert report.columns["__prediction__[0]"].drift  # the first class's probability moved


def test_one_log_buffer_holds_multiclass_and_binary_rows_of_the_same_columns(tmp_path: Path) -> None:
    from modelmill.store import OfflineStore
    from modelmill.store.feedback import PredictionLog

    store = OfflineStore(str(tmp_path))
    log = PredictionLog(store)
    X = np.arange(6.0).reshape(3, 2)
    proba = np.array([[0.1, 0.9, 0.0], [0.5, 0.2, 0.3], [0.2, 0.2, 0.6]])
    log.append("m1", "multi", 1, "default", None, ("a", "b"), X, proba.argmax(axis=1).astype(float), 0.1,
               probabilities=proba)
    log.append("b1", "bin", 1, "default", None, ("a", "b"), X[:1], np.array([0.7]), 0.1)
    log.append("m2", "multi", 1, "default", None, ("a", "b"), X[:1], np.array([2.0]), 0.1,
               probabilities=np.array([[0.0, 0.0, 1.0]]))
    with pytest.raises(ValueError, match="probabilities of shape"):
        log.append("m3", "multi", 1, "default", None, ("a", "b"), X, np.zeros(3), 0.1, probabilities=proba[:2])
    assert log.flush() == 5
    multi = Feedback(store).served_features("multi", 1)
    binary = Feedback(store).served_features("bin", 1)
    assert multi is not None and binary is not None
    assert multi.column("probabilities").to_pylist() == [*proba.tolist(), [0.0, 0.0, 1.0]]
    assert binary.column("probabilities").to_pylist() == [None]


def test_a_rolling_reference_compares_each_class_of_the_logged_window_before(served: Served) -> None:
    monitor = Monitor(served.project, MonitoringConfig.from_section(
        {"drift": {"reference": "rolling", "reference_windows": 100}}))
    served.infer(_data(400, 21)[0], "before")
    served.flush()
    time.sleep(0.01)
    t = time.time()
    served.infer(_data(400, 22, shift=1.5)[0], "after")
    served.flush()
    result = monitor.window_drift("animals", 1, start=t, end=t + 2)  # the reference: the 200 s before t
    assert result is not None
    report, n = result
    assert n == 400 and report.reference is not None and report.reference["kind"] == "rolling"
    assert report.reference["n_outputs"] == 400
    names = {f"__prediction__[{k}]" for k in range(3)}
    assert names <= set(report.columns) and report.columns["__prediction__[0]"].drift
