"""Skew check: served vectors from the prediction log against their offline recomputation."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pyarrow as pa
import pytest

from modelmill.config import Settings
from modelmill.errors import NotFoundError
from modelmill.features import Entity, FeatureStore, FeatureView, Field
from modelmill.project import Project

T0 = dt.datetime(2013, 1, 1, 6, tzinfo=dt.UTC)
airport = Entity(name="airport", join_keys=["origin"])
weather = FeatureView(name="weather", entities=[airport], source="weather", timestamp_field="time_hour",
                      ttl=dt.timedelta(hours=2), fields=[Field("temp"), Field("visib")])


def setup_log(project: Project) -> FeatureStore:
    """A log written elsewhere: features by reference, with the entity keys inside (the old form)."""
    hours = [T0 + dt.timedelta(hours=h) for h in range(6)]
    project.offline.write("weather", pa.table({
        "origin": ["JFK"] * 6 + ["LGA"] * 6, "time_hour": hours * 2,
        "temp": [float(h) for h in range(12)], "visib": [10.0] * 12}), time_column="time_hour")
    fs = FeatureStore(project)
    fs.apply([weather])
    refs = ["weather:temp", "weather:visib"]
    rows = []
    for i in range(20):
        origin = "JFK" if i % 2 else "LGA"
        at = T0 + dt.timedelta(minutes=17 * i)
        fs.materialize_incremental(at)
        served = fs.get_online_features([{"origin": origin}], refs, at=at)
        vector = {"origin": origin, **served.rows()[0]}
        if i in (3, 8):
            vector["weather:temp"] += 0.5  # a serving bug: a stale cache, say
        if i == 11:
            vector["weather:visib"] = None
        rows.append({"request_id": f"r{i}", "ts": at, "model": "delay", "version": 1, "variant": "a",
                     "routing_key": None, "features": orjson.dumps(vector).decode(), "output": 0.1,
                     "latency_ms": 1.0})
    rows.append({**rows[0], "request_id": "no-key", "features": json.dumps({"weather:temp": 1.0})})
    rows.append({**rows[0], "request_id": "other", "model": "other"})
    project.offline.write("predictions", pa.Table.from_pylist(rows), time_column="ts")
    return fs


def test_skew_reports_mismatch_rate_per_feature(project: Project) -> None:
    fs = setup_log(project)
    report = fs.skew(model="delay")
    assert report.rows == 21 and report.skipped == 1
    by = {f.feature: f for f in report.features}
    assert (by["weather:temp"].compared, by["weather:temp"].mismatches) == (20, 2)
    assert by["weather:temp"].mismatch_rate == pytest.approx(0.1)
    assert (by["weather:visib"].mismatches, by["weather:visib"].null_online) == (1, 1)
    assert by["weather:temp"].null_offline == by["weather:temp"].null_online == 0
    assert fs.skew(model="delay", since=T0 + dt.timedelta(hours=3)).features[0].compared < 20


def test_skew_needs_a_prediction_log(project: Project) -> None:
    with pytest.raises(NotFoundError, match="predictions"):
        FeatureStore(project).skew()


def test_cli_skew_json(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with Project(Settings.defaults(home=home)) as project:
        setup_log(project)
    env = {**os.environ, "MODELMILL_HOME": str(home)}
    out = subprocess.run([sys.executable, "-m", "modelmill", "features", "skew", "--model", "delay", "--json"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stderr  # mismatches fail the command
    report = json.loads(out.stdout)
    assert report["status"] == "fail"
    assert {f["feature"]: f["mismatches"] for f in report["features"]} == {"weather:temp": 2, "weather:visib": 1}


# ---- the log as modelmill serve writes it --------------------------------------------------------------------


def _serve_through_the_feature_route(project: Project) -> tuple[FeatureStore, list[str]]:
    """Weather in the last hours, a registered model on feature service ``wx``, requests through the real
    server's feature route; then a newer JFK observation lands offline and is never materialised (a stale
    online store), and JFK is asked again. Returns the store and the request ids served stale."""
    import asyncio

    import numpy as np
    from sklearn.linear_model import LinearRegression
    from starlette.testclient import TestClient

    from modelmill.features import FeatureService
    from modelmill.registry import Field as SigField
    from modelmill.registry import Registry, Signature
    from modelmill.serving import ServerConfig, build_server, create_app

    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    hours = [now - dt.timedelta(hours=h) for h in (3, 2, 1)]
    project.offline.write("weather", pa.table({
        "origin": ["JFK"] * 3 + ["LGA"] * 3, "time_hour": hours * 2, "temp": [1.0, 2.0, 3.0, 11.0, 12.0, 13.0],
        "visib": [10.0] * 6}), time_column="time_hour")
    fs = FeatureStore(project)
    fs.apply([weather, FeatureService(name="wx", features=["weather:temp", "weather:visib"])])
    fs.materialize(now - dt.timedelta(days=1), now)
    X = np.random.default_rng(0).normal(size=(50, 2))
    Registry(project).register("wx_model", LinearRegression().fit(X, X @ [1.0, 2.0]), flavor="sklearn",
                               signature=Signature(inputs=[SigField("weather__temp", "float64"),
                                                           SigField("visib", "float64")],
                                                   outputs=[SigField("delay")]),
                               lineage={"feature_service": "wx"})
    Registry(project).set_alias("wx_model", "production", 1)
    server = build_server(project, ServerConfig(models=["wx_model@production"], cache=False))
    stale: list[str] = []
    with TestClient(create_app(server)) as client:
        def ask(origin: str) -> str:
            r = client.post("/v1/models/wx_model/predict", json={"entities": {"origin": origin}})
            assert r.status_code == 200, r.text
            return str(r.json()["request_id"])

        for i in range(12):
            ask("JFK" if i % 2 else "LGA")
        landed = dt.datetime.now(dt.UTC)  # after every request so far: they were served the current value
        project.offline.write("weather", pa.table({"origin": ["JFK"], "time_hour": [landed],
                                                   "temp": [99.0], "visib": [10.0]}), time_column="time_hour")
        stale = [ask("JFK") for _ in range(3)]
        ask("LGA")
        client.post("/v2/models/wx_model/infer", json={"inputs": [  # OIP: no entities, nothing to recompute
            {"name": "weather__temp", "shape": [1], "datatype": "FP64", "data": [1.0]},
            {"name": "visib", "shape": [1], "datatype": "FP64", "data": [1.0]}]})
        assert server.predlog is not None
        asyncio.run(asyncio.to_thread(server.predlog.flush))
    return fs, stale


def test_skew_compares_what_the_real_server_logged(project: Project) -> None:
    fs, stale = _serve_through_the_feature_route(project)
    report = fs.skew(model="wx_model")
    assert report.rows == 17 and report.compared == 16, report.as_dict()
    assert report.reasons == {"no entities logged (not the feature route)": 1}
    by = {f.feature: f for f in report.features}
    assert (by["weather:temp"].compared, by["weather:temp"].mismatches) == (16, len(stale))  # the stale JFK reads
    assert by["weather:visib"].mismatches == 0 and report.status == "fail"
    before = fs.skew(model="wx_model", until=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
    assert before.status == "no_data"  # nothing logged before then: no data, never a pass


def test_skew_without_comparable_rows_is_no_data(project: Project) -> None:
    """Every logged row unusable (no entities: OIP traffic): the report says no_data with the reason."""
    import numpy as np

    from modelmill.serving.predlog import PredictionLog

    log = PredictionLog(project.offline)
    for i in range(5):
        log.append(f"r{i}", "m", 1, "default", None, ("weather__temp",), np.array([[1.0]]), np.array([0.5]), 1.0)
    log.flush()
    report = FeatureStore(project).skew(model="m")
    assert report.status == "no_data" and report.compared == 0 and report.skipped == 5
