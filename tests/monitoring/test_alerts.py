"""Alerts: one firing and one resolved notification per incident, actions run once, state shared in the DB."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from modelmill.config import Settings
from modelmill.errors import ConfigError
from modelmill.monitoring import ActionRegistry, Alert, AlertEvaluator, LogSink, Rule, WebhookSink
from modelmill.monitoring.alerts import rules_from_config
from modelmill.monitoring.monitor import MonitoringConfig, ProjectMeasure
from modelmill.project import Project
from modelmill.registry import Registry
from modelmill.rollout import RolloutController
from modelmill.serving import RouteTable, Variant
from modelmill.store.tables import audit_log
from modelmill.training import Scheduler

from .conftest import log_predictions

T0 = dt.datetime(2024, 7, 1, 12, tzinfo=dt.UTC)
ROOT = Path(__file__).resolve().parents[2]
MARKER = "tests.training.sample_pipelines:marker"
FLAKY = "tests.training.sample_pipelines:flaky"


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


def _slow(project: Project, model: str, at: dt.datetime = T0) -> None:
    rng = np.random.default_rng(7)
    log_predictions(project, model=model, version=1, ts=at, features=pd.DataFrame({"x": rng.normal(size=200)}),
                    outputs=rng.random(200), latency_ms=rng.normal(90.0, 1.0, 200))


def _fire(project: Project, actions: list[Any], model: str = "flights") -> AlertEvaluator:
    """A latency rule with ``actions``, fired once by slow traffic of ``model``."""
    rule = Rule.from_mapping({"name": "Slow", "kind": "latency_p95", "threshold": 50, "window": "5m",
                              "model": model, "actions": actions})
    ev = AlertEvaluator(project, [rule], measure=ProjectMeasure(project))
    _slow(project, model)
    assert [a.status for a in ev.evaluate(T0.timestamp() + 120)] == ["firing"]
    return ev


def _actions_on_alert(ev: AlertEvaluator) -> list[dict[str, Any]]:
    [alert] = ev.active()
    return list(alert["actions"])


def test_pipeline_action_queues_the_pipeline_with_the_rules_params(project: Project, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    counter = tmp_path / "calls.txt"
    monkeypatch.setenv("MM_TEST_COUNTER", str(counter))
    ev = _fire(project, [{"action": f"pipeline:{MARKER}", "params": {"tag": "from-alert"}}])
    [queued] = _actions_on_alert(ev)
    assert queued["ok"] and queued["trigger_status"] == "pending" and queued["params"] == {"tag": "from-alert"}
    [info] = Scheduler(project).triggers()
    assert info.id == queued["trigger_id"] and info.status == "pending"
    for i in range(3):  # the same episode, seen again by this and another monitor, queues nothing more
        AlertEvaluator(project, ev.rules, measure=ProjectMeasure(project)).evaluate(T0.timestamp() + 130 + i)
    [done] = Scheduler(project).tick()
    assert done.status == "finished" and counter.read_text().split() == ["slow_mark:from-alert"]
    [after] = _actions_on_alert(ev)
    assert after["ok"] and after["trigger_status"] == "finished"
    assert [h["action"] for h in ev.history("Slow")][:2] == ["alert.trigger.finished", "alert.action"]


def test_pipeline_action_without_the_params_its_pipeline_needs_is_refused_on_the_alert(project: Project) -> None:
    ev = _fire(project, [f"pipeline:{MARKER}"])
    [refused] = _actions_on_alert(ev)
    assert not refused["ok"] and "tag" in refused["error"] and "params" in refused["error"]
    assert Scheduler(project).triggers() == []  # no trigger that could only fail


def test_a_failed_pipeline_run_shows_on_its_trigger_its_alert_and_the_scheduler_exit(
        project: Project, settings: Settings, tmp_path: Path) -> None:
    fail = tmp_path / "fail"
    fail.touch()
    ev = _fire(project, [{"action": f"pipeline:{FLAKY}", "params": {"n": 200, "seed": 1}}])
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELMILL_")}
    env |= {"MODELMILL_HOME": str(settings.home), "PYTHONPATH": str(ROOT), "MM_TEST_FAIL": str(fail)}
    run = subprocess.run([sys.executable, "-m", "modelmill", "scheduler", "--once", "--json"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stderr
    out = json.loads(run.stdout)
    assert out["failed"] == 1 and out["ran"][0]["status"] == "failed" and "Traceback" not in run.stderr
    [info] = Scheduler(project).triggers()
    assert info.status == "failed" and "planted failure" in (info.error or "")
    [action] = _actions_on_alert(ev)
    assert not action["ok"] and action["trigger_status"] == "failed" and "planted failure" in action["error"]
    [failed] = [h for h in ev.history("Slow") if h["action"] == "alert.trigger.failed"]
    assert failed["detail"]["trigger_id"] == info.id


def _register(project: Project) -> None:
    from tests.serving.conftest import signature, train_lr

    registry = Registry(project)
    for seed in range(2):
        registry.register("m", train_lr(seed), flavor="sklearn", signature=signature())
    registry.set_alias("m", "production", 1)


def test_rollback_action_rolls_back_the_models_active_rollout(project: Project) -> None:
    _register(project)
    ctl = RolloutController(project)
    ctl.start("m", 2, baseline="production", plan="10,100")
    assert {v.name: v.weight for v in RouteTable(project).get("m").live} == {"candidate": 10.0, "stable": 90.0}
    ev = _fire(project, ["rollback:m"], model="m")
    state = ctl.get("m")
    assert state.status == "rolled_back" and "alert Slow fired" in state.reason
    route = RouteTable(project).get("m")
    assert [(v.name, v.version, v.weight, v.shadow) for v in route.variants] == [("stable", "production", 1.0, False)]
    [done] = _actions_on_alert(ev)
    assert done["ok"] and "rolled back rollout" in done["result"]
    with project.db.engine.connect() as conn:
        trail = conn.execute(sa.select(audit_log.c.actor, audit_log.c.action).order_by(audit_log.c.id)).all()
    assert ("monitoring", "rollout.rollback") in trail and ("monitoring", "alert.action") in trail


def test_rollback_action_without_a_rollout_routes_all_traffic_to_production(project: Project) -> None:
    _register(project)
    RouteTable(project).set("m", [Variant("a", 1, 50), Variant("b", 2, 50)], actor="test")  # an operator's split
    ev = _fire(project, ["rollback:m"], model="m")
    route = RouteTable(project).get("m")
    assert [(v.name, v.version, v.weight) for v in route.variants] == [("stable", "production", 1.0)]
    [done] = _actions_on_alert(ev)
    assert done["ok"] and "all traffic to production (version 1)" in done["result"]


def test_rollback_action_with_nothing_to_roll_back_to_fails_on_the_alert(project: Project) -> None:
    RouteTable(project).set("m", [Variant("a", 3, 1)], actor="test")
    ev = _fire(project, ["rollback:m"], model="m")
    [failed] = _actions_on_alert(ev)
    assert not failed["ok"] and "production" in failed["error"]
    assert [v.version for v in RouteTable(project).get("m").variants] == [3]  # left as it was


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
    with_params = Rule.from_mapping({"name": "x", "kind": "drift_share", "threshold": 0.5, "actions": [
        {"action": "pipeline:retrain", "params": {"days": 60}}, "rollback:flights"]})
    assert with_params.actions == ("pipeline:retrain", "rollback:flights")
    assert with_params.action_params == {"pipeline:retrain": {"days": 60}}
    for bad in (["rollback:"], "pipeline:retrain", [{"action": "rollback:m", "params": {"x": 1}}],
                [{"pipeline": "retrain"}], [{"action": "pipeline:p", "params": [1]}], ["pipeline:p", "pipeline:p"]):
        with pytest.raises(ConfigError):
            Rule.from_mapping({"name": "x", "kind": "drift_share", "threshold": 0.5, "actions": bad})
