"""A regression model's delayed-label metrics (MAE, RMSE) through the real server, the real prediction log and the
real labels route, for a regressor registered without a task: registering it records one."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LinearRegression
from sklearn.metrics import mean_absolute_error, mean_squared_error
from starlette.testclient import TestClient

from modelmill.config import load_settings
from modelmill.monitoring import Monitor, MonitoringConfig
from modelmill.project import Project
from modelmill.registry import Field, Registry, Signature, clear_cache
from modelmill.security import Authenticator, TokenStore
from modelmill.serving import ServerConfig, build_server, create_app

COLS = ["a", "b"]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Project, TestClient, LinearRegression, str]]:
    root = tmp_path / "proj"
    root.mkdir()
    (root / "modelmill.toml").write_text('home = ".modelmill"\n\n[serving]\ncache = false\n')
    clear_cache()
    project = Project(load_settings(cwd=root))
    X = np.random.default_rng(0).normal(size=(200, 2))
    model = LinearRegression().fit(X, X @ [3.0, -1.0] + 10)
    mv = Registry(project).register("price", model, flavor="sklearn", signature=Signature(inputs=[Field(c) for c in COLS]))
    assert mv.lineage["task"] == "regression"  # not the default signature's binary 'probability'
    store = TokenStore(project)
    _, label = store.create("label", name="labeller")
    config = ServerConfig.from_section(project.settings.section("serving"), models=["price@1"])
    with TestClient(create_app(build_server(project, config), auth=Authenticator(store, mode="control"))) as client:
        yield project, client, model, label
    project.close()


def test_labels_through_the_route_give_sklearns_mae_and_rmse(served: tuple[Project, TestClient, LinearRegression,
                                                                             str]) -> None:
    project, client, model, label = served
    X = np.random.default_rng(5).normal(size=(40, 2))
    body = {"id": "req", "inputs": [{"name": c, "datatype": "FP64", "shape": [40], "data": X[:, i].tolist()}
                                    for i, c in enumerate(COLS)]}
    assert client.post("/v2/models/price/infer", json=body).status_code == 200
    client.app.state.server.predlog.flush()  # type: ignore[attr-defined]
    y = X @ [3.0, -1.0] + 10 + np.random.default_rng(6).normal(scale=2.0, size=40)
    labels = {"labels": [{"id": f"req/{i}", "label": float(y[i])} for i in range(30)]}  # 10 stay unlabelled
    r = client.post("/v1/models/price/labels", json=labels, headers={"Authorization": f"Bearer {label}"})
    assert r.status_code == 200 and r.json()["accepted"] == 30, r.text
    [row] = Monitor(project, MonitoringConfig.from_section({})).performance(now=time.time() + 1)
    assert (row["task"], row["task_from"], row["n"], row["status"]) == ("regression", "declared", 30, "measured")
    pred = model.predict(X[:30])
    assert row["metrics"]["mae"]["value"] == pytest.approx(mean_absolute_error(y[:30], pred), rel=1e-9)
    assert row["metrics"]["rmse"]["value"] == pytest.approx(np.sqrt(mean_squared_error(y[:30], pred)), rel=1e-9)
    assert row["metrics"]["rmse"]["n"] == 30
