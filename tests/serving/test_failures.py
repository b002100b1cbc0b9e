"""Failures are attributed: a failed request carries its variant and version, a failing shadow is counted."""

from __future__ import annotations

import time
import uuid

import numpy as np
import pytest
from prometheus_client import REGISTRY
from starlette.testclient import TestClient

from modelmill.config import Settings
from modelmill.project import Project
from modelmill.serving import (
    FunctionModel,
    ModelServer,
    RouteTable,
    ServerConfig,
    StaticSource,
    Variant,
    create_app,
)


def _fails(X: np.ndarray) -> np.ndarray:
    raise ValueError("this version cannot predict")


def _value(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_failed_requests_carry_the_chosen_variant_and_version(project: Project) -> None:
    model = f"m{uuid.uuid4().hex[:8]}"  # the counters are process-wide: a name of its own
    source = StaticSource([FunctionModel(model, 1, ["x"], lambda X: X[:, 0]), FunctionModel(model, 2, ["x"], _fails)])
    RouteTable(project).set(model, [Variant("stable", 1, 0.5), Variant("canary", 2, 0.5)])
    server = ModelServer(source, config=ServerConfig(log_predictions=False), routes=RouteTable(project))
    body = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [1.0]}]}
    with TestClient(create_app(server)) as client:
        statuses = [client.post(f"/v2/models/{model}/infer", json=body, headers={"x-routing-key": f"u{i}"})
                    .status_code for i in range(200)]
        assert client.post(f"/v2/models/{model}/infer", content=b"{").status_code == 400
    failed = _value("modelmill_requests_total", {"route": "infer", "model": model, "version": "2",
                                                 "variant": "canary", "status": "422"})
    ok = _value("modelmill_requests_total", {"route": "infer", "model": model, "version": "1",
                                             "variant": "stable", "status": "200"})
    assert failed == statuses.count(422) > 50 and ok == statuses.count(200) > 50
    # only a request refused before any variant was chosen is left unattributed
    assert _value("modelmill_requests_total", {"route": "infer", "model": model, "version": "", "variant": "",
                                               "status": "422"}) == 0


def test_shadow_failures_are_counted(project: Project) -> None:
    model = f"m{uuid.uuid4().hex[:8]}"
    source = StaticSource([FunctionModel(model, 1, ["x"], lambda X: X[:, 0]),
                           FunctionModel(model, 2, ["x"], _fails),
                           FunctionModel(model, 3, ["x"], lambda X: X[:, 0] * np.nan)])
    RouteTable(project).set(model, [Variant("live", 1), Variant("broken", 2, 0, shadow=True),
                                    Variant("nan", 3, 0, shadow=True)])
    server = ModelServer(source, config=ServerConfig(log_predictions=False), routes=RouteTable(project))
    body = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [1.0]}]}
    with TestClient(create_app(server)) as client:
        assert all(client.post(f"/v2/models/{model}/infer", json=body).status_code == 200 for _ in range(20))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _value("modelmill_shadow_errors_total", {
                "model": model, "version": "3", "variant": "nan"}) < 20:
            time.sleep(0.02)
        text = client.get("/metrics").text
    assert _value("modelmill_shadow_errors_total", {"model": model, "version": "2", "variant": "broken"}) == 20
    assert _value("modelmill_shadow_errors_total", {"model": model, "version": "3", "variant": "nan"}) == 20
    assert f'modelmill_shadow_errors_total{{model="{model}",variant="broken",version="2"}} 20.0' in text


@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_set_returns_the_route_get_reads_back(request: pytest.FixtureRequest, settings: Settings, db: str) -> None:
    if db == "postgresql":
        settings = settings.replace(db=request.getfixturevalue("pg_url"))
    project = Project(settings)
    request.addfinalizer(project.close)
    table = RouteTable(project)
    # names whose order differs between Python and a case-insensitive database collation
    variants = [Variant("b", 1, 1), Variant("B", 2, 1), Variant("a", 3, 0, shadow=True), Variant("_z", 4, 2)]
    assert table.set("m", variants) == table.get("m")
    assert [v.name for v in table.get("m").variants] == ["B", "_z", "a", "b"]
