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
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert {f["feature"]: f["mismatches"] for f in report["features"]} == {"weather:temp": 2, "weather:visib": 1}
