"""The monitoring loop end to end: windows of the prediction log against the stored reference, then rules."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from modelmill.monitoring import ActionRegistry, Monitor, MonitoringConfig, MonitoringExporter, ReferenceStore
from modelmill.project import Project
from modelmill.store.maps import MAP_TYPE

from .conftest import log_labels, log_predictions


def test_drifted_traffic_fires_the_drift_rule_once_and_exports_gauges(project: Project) -> None:
    rng = np.random.default_rng(21)
    # origin as the server receives it: its code in (EWR, JFK, LGA), a categorical column of the reference
    train = pd.DataFrame({"temp": rng.normal(5, 6, 4000), "wind": rng.gamma(2, 3, 4000),
                          "origin": rng.integers(0, 3, 4000)})
    ReferenceStore(project).compute("flights", 1, train, predictions=rng.beta(2, 5, 4000))
    calls: list[str] = []
    actions = ActionRegistry()
    actions.register_kind("pipeline", lambda name: lambda alert: calls.append(name))
    config = MonitoringConfig.from_section({
        "window": "1h", "models": ["flights"],
        "rules": [{"name": "DriftHigh", "kind": "drift_share", "threshold": 0.4, "window": "1h",
                   "actions": ["pipeline:retrain_flights"]},
                  {"name": "AucDrop", "kind": "metric_below_baseline", "metric": "auc", "baseline": 0.9,
                   "window": "1h"}]})
    exporter = MonitoringExporter(registry=CollectorRegistry())
    monitor = Monitor(project, config, actions=actions, exporter=exporter)
    t0 = dt.datetime(2013, 7, 1, tzinfo=dt.UTC)

    def hour(h: int, shift: float) -> float:
        feats = pd.DataFrame({"temp": rng.normal(5 + shift, 6, 800), "wind": rng.gamma(2, 3, 800),
                              "origin": rng.integers(0, 3, 800)})
        y = rng.integers(0, 2, 800)
        at = t0 + dt.timedelta(hours=h)
        ids = log_predictions(project, model="flights", version=1, ts=at, features=feats,
                              outputs=np.clip(0.08 * y + 0.92 * rng.beta(2, 5, 800), 0, 1), latency_ms=3.0,
                              spread_s=3000)
        log_labels(project, ids, y, at + dt.timedelta(minutes=55))
        return (at + dt.timedelta(hours=1)).timestamp()

    quiet = monitor.run_once(now=hour(0, 0.0))
    assert quiet["windows"][0]["n_rows"] == 800 and quiet["windows"][0]["dataset_drift"] is False
    assert project.offline.read("predictions").schema.field("features").type == MAP_TYPE  # serving's log
    assert [a["rule"] for a in quiet["alerts_changed"]] == ["AucDrop"]  # a weak model: below 0.9 - 0.05
    stormy = [monitor.run_once(now=hour(h, 15.0)) for h in (1, 2)]
    assert [a["rule"] for a in stormy[0]["alerts_changed"]] == ["DriftHigh"]
    assert stormy[1]["alerts_changed"] == []  # still firing: not notified again
    assert calls == ["retrain_flights"]
    window = stormy[0]["windows"][0]
    assert window["drift_share"] == pytest.approx(0.5)  # temp and the model's outputs, of 4 columns
    end = (t0 + dt.timedelta(hours=2)).timestamp()  # the first stormy window, read back from the log
    drift = monitor.window_drift("flights", 1, start=end - 3600, end=end)
    assert drift is not None and drift[1] == 800
    assert {c: v.type for c, v in drift[0].columns.items()} == {
        "temp": "numeric", "wind": "numeric", "origin": "categorical", "__prediction__": "numeric"}
    assert sorted(drift[0].drifted) == ["__prediction__", "temp"]
    text = generate_latest(exporter.registry).decode()
    assert 'modelmill_feature_drift{feature="temp",model="flights",version="1"} 1.0' in text
    assert 'modelmill_alert_active{alertname="DriftHigh"} 1.0' in text
    assert "modelmill_prediction_drift_score" in text and 'metric="auc"' in text
    calm = monitor.run_once(now=hour(3, 0.0))
    assert {a["rule"]: a["status"] for a in calm["alerts_changed"]}.get("DriftHigh") == "resolved"
    json.dumps(calm)  # the CLI prints it with --json
