"""The HTTP control plane (modelmill.serving.control over modelmill.control): who may call each route, the
audit rows each change leaves, what a bad body or an unknown name answers, and each stage driven end to end
(a rollout started and promoted to completion, an experiment created, analysed and stopped, a pipeline run
triggered and followed, a monitoring round read back), with the CLI reading the same state."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient
from typer.testing import CliRunner

from modelmill.cli import app as cli_app
from modelmill.monitoring import Monitor, MonitoringConfig, Rule
from modelmill.project import Project
from modelmill.registry import Registry
from modelmill.security import Authenticator, TokenStore
from modelmill.serving import ServerConfig, build_server, create_app
from modelmill.store.tables import audit_log
from modelmill.training import Pipeline, Scheduler, register_pipeline, step
from tests.serving.conftest import COLUMNS, infer_body, make_project, open_project_at

ROLES = ("read", "predict", "label", "admin")


@step(inputs=["a", "b"], outputs=["total"])
def _add(a: int, b: int) -> int:
    return a + b


PIPELINE = register_pipeline(Pipeline("control-plane-sum", [_add]))

START = {"model": "clf", "version": 2, "baseline": "production", "plan": "shadow,50,100", "min_requests": 50,
         "off": ["label_loss"]}
EXPERIMENT: dict[str, Any] = {"name": "ab", "model": "clf", "metric": "output", "min_sample_size": 5,
              "variants": [{"name": "control", "version": 1, "weight": 50},
                           {"name": "treatment", "version": 2, "weight": 50}]}
TRIGGER = {"reason": "drift on f3", "key": "alert-1", "params": {"a": 40, "b": 2}}

# Every route of the control plane: (method, path, body, the role it needs).
ROUTES: list[tuple[str, str, Any, str]] = [
    ("GET", "/v1/models", None, "read"),
    ("GET", "/v1/models/clf/versions/1", None, "read"),
    ("GET", "/v1/rollouts", None, "read"),
    ("POST", "/v1/rollouts", START, "admin"),
    ("GET", "/v1/rollouts/clf", None, "read"),
    ("POST", "/v1/rollouts/clf/promote", {"reason": "looks fine"}, "admin"),
    ("POST", "/v1/rollouts/clf/rollback", {"reason": "not today"}, "admin"),
    ("POST", "/v1/experiments", EXPERIMENT, "admin"),
    ("GET", "/v1/experiments/ab", None, "read"),
    ("POST", "/v1/experiments/ab/stop", {"winner": "treatment"}, "admin"),
    ("POST", "/v1/pipelines/control-plane-sum/runs", TRIGGER, "admin"),
    ("GET", "/v1/pipelines/control-plane-sum/runs/1", None, "read"),
    ("GET", "/v1/monitoring", None, "read"),
    ("GET", "/v1/webhooks/deliveries", None, "read"),
]


class Plane:
    def __init__(self, client: TestClient, project: Project, secrets: dict[str, str]) -> None:
        self.client, self.project, self.secrets = client, project, secrets

    def call(self, method: str, path: str, body: Any = None, role: str | None = "admin", **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.secrets[role]}"} if role else None
        return self.client.request(method, path, json=body, headers=headers, **kwargs)

    def ok(self, method: str, path: str, body: Any = None, role: str = "admin") -> Any:
        r = self.call(method, path, body, role)
        assert r.status_code == 200, (method, path, r.status_code, r.text)
        return r.json()

    def flush(self) -> None:
        app: Any = self.client.app
        app.state.server.predlog.flush()

    def audited(self, action: str) -> list[Any]:
        with self.project.db.engine.connect() as conn:
            return list(conn.execute(sa.select(audit_log).where(audit_log.c.action == action)
                                     .order_by(audit_log.c.id)))


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[Plane]:
    root = make_project(tmp_path / "proj")  # clf v1 (production) and v2
    project = open_project_at(root)
    store = TokenStore(project)
    secrets = {role: store.create(role, name=f"{role}-job")[1] for role in ROLES}
    config = ServerConfig.from_section(project.settings.section("serving"), models=["clf@production"])
    app = create_app(build_server(project, config), auth=Authenticator(store, mode="control"))
    with TestClient(app) as client:
        yield Plane(client, project, secrets)
    project.close()


def _prepare(plane: Plane, path: str) -> None:
    """The state a route's 200 needs: a rollout to look at or act on, an experiment, a trigger."""
    if path.startswith("/v1/rollouts/"):
        plane.ok("POST", "/v1/rollouts", START)
    elif path.startswith("/v1/experiments/"):
        plane.ok("POST", "/v1/experiments", EXPERIMENT)
    elif path.startswith("/v1/pipelines/") and path.count("/") == 5:
        assert plane.ok("POST", "/v1/pipelines/control-plane-sum/runs", TRIGGER)["trigger_id"] == 1


@pytest.mark.parametrize(("method", "path", "body", "needed"), ROUTES, ids=[f"{m} {p}" for m, p, _, _ in ROUTES])
def test_each_route_needs_a_token_and_its_role(plane: Plane, method: str, path: str, body: Any, needed: str) -> None:
    _prepare(plane, path)
    no_token = plane.call(method, path, body, role=None)
    assert no_token.status_code == 401 and "needs an API token" in no_token.json()["error"], no_token.text
    bad = plane.client.request(method, path, json=body, headers={"Authorization": "Bearer mmt_000000000000_x"})
    assert bad.status_code == 401 and "unknown, revoked or malformed" in bad.json()["error"]
    # read is every role's; a change needs admin, so read, predict and label are each refused
    refused = [r for r in ROLES if needed == "admin" and r != "admin"]
    for role in refused:
        r = plane.call(method, path, body, role=role)
        assert r.status_code == 403 and f"role {needed}" in r.json()["error"], (role, r.text)
    allowed = [r for r in ROLES if r not in refused]
    assert allowed == (["admin"] if needed == "admin" else list(ROLES))
    for role in allowed if method == "GET" else allowed[:1]:  # a change is made once
        r = plane.call(method, path, body, role=role)
        assert r.status_code == 200, (role, r.text)


def _audit(plane: Plane, action: str) -> dict[str, Any]:
    rows = plane.audited(action)
    assert len(rows) == 1, (action, rows)
    assert rows[0].actor == "token:admin-job", rows[0]
    return dict(rows[0].detail)


def test_every_change_is_audited_with_the_tokens_name(plane: Plane) -> None:
    plane.ok("POST", "/v1/rollouts", START)
    assert _audit(plane, "rollout.start")["plan"] == ["shadow", 50, 100]
    plane.ok("POST", "/v1/rollouts/clf/promote", {"reason": "looks fine"})
    assert _audit(plane, "rollout.advance")["reason"] == "looks fine"
    plane.ok("POST", "/v1/rollouts/clf/rollback")
    assert _audit(plane, "rollout.rollback")["reason"] == "rolled back by hand"
    # the routes the rollout set are audited as the token too
    assert {r.actor for r in plane.audited("serving.route.set")} == {"token:admin-job"}
    plane.ok("POST", "/v1/experiments", EXPERIMENT)
    assert _audit(plane, "experiment.create")["primary_metric"] == "output"
    plane.ok("POST", "/v1/experiments/ab/stop", {"winner": "treatment"})
    assert _audit(plane, "experiment.stop") == {"winner": "treatment"}
    plane.ok("POST", "/v1/pipelines/control-plane-sum/runs", TRIGGER)
    assert _audit(plane, "pipeline.trigger") == {"trigger_id": 1, "reason": "drift on f3", "key": "alert-1",
                                                 "params": {"a": 40, "b": 2}}
    refused = plane.call("POST", "/v1/pipelines/control-plane-sum/runs", TRIGGER, role="read")
    assert refused.status_code == 403 and len(plane.audited("pipeline.trigger")) == 1


def test_a_rollout_started_over_http_is_promoted_to_completion_and_moves_production(plane: Plane) -> None:
    started = plane.ok("POST", "/v1/rollouts", START)["rollout"]
    assert (started["candidate"], started["baseline"], started["stage"], started["status"]) == (
        2, "production", "shadow", "running")
    assert started["guardrails"]["max_label_loss_increase"] is None and started["min_requests"] == 50
    assert [r["model"] for r in plane.ok("GET", "/v1/rollouts", role="read")["rollouts"]] == ["clf"]
    # the first stage's split is in place at once: production serves, the candidate is mirrored
    route = plane.ok("GET", "/v1/routes/clf", role="read")
    assert {(v["name"], v["version"], v["shadow"]) for v in route["variants"]} == {
        ("stable", "production", False), ("candidate", 2, True)}
    again = plane.call("POST", "/v1/rollouts", START)
    assert again.status_code == 409 and "already has an active rollout" in again.json()["error"]
    # the CLI reads the same rollout
    cli = CliRunner().invoke(cli_app, ["rollout", "status", "--json"], env={"MODELMILL_HOME": str(
        plane.project.settings.home)})
    assert cli.exit_code == 0 and json.loads(cli.stdout)["rollouts"][0]["id"] == started["id"], cli.output
    stages = [plane.ok("POST", "/v1/rollouts/clf/promote")["rollout"]["stage"] for _ in range(2)]
    assert stages == ["50", "100"]
    done = plane.ok("POST", "/v1/rollouts/clf/promote", {"reason": "all good"})
    assert done["action"] == "complete" and done["rollout"]["status"] == "completed"
    assert Registry(plane.project).aliases("clf")["production"] == 2
    status = plane.ok("GET", "/v1/rollouts/clf", role="read")
    assert [e["action"] for e in status["events"]] == ["start", "advance", "advance", "complete", "alias"]
    assert {e["actor"] for e in status["events"]} == {"token:admin-job"}
    assert plane.ok("GET", "/v1/rollouts", role="read")["rollouts"] == []
    # the version's story shows the move, by whom and why
    moves = plane.ok("GET", "/v1/models/clf/versions/2", role="read")["alias_history"]
    assert [(m["alias"], m["version"], m["previous"], m["actor"]) for m in moves] == [
        ("production", 2, 1, "token:admin-job")]
    served = plane.client.post("/v2/models/clf/infer", json=infer_body(np.zeros((1, len(COLUMNS)))))
    assert served.status_code == 200 and served.json()["model_version"] == "2", served.text
    finished = plane.call("POST", "/v1/rollouts/clf/promote")
    assert finished.status_code == 409 and "nothing to promote" in finished.json()["error"]


def test_a_rollback_over_http_returns_traffic_to_the_baseline(plane: Plane) -> None:
    plane.ok("POST", "/v1/rollouts", {**START, "baseline": 1, "plan": [50, 100]})
    back = plane.ok("POST", "/v1/rollouts/clf/rollback", {"reason": "latency"})
    assert back["action"] == "rollback" and back["rollout"]["status"] == "rolled_back"
    route = plane.ok("GET", "/v1/routes/clf", role="read")
    assert [(v["version"], v["weight"]) for v in route["variants"]] == [(1, 1.0)]
    assert Registry(plane.project).aliases("clf")["production"] == 1


def test_the_registry_reads_models_versions_lineage_and_gate_decisions(plane: Plane) -> None:
    models = plane.ok("GET", "/v1/models", role="read")["models"]
    assert [(m["name"], m["versions"], m["aliases"]) for m in models] == [("clf", [1, 2], {"production": 1})]
    registry = Registry(plane.project)
    mv = registry.get("clf", 2)
    registry.record_gate(mv, {"accepted": False, "reason": "auc 0.6 < 0.7"}, actor="ci")
    registry.record_gate(mv, {"accepted": True, "reason": "auc 0.8"}, actor="ci")
    detail = plane.ok("GET", "/v1/models/clf/versions/2", role="read")
    assert detail["gate"] == {"accepted": True, "reason": "auc 0.8"}
    assert [(g["actor"], g["decision"]["accepted"]) for g in detail["gate_history"]] == [("ci", False), ("ci", True)]
    assert detail["signature"]["inputs"][0] == {"name": "f0", "dtype": "float64"} and detail["alias_history"] == []
    assert plane.ok("GET", "/v1/models/clf/versions/1", role="read")["gate_history"] == []
    # the CLI shows the same story
    cli = CliRunner().invoke(cli_app, ["models", "show", "clf@2", "--json"],
                             env={"MODELMILL_HOME": str(plane.project.settings.home)})
    assert cli.exit_code == 0 and json.loads(cli.stdout)["gate_history"] == detail["gate_history"], cli.output


def test_an_experiment_is_created_analysed_and_stopped(plane: Plane) -> None:
    made = plane.ok("POST", "/v1/experiments", EXPERIMENT)
    assert (made["status"], made["salt"], made["direction"]) == ("running", "ab", "higher")
    route = plane.ok("GET", "/v1/routes/clf", role="read")
    assert route["salt"] == "ab" and [(v["name"], v["version"]) for v in route["variants"]] == [
        ("control", 1), ("treatment", 2)]
    empty = plane.ok("GET", "/v1/experiments/ab", role="read")
    assert empty["analysis"] is None and empty["decisions"] == [] and "no logged predictions" in empty["no_data"]
    X = np.random.default_rng(5).normal(size=(60, len(COLUMNS)))
    for i in range(len(X)):
        r = plane.client.post("/v2/models/clf/infer", json=infer_body(X[i:i + 1]), headers={"x-routing-key": f"u{i}"})
        assert r.status_code == 200, r.text
    plane.flush()
    results = plane.ok("GET", "/v1/experiments/ab", role="read")
    exposures = results["experiment"]["exposures"]
    assert sum(exposures.values()) == 60 and min(exposures.values()) > 0
    assert results["no_data"] is None and results["analysis"]["metric"] == "output"
    assert [d["treatment"] for d in results["decisions"]] == ["treatment"]
    assert results["decisions"][0]["decision"] in ("keep_control", "switch_to_treatment", "continue")
    stopped = plane.ok("POST", "/v1/experiments/ab/stop", {"winner": "treatment"})
    assert stopped["status"] == "stopped" and stopped["result"] == {"winner": "treatment"}
    route = plane.ok("GET", "/v1/routes/clf", role="read")
    assert [(v["name"], v["version"], v["weight"]) for v in route["variants"]] == [("treatment", 2, 1.0)]
    twice = plane.call("POST", "/v1/experiments/ab/stop")
    assert twice.status_code == 409 and "already stopped" in twice.json()["error"]


def test_a_pipeline_run_is_triggered_then_followed_to_its_result(plane: Plane) -> None:
    queued = plane.ok("POST", "/v1/pipelines/control-plane-sum/runs", TRIGGER)
    assert queued == {"trigger_id": 1, "pipeline": "control-plane-sum"}
    # the same key asks for the same run
    assert plane.ok("POST", "/v1/pipelines/control-plane-sum/runs", TRIGGER)["trigger_id"] == 1
    pending = plane.ok("GET", "/v1/pipelines/control-plane-sum/runs/1", role="read")
    assert pending["trigger"]["status"] == "pending" and pending["run"] is None
    ran = Scheduler(plane.project).tick()
    assert [t.status for t in ran] == ["finished"]
    done = plane.ok("GET", "/v1/pipelines/control-plane-sum/runs/1", role="read")
    assert done["trigger"]["status"] == "finished" and done["trigger"]["params"] == {"a": 40, "b": 2}
    assert done["run"]["status"] == "finished" and [s["step"] for s in done["run"]["steps"]] == ["_add"]
    assert PIPELINE.output(plane.project, done["run"]["id"], "total") == 42
    other = plane.call("GET", "/v1/pipelines/another/runs/1", role="read")
    assert other.status_code == 404  # trigger 1 is not that pipeline's


def test_http_never_imports_a_module_the_project_does_not_name(plane: Plane, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "imported"
    (tmp_path / "cp_rogue.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    r = plane.call("POST", "/v1/pipelines/cp_rogue:pipe/runs", {"reason": "try"})
    assert r.status_code == 404 and "[training] pipelines" in r.json()["error"], r.text
    assert not marker.exists() and "cp_rogue" not in sys.modules
    assert plane.call("POST", "/v1/pipelines/no-such/runs", {"reason": "try"}).status_code == 404
    assert plane.audited("pipeline.trigger") == []


def test_monitoring_shows_the_latest_window_per_version_and_the_alerts(plane: Plane) -> None:
    assert plane.ok("GET", "/v1/monitoring", role="read") == {"windows": [], "performance": [], "alerts": []}
    X = np.random.default_rng(6).normal(size=(8, len(COLUMNS)))
    answer = plane.client.post("/v2/models/clf/infer", json={**infer_body(X), "id": "m"})
    assert answer.status_code == 200
    plane.flush()
    scores = answer.json()["outputs"][0]["data"]
    assert len(scores) == 8
    labels = [{"id": f"m/{i}", "label": i % 2} for i in range(8)]
    assert plane.ok("POST", "/v1/models/clf/labels", {"labels": labels}, role="label")["accepted"] == 8
    rule = Rule.from_mapping({"name": "events-fresh", "kind": "feature_freshness", "table": "events",
                              "threshold": 60})
    monitor = Monitor(plane.project, MonitoringConfig(rules=(rule,)))
    monitor.run_once()
    second = monitor.run_once()
    out = plane.ok("GET", "/v1/monitoring", role="read")
    assert [(w["model"], w["version"], w["n_rows"]) for w in out["windows"]] == [("clf", 1, 0)]
    window = out["windows"][0]
    # no reference profile: the drift is "no data", never a pass
    assert window["status"] == "no_data" and window["drift_share"] is None and window["drifted"] == []
    assert window["at"] == second["at"]  # the newer of the two rounds
    assert [(a["rule"], a["state"], a["labels"]["table"]) for a in out["alerts"]] == [
        ("events-fresh", "firing", "events")]
    # the delayed-label metrics of the labelled predictions, measured when asked
    [perf] = out["performance"]
    assert (perf["model"], perf["version"], perf["task"], perf["n"]) == ("clf", 1, "binary", 8)
    from sklearn.metrics import roc_auc_score

    expected = roc_auc_score([i % 2 for i in range(8)], scores)
    assert abs(perf["metrics"]["auc"]["value"] - expected) <= 1e-9 and perf["metrics"]["auc"]["n"] == 8
    assert plane.ok("GET", "/v1/monitoring?model=other", role="read")["performance"] == []
    assert plane.ok("GET", "/v1/monitoring?model=other", role="read")["windows"] == []
    bad = plane.call("GET", "/v1/monitoring?model=a b", role="read")
    assert bad.status_code == 400 and "name" in bad.json()["error"]
    odd = plane.call("GET", "/v1/monitoring?modle=clf", role="read")
    assert odd.status_code == 400 and "modle" in odd.json()["error"]


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/v1/rollouts", {"model": "clf"}, "version"),
    ("/v1/rollouts", {"model": "clf", "version": "2"}, "version"),
    ("/v1/rollouts", {"model": "clf", "version": True}, "version"),
    ("/v1/rollouts", {"model": "a b", "version": 2}, "name"),
    ("/v1/rollouts", {**START, "plna": "shadow,100"}, "plna"),
    ("/v1/rollouts", {**START, "plan": "5,50"}, "plan"),
    ("/v1/rollouts", {**START, "plan": None}, "plan"),
    ("/v1/rollouts", {**START, "baseline": "3"}, "baseline"),
    ("/v1/rollouts", {**START, "min_requests": 10}, "min_requests"),
    ("/v1/rollouts", {**START, "stage_seconds": -1}, "stage_seconds"),
    ("/v1/rollouts", {**START, "on_timeout": "panic"}, "on_timeout"),
    ("/v1/rollouts", {**START, "off": ["latency"]}, "off"),
    ("/v1/rollouts", {**START, "guardrails": {"max_latency_ratio": -1}}, "guardrails.max_latency_ratio"),
    ("/v1/rollouts", {**START, "guardrails": {"min_samples": 0}}, "guardrails.min_samples"),
    ("/v1/rollouts", {**START, "guardrails": {"significance": 1}}, "guardrails.significance"),
    ("/v1/rollouts", {**START, "guardrails": {"latency_slack_ms": None}}, "guardrails.latency_slack_ms"),
    ("/v1/rollouts", {**START, "guardrails": {"max_latency": 2}}, "guardrails.max_latency"),
    ("/v1/rollouts", {**START, "guardrails": None}, "guardrails"),
    ("/v1/rollouts/clf/promote", {"reason": 5}, "reason"),
    ("/v1/rollouts/clf/promote", {"why": "x"}, "why"),
    ("/v1/experiments", {**EXPERIMENT, "variants": EXPERIMENT["variants"][:1]}, "variants"),
    ("/v1/experiments", {**EXPERIMENT, "variants": [{"name": "a", "weight": 1, "version": 1},
                                                    {"name": "b", "weight": 0, "version": 2}]},
     "variants[1].weight"),
    ("/v1/experiments", {**EXPERIMENT, "variants": [{"name": "a", "weight": 1, "version": 1},
                                                    {"name": "b", "weight": 1, "verison": 2}]},
     "variants[1].verison"),
    ("/v1/experiments", {**EXPERIMENT, "metric": "revenue"}, "primary_metric"),
    ("/v1/experiments", {**EXPERIMENT, "alpha": 0}, "alpha"),
    ("/v1/experiments", {**EXPERIMENT, "direction": "sideways"}, "direction"),
    ("/v1/experiments", {k: v for k, v in EXPERIMENT.items() if k != "metric"}, "metric"),
    ("/v1/experiments/ab/stop", {"winner": 3}, "winner"),
    ("/v1/pipelines/control-plane-sum/runs", {}, "reason"),
    ("/v1/pipelines/control-plane-sum/runs", {"reason": "  "}, "reason"),
    ("/v1/pipelines/control-plane-sum/runs", {"reason": "x", "params": [1]}, "params"),
    ("/v1/pipelines/control-plane-sum/runs", {"reason": "x", "parms": {}}, "parms"),
])
def test_a_bad_body_is_a_400_naming_the_field_and_changes_nothing(plane: Plane, path: str, body: Any,
                                                                  field: str) -> None:
    r = plane.call("POST", path, body)
    assert r.status_code == 400, r.text
    assert r.json()["error"].startswith(f"{field}:") or f"{field}:" in r.json()["error"], r.text
    assert plane.audited("rollout.start") == plane.audited("experiment.create") == []
    assert plane.audited("pipeline.trigger") == []


@pytest.mark.parametrize("raw", [b"", b"[1]", b"{", b'"x"'])
def test_a_body_that_is_no_json_object_is_a_400(plane: Plane, raw: bytes) -> None:
    for path in ("/v1/rollouts", "/v1/experiments", "/v1/pipelines/control-plane-sum/runs"):
        r = plane.client.post(path, content=raw, headers={"Authorization": f"Bearer {plane.secrets['admin']}",
                                                          "Content-Type": "application/json"})
        assert r.status_code == 400 and "body" in r.json()["error"], (path, r.text)


@pytest.mark.parametrize(("method", "path", "body", "kind"), [
    ("GET", "/v1/models/nope/versions/1", None, "model"),
    ("GET", "/v1/models/clf/versions/9", None, "model version"),
    ("GET", "/v1/rollouts/nope", None, "rollout"),
    ("POST", "/v1/rollouts/nope/promote", None, "rollout"),
    ("POST", "/v1/rollouts/nope/rollback", None, "rollout"),
    ("POST", "/v1/rollouts", {**START, "version": 9}, "model"),
    ("POST", "/v1/rollouts", {**START, "model": "nope"}, "model"),
    ("POST", "/v1/experiments", {**EXPERIMENT, "variants": [{"name": "a", "weight": 1, "version": 1},
                                                            {"name": "b", "weight": 1, "version": 9}]},
     "model version"),
    ("GET", "/v1/experiments/nope", None, "experiment"),
    ("POST", "/v1/experiments/nope/stop", None, "experiment"),
    ("POST", "/v1/pipelines/nope/runs", {"reason": "x"}, "pipeline"),
    ("GET", "/v1/pipelines/nope/runs/1", None, "pipeline run"),
])
def test_an_unknown_name_is_a_404(plane: Plane, method: str, path: str, body: Any, kind: str) -> None:
    r = plane.call(method, path, body)
    assert r.status_code == 404, r.text
    assert r.json()["error"].startswith(kind), r.text
    assert plane.audited("rollout.start") == plane.audited("experiment.create") == []


@pytest.mark.parametrize("path", ["/v1/models/clf/versions/0", "/v1/models/clf/versions/x",
                                  "/v1/pipelines/p/runs/x", "/v1/pipelines/p/runs/1234567890123456789"])
def test_a_malformed_number_in_the_path_is_a_400(plane: Plane, path: str) -> None:
    r = plane.call("GET", path, role="read")
    assert r.status_code == 400, r.text


def test_a_models_route_has_one_owner_a_rollout_or_one_experiment(plane: Plane) -> None:
    """A rollout started under a running experiment used to overwrite the experiment's split (and its
    analysis then failed); now each refuses while the other holds the model's route."""
    plane.ok("POST", "/v1/experiments", EXPERIMENT)
    refused = plane.call("POST", "/v1/rollouts", START)
    assert refused.status_code == 409 and "experiment 'ab' is running" in refused.json()["error"], refused.text
    second = plane.call("POST", "/v1/experiments", {**EXPERIMENT, "name": "ab2"})
    assert second.status_code == 409 and "already running" in second.json()["error"], second.text
    route = plane.ok("GET", "/v1/routes/clf", role="read")
    assert route["salt"] == "ab" and [v["version"] for v in route["variants"]] == [1, 2]  # the split is intact
    plane.ok("POST", "/v1/experiments/ab/stop", {"winner": "control"})
    plane.ok("POST", "/v1/rollouts", START)
    during = plane.call("POST", "/v1/experiments", {**EXPERIMENT, "name": "ab3"})
    assert during.status_code == 409 and "active rollout" in during.json()["error"], during.text
