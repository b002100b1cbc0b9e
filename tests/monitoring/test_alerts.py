"""Alerts: one firing and one resolved notification per incident, actions run once, state shared in the DB."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pandas as pd
import pytest

from modelmill.config import Settings
from modelmill.errors import ConfigError
from modelmill.monitoring import ActionRegistry, Alert, AlertEvaluator, LogSink, Rule, WebhookSink
from modelmill.monitoring.alerts import rules_from_config
from modelmill.monitoring.monitor import MonitoringConfig, ProjectMeasure
from modelmill.project import Project

from .conftest import log_predictions

T0 = dt.datetime(2024, 7, 1, 12, tzinfo=dt.UTC)


class Receiver:
    """An Alertmanager-style webhook receiver on loopback that records every POSTed body."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def _traffic(project: Project, at: dt.datetime, latency_ms: float, n: int = 200) -> None:
    rng = np.random.default_rng(int(at.timestamp()))
    log_predictions(project, model="flights", version=1, ts=at, features=pd.DataFrame({"x": rng.normal(size=n)}),
                    outputs=rng.random(n), latency_ms=rng.normal(latency_ms, 1.0, n))


def _incident(project: Project, receiver: Receiver, actions: ActionRegistry) -> list[AlertEvaluator]:
    rule = Rule.from_mapping({"name": "LatencyHigh", "kind": "latency_p95", "threshold": 50, "window": "5m",
                              "actions": ["pipeline:retrain_flights"], "severity": "page"})
    sinks = [WebhookSink(url=receiver.url), LogSink()]
    # two monitors watching the same project: their shared state must still notify and act once
    return [AlertEvaluator(project, [rule], measure=ProjectMeasure(project), sinks=sinks, actions=actions)
            for _ in range(2)]


def test_incident_notifies_once_firing_once_resolved_and_starts_pipeline_once(
        project: Project, receiver: Receiver) -> None:
    started: list[Alert] = []
    actions = ActionRegistry()
    actions.register_kind("pipeline", lambda name: lambda alert: started.append(alert) or f"run of {name}")
    evaluators = _incident(project, receiver, actions)
    t0 = T0.timestamp()
    _traffic(project, T0, latency_ms=80.0)  # the incident: slow predictions
    for i, now in enumerate((t0 + 120, t0 + 150, t0 + 180, t0 + 240)):
        evaluators[i % 2].evaluate(now)
    _traffic(project, T0 + dt.timedelta(minutes=10), latency_ms=5.0)  # recovered
    for i, now in enumerate((t0 + 700, t0 + 730, t0 + 760)):
        evaluators[i % 2].evaluate(now)
    statuses = [b["status"] for b in receiver.bodies]
    assert statuses == ["firing", "resolved"]
    firing, resolved = receiver.bodies
    assert firing["version"] == "4" and firing["receiver"] == "modelmill"
    assert firing["groupLabels"] == {"alertname": "LatencyHigh"}
    alert = firing["alerts"][0]
    assert alert["labels"] == {"alertname": "LatencyHigh", "severity": "page", "model": "flights", "version": "1",
                               "variant": "main"}
    assert float(alert["annotations"]["value"]) > 50 and alert["endsAt"] == "0001-01-01T00:00:00Z"
    assert resolved["alerts"][0]["fingerprint"] == alert["fingerprint"]
    assert resolved["alerts"][0]["endsAt"].startswith("2024-07-01T12:11")
    assert len(started) == 1 and started[0].rule == "LatencyHigh"
    assert evaluators[0].active() == []


def test_pending_alert_needs_its_for_duration(project: Project, receiver: Receiver) -> None:
    rule = Rule.from_mapping({"name": "Slow", "kind": "latency_p95", "threshold": 50, "window": "10m", "for": "2m"})
    ev = AlertEvaluator(project, [rule], measure=ProjectMeasure(project), sinks=[WebhookSink(url=receiver.url)])
    _traffic(project, T0, latency_ms=90.0)
    t0 = T0.timestamp()
    assert ev.evaluate(t0 + 61) == []
    assert [a["state"] for a in ev.active()] == ["pending"]
    assert ev.evaluate(t0 + 121) == []
    assert [a.status for a in ev.evaluate(t0 + 182)] == ["firing"]
    assert len(receiver.bodies) == 1


def test_alert_state_on_postgres(settings: Settings, pg_url: str, receiver: Receiver) -> None:
    with Project(settings.replace(db=pg_url)) as project:
        calls: list[str] = []
        actions = ActionRegistry()
        actions.register_kind("pipeline", lambda name: lambda alert: calls.append(name))
        evaluators = _incident(project, receiver, actions)
        _traffic(project, T0, latency_ms=80.0)
        for ev in evaluators:
            ev.evaluate(T0.timestamp() + 120)
        assert [b["status"] for b in receiver.bodies] == ["firing"] and calls == ["retrain_flights"]


def test_pipeline_action_uses_the_training_stage(project: Project) -> None:
    training = pytest.importorskip("modelmill.training")
    if not hasattr(training, "trigger"):
        pytest.skip("modelmill.training does not export trigger yet")
    rule = Rule.from_mapping({"name": "Slow", "kind": "latency_p95", "threshold": 50, "window": "5m",
                              "actions": ["pipeline:retrain_flights"]})
    results: list[Any] = []
    actions = ActionRegistry()
    original = actions.resolve

    def recording(spec: str, *, project: Project | None = None) -> Any:
        fn = original(spec, project=project)
        return lambda alert: results.append(fn(alert))

    actions.resolve = recording  # type: ignore[method-assign]
    ev = [AlertEvaluator(project, [rule], measure=ProjectMeasure(project), actions=actions) for _ in range(2)]
    _traffic(project, T0, latency_ms=80.0)
    for i in range(4):
        ev[i % 2].evaluate(T0.timestamp() + 120 + i)
    assert len(results) == 1 and isinstance(results[0], int)  # the trigger's id


def test_rules_are_validated() -> None:
    with pytest.raises(ConfigError):
        Rule.from_mapping({"name": "x", "kind": "nonsense", "threshold": 1})
    with pytest.raises(ConfigError):
        Rule.from_mapping({"name": "x", "kind": "latency_p95"})
    with pytest.raises(ConfigError):
        Rule.from_mapping({"name": "x", "kind": "feature_freshness", "threshold": 60})
    with pytest.raises(ConfigError):
        rules_from_config({"rules": [{"name": "a", "kind": "drift_share", "threshold": 0.5}] * 2})
    cfg = MonitoringConfig.from_section({
        "interval": "30s", "window": "1h", "model": "flights",
        "rules": [{"name": "Drift", "kind": "drift_share", "threshold": 0.5, "for": "10m"},
                  {"name": "AucDrop", "kind": "metric_below_baseline", "metric": "auc", "baseline": 0.8,
                   "margin": 0.05}],
        "sinks": [{"type": "log"}, {"type": "webhook", "url": "http://127.0.0.1:9/x"}],
        "drift": {"drift_share": 0.3, "columns": {"temp": {"test": "psi", "threshold": 0.2}}}})
    assert cfg.interval == 30 and cfg.rules[0].for_s == 600 and cfg.rules[0].model == "flights"
    assert cfg.rules[1].breached(0.74) and not cfg.rules[1].breached(0.76)
    assert cfg.drift.columns["temp"].test == "psi" and len(cfg.sinks) == 2
    with pytest.raises(ConfigError):
        MonitoringConfig.from_section({"sinks": [{"type": "email"}]})
