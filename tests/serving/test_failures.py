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


def test_every_outcome_is_in_the_prediction_log(project: Project) -> None:
    """The log alone counts a variant's requests and errors: a rollout without --metrics-url used to see a canary
    failing on 10% of requests as error-free, because failed requests were never logged."""
    from modelmill.rollout import ServingGuardrails

    model = f"m{uuid.uuid4().hex[:8]}"
    flaky = FunctionModel(model, 2, ["x"], lambda X: X[:, 0] if (X[:, 0] < 0.9).all() else _fails(X))
    source = StaticSource([FunctionModel(model, 1, ["x"], lambda X: X[:, 0]), flaky,
                           FunctionModel(model, 3, ["x"], _fails)])
    RouteTable(project).set(model, [Variant("stable", 1, 0.5), Variant("canary", 2, 0.5),
                                    Variant("shadow", 3, 0, shadow=True)])
    server = ModelServer(source, config=ServerConfig(log_predictions=True, cache=False), routes=RouteTable(project),
                         offline=project.offline)
    since = time.time() - 1
    rng = np.random.default_rng(0)
    sent: dict[str, list[int]] = {"stable": [], "canary": []}
    with TestClient(create_app(server)) as client:
        for i in range(300):
            x = float(rng.uniform())
            r = client.post(f"/v2/models/{model}/infer", headers={"x-routing-key": f"u{i}"},
                            json={"id": f"r{i}", "inputs": [{"name": "x", "shape": [1], "datatype": "FP64",
                                                             "data": [x]}]})
            sent["canary" if (r.status_code == 422 or r.json().get("model_version") == "2") else "stable"].append(
                r.status_code)
        bad_shape = {"id": "bad", "inputs": [{"name": "x", "shape": [2], "datatype": "FP64", "data": [1.0]}]}
        assert client.post(f"/v2/models/{model}/infer", json=bad_shape).status_code == 400
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(server._shadow_tasks):
            time.sleep(0.02)
    with project.offline.connect(["predictions"]) as con:
        rows = con.execute("SELECT variant, status, error, output IS NULL, cardinality(features) FROM predictions "
                           "WHERE model = ?", [model]).fetchall()
    failed_canary = [r for r in rows if r[0] == "canary" and r[1] == 422]
    assert len(failed_canary) == sent["canary"].count(422) > 10
    assert all(r[2] == "ModelFailed" and r[3] and r[4] == 0 for r in failed_canary)  # no output, no features
    assert sum(1 for r in rows if r[0] == "stable" and r[1] == 200) == sent["stable"].count(200)
    [refused] = [r[0] for r in rows if r[1] == 400]  # input the chosen version could not take is an outcome too
    assert sum(1 for r in rows if r[0] == "shadow" and r[1] == 422) == len(sent["stable"]) + sent["canary"].count(200)
    # ... so the guardrails count the canary's failures from the log alone, no /metrics needed.
    seen = ServingGuardrails(project).window(model, since=since, mark={})
    assert seen["canary"].errors == sent["canary"].count(422)
    assert seen["canary"].requests == len(sent["canary"]) + (refused == "canary")  # a 400 is a request, not an error
    assert seen["stable"].errors == 0 and seen["canary"].outputs.size == sent["canary"].count(200)


def test_a_version_that_cannot_load_is_reported(project: Project) -> None:
    """A route naming a version that fails to load: the server keeps the old one and says so, in
    /v2/models/{name}, in modelmill_model_load_failures_total and in the log."""
    model = f"m{uuid.uuid4().hex[:8]}"
    source = StaticSource([FunctionModel(model, 1, ["x"], lambda X: X[:, 0])])
    RouteTable(project).set(model, [Variant("stable", 1)])
    server = ModelServer(source, config=ServerConfig(log_predictions=False, reload_interval_s=0.05),
                         routes=RouteTable(project))
    with TestClient(create_app(server)) as client:
        assert "load_error" not in client.get(f"/v2/models/{model}").json()
        RouteTable(project).set(model, [Variant("stable", 7)])  # written behind the control plane's back
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and model not in server.load_errors:
            time.sleep(0.02)
        meta = client.get(f"/v2/models/{model}").json()
        time.sleep(0.2)  # several reloads: the failure is counted once, not once per reload
        text = client.get("/metrics").text
    assert meta["versions"] == ["1"] and "7" in meta["load_error"]
    assert _value("modelmill_model_load_failures_total", {"model": model}) == 1
    assert f'modelmill_model_load_failures_total{{model="{model}"}} 1.0' in text


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
