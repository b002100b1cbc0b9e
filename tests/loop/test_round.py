"""A round of the loop: a firing rule retrains, the new version is gated, and its rollout starts."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from modelmill.loop import Lease, Loop, LoopMeasure, loop_status
from modelmill.registry import Registry
from modelmill.rollout import RolloutController
from modelmill.store.tables.experiments import rollouts
from modelmill.store.tables.loop import loop_decisions
from modelmill.store.tables.training import triggers
from modelmill.training import Scheduler, trigger
from tests.loop import pipelines
from tests.loop.helpers import config, log_stage, log_traffic, open_project


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest) -> str | None:
    return None if request.param == "sqlite" else str(request.getfixturevalue("pg_url"))


def count(project: object, table: sa.Table) -> int:
    with project.db.engine.connect() as conn:  # type: ignore[attr-defined]
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def test_a_firing_rule_retrains_gates_and_starts_a_rollout(tmp_path: Path, db: str | None) -> None:
    with open_project(tmp_path / "home", db) as project:
        assert pipelines.first_version(project) == 1
        log_traffic(project, ok=20, failed=20)  # error rate 0.5 > 0.1 over 40 >= 10 requests
        loop = Loop(project, config(), lease=Lease(project.db, holder="a"))
        out = loop.round()

        assert out["leader"] is True
        phases = out["models"]["clicks"]
        assert [(a["rule"], a["status"]) for a in phases["monitor"]["alerts_changed"]] == [
            ("clicks.error_rate", "firing")]
        assert [(t["pipeline"], t["status"]) for t in out["scheduler"]] == [("loop_test_retrain", "finished")]
        (decision,) = phases["decisions"]
        assert decision["status"] == "rolling_out" and decision["version"] == 2
        assert decision["gate"]["accepted"] is True and decision["gate"]["against"] == "clicks@1"
        assert Registry(project).get("clicks", 2).gate["decision"] == "accept"
        state = RolloutController(project).get("clicks")
        assert (state.id, state.candidate, state.status, state.current) == (decision["rollout_id"], 2, "running",
                                                                            "shadow")
        assert phases["rollout"]["action"] == "hold" and phases["rollout"]["stage"] == "shadow"
        assert state.plan == ("shadow", 100) and state.min_requests == 50

        status = loop_status(project, config())
        assert status["leader"] == "a" and status["last_round_at"] is not None
        m = status["models"]["clicks"]
        assert (m["feature_service"], m["latest_version"], m["production"]) == ("clicks_features", 2, 1)
        assert m["rollout"]["candidate"] == 2 and m["rollout"]["stage"] == "shadow"
        assert [(a["rule"], a["state"]) for a in m["alerts"]] == [("clicks.error_rate", "firing")]
        assert m["last_trigger"]["status"] == "finished" and m["last_decision"]["status"] == "rolling_out"
        assert m["last_round"]["decisions"] == [{"trigger_id": decision["trigger_id"], "status": "rolling_out",
                                                 "version": 2}]

        # The alert keeps firing: the next round queues nothing more and starts no second rollout.
        again = loop.round()
        assert again["scheduler"] == [] and again["models"]["clicks"]["decisions"] == []
        assert count(project, triggers) == 1 and count(project, rollouts) == 1


def test_a_rejected_version_starts_no_rollout(tmp_path: Path) -> None:
    cfg = config(pipeline={"function": "loop_test_retrain", "params": {"seed": 1, "flip": True}})
    with open_project(tmp_path / "home") as project:
        pipelines.first_version(project)
        log_traffic(project)
        out = Loop(project, cfg, lease=Lease(project.db, holder="a")).round()
        (decision,) = out["models"]["clicks"]["decisions"]
        assert decision["status"] == "rejected" and decision["version"] == 2
        assert "auc" in decision["reason"] and decision["gate"]["accepted"] is False
        assert count(project, rollouts) == 0
        assert Registry(project).aliases("clicks") == {"production": 1}


def test_below_the_minimum_count_a_rule_has_no_data_and_nothing_retrains(tmp_path: Path) -> None:
    with open_project(tmp_path / "home") as project:
        pipelines.first_version(project)
        log_traffic(project, ok=2, failed=5)  # a 70% error rate, but over 7 of the 10 requests needed
        out = Loop(project, config(), lease=Lease(project.db, holder="a")).round()
        assert out["models"]["clicks"]["monitor"]["alerts_changed"] == []
        assert out["scheduler"] == [] and count(project, triggers) == 0


def test_without_a_production_alias_an_accepted_version_waits(tmp_path: Path) -> None:
    with open_project(tmp_path / "home") as project:
        pipelines.first_version(project)
        Registry(project).delete_alias("clicks", "production", actor="test")
        trigger("loop_test_retrain", "by hand", project=project, params={"seed": 1, "flip": False, "model": "clicks"})
        loop = Loop(project, config(), lease=Lease(project.db, holder="a"))
        (decision,) = loop.round()["models"]["clicks"]["decisions"]
        assert decision["status"] == "waiting" and "clicks@production is not set" in decision["reason"]
        assert count(project, rollouts) == 0
        Registry(project).set_alias("clicks", "production", 1, actor="test")
        (decision,) = loop.round()["models"]["clicks"]["decisions"]
        assert decision["status"] == "rolling_out" and decision["version"] == 2


def test_a_run_that_failed_is_recorded_and_starts_nothing(tmp_path: Path) -> None:
    with open_project(tmp_path / "home") as project:
        pipelines.first_version(project)
        # The model param names a model the pipeline cannot register under (an invalid name): the run fails.
        trigger("loop_test_retrain", "by hand", project=project, params={"seed": 1, "flip": False, "model": "bad name"})
        out = Loop(project, config(), lease=Lease(project.db, holder="a")).round()
        assert out["scheduler"][0]["status"] == "failed"
        (decision,) = out["models"]["clicks"]["decisions"]
        assert decision["status"] == "failed" and "failed" in decision["reason"]
        assert count(project, rollouts) == 0


def test_a_restarted_loop_resumes_from_the_database(tmp_path: Path, db: str | None) -> None:
    home = tmp_path / "home"
    with open_project(home, db) as project:
        pipelines.first_version(project)
        # The last loop died right after its scheduler ran the retraining, before it decided anything.
        trigger("loop_test_retrain", "alert", project=project, params={"seed": 1, "flip": False, "model": "clicks"})
        assert [t.status for t in Scheduler(project).tick()] == ["finished"]
    with open_project(home, db) as project:  # a new process
        loop = Loop(project, config(), lease=Lease(project.db, holder="b"))
        (decision,) = loop.round()["models"]["clicks"]["decisions"]
        assert decision["status"] == "rolling_out" and decision["version"] == 2
        rollout_id = decision["rollout_id"]
    with open_project(home, db) as project:  # and another, after that one died too
        # Its lease (30 s) has expired by the clock of this one.
        later = Lease(project.db, holder="c", ttl=30, clock=lambda: time.time() + 60)
        out = Loop(project, config(), lease=later).round()
        assert out["leader"] is True and out["models"]["clicks"]["decisions"] == []
        assert out["models"]["clicks"]["rollout"]["rollout"] == rollout_id
        assert count(project, rollouts) == 1 and count(project, loop_decisions) == 1


def test_the_loop_drives_the_rollout_to_promotion(tmp_path: Path) -> None:
    # The loop's clock runs an hour behind, and each stage's traffic is stamped inside the stage: serving's
    # guardrail source counts only requests older than its settle time, and no test waits for that.
    behind = 3600.0
    cfg = config(rules={"error_rate": {"max_rate": 0.1, "min_requests": 10, "window": "3h"}},
                 rollout={"plan": ["shadow", 100], "min_requests": 50, "stage_seconds": 0.01,
                          "guardrails": {"max_label_loss_increase": False}})
    with open_project(tmp_path / "home") as project:
        pipelines.first_version(project)
        log_traffic(project, at=time.time() - 2 * behind)  # the errors that fire the rule, before any stage
        loop = Loop(project, cfg, lease=Lease(project.db, holder="a"), clock=lambda: time.time() - behind)
        started = loop.round()["models"]["clicks"]["rollout"]
        assert (started["action"], started["stage"]) == ("hold", "shadow")
        shadow = RolloutController(project).get("clicks")

        log_stage(project, live=("stable", 1), mirror=("candidate", 2), start=shadow.stage_started_at)
        moved = loop.round()["models"]["clicks"]["rollout"]
        assert (moved["action"], moved["stage"], moved["status"]) == ("advance", "100", "running"), moved
        full = RolloutController(project).get("clicks")

        log_stage(project, live=("candidate", 2), mirror=("stable", 1), start=full.stage_started_at, prefix="f")
        done = loop.round()["models"]["clicks"]["rollout"]
        assert (done["action"], done["status"]) == ("complete", "completed"), done
        assert Registry(project).aliases("clicks") == {"production": 2}
        assert loop.round()["models"]["clicks"]["rollout"] is None  # nothing active is left to step
        assert loop_status(project, cfg)["models"]["clicks"]["rollout"]["status"] == "completed"


def _labelled_traffic(project: object, n: int = 120, version: int = 1) -> None:
    """``n`` answered requests of clicks@version whose outputs say nothing of their labels (AUC near 0.5), labelled."""
    import numpy as np

    from modelmill.store.feedback import write_labels
    from tests.prediction_log import prediction_log

    rng = np.random.default_rng(7)
    with prediction_log(project.offline) as log:  # type: ignore[attr-defined]
        for i in range(n):
            log.append(f"l{i}", "clicks", version, "stable", None, ("x1", "x2"), rng.normal(size=(1, 2)),
                       np.array([rng.uniform()]), 2.0)
    write_labels(project.offline, "clicks", [{"id": f"l{i}", "label": int(rng.integers(0, 2))}  # type: ignore[attr-defined]
                                             for i in range(n)])


def test_a_metric_drop_below_the_gated_baseline_retrains_and_without_a_baseline_is_no_data(tmp_path: Path) -> None:
    from modelmill.registry import gate

    cfg = config(rules={"metric_drop": {"metric": "auc", "margin": 0.05, "min_labels": 50, "window": "1h"}})
    with open_project(tmp_path / "home") as project:
        pipelines.first_version(project)
        _labelled_traffic(project)
        loop = Loop(project, cfg, lease=Lease(project.db, holder="a"))
        quiet = loop.round()  # clicks@1 was never gated and registered no auc: no baseline, so no verdict
        assert quiet["models"]["clicks"]["monitor"]["alerts_changed"] == [] and quiet["scheduler"] == []
        (rule,) = cfg.model("clicks").monitoring_rules()
        measured = LoopMeasure(project, min_counts={rule.name: 50}).measure(rule, time.time())
        assert len(measured) == 1 and all(math.isnan(v) for v in measured.values())  # no data, not a pass

        registry = Registry(project)
        decided = gate(registry, "clicks@1", data=pipelines.frame(0).iloc[400:], label="clicked",
                       minimum={"auc": 0.5})
        assert decided.metrics["auc"] > 0.8  # what clicks@1 scored on its holdout: the baseline now
        fired = loop.round()
        assert [a["rule"] for a in fired["models"]["clicks"]["monitor"]["alerts_changed"]] == ["clicks.metric_drop"]
        assert [t["status"] for t in fired["scheduler"]] == ["finished"]
        assert fired["models"]["clicks"]["decisions"][0]["status"] == "rolling_out"


def test_a_metric_drop_over_too_few_labels_is_no_data(tmp_path: Path) -> None:
    cfg = config(rules={"metric_drop": {"metric": "auc", "baseline": 0.9, "min_labels": 500, "window": "1h"}})
    with open_project(tmp_path / "home") as project:
        pipelines.first_version(project)
        _labelled_traffic(project)  # 120 labels, AUC near 0.5 < 0.85: a breach, were there 500 labels
        out = Loop(project, cfg, lease=Lease(project.db, holder="a")).round()
        assert out["models"]["clicks"]["monitor"]["alerts_changed"] == [] and out["scheduler"] == []


def test_a_cron_schedule_retrains_on_its_tick_and_goes_when_the_config_drops_it(tmp_path: Path) -> None:
    daily = config(pipeline={"function": "loop_test_retrain", "params": {"seed": 1, "flip": False},
                             "cron": "0 3 * * *"}, rules={})
    start = 1_796_000_000.0  # 2026-11-30 00:53 UTC: the next tick is 03:00 that day
    with open_project(tmp_path / "home") as project:
        pipelines.first_version(project)
        loop = Loop(project, daily, lease=Lease(project.db, holder="a"))
        first = loop.round(now=start)
        assert first["scheduler"] == []
        (schedule,) = Scheduler(project).schedules()
        assert (schedule["pipeline"], schedule["cron"]) == ("loop_test_retrain", "0 3 * * *")
        assert schedule["params"] == {"seed": 1, "flip": False, "model": "clicks"}
        assert loop.round(now=start + 3600)["scheduler"] == []  # 01:53: not yet
        tick = loop.round(now=start + 3 * 3600)
        assert [(t["pipeline"], t["status"]) for t in tick["scheduler"]] == [("loop_test_retrain", "finished")]
        assert tick["models"]["clicks"]["decisions"][0]["status"] == "rolling_out"
        assert loop.round(now=start + 4 * 3600)["scheduler"] == []  # one run per tick

        loop.lease.release()  # restarted with the cron line removed from the table
        again = Loop(project, config(rules={}), lease=Lease(project.db, holder="a")).round(now=start + 5 * 3600)
        assert again["leader"] is True and Scheduler(project).schedules() == []


def test_a_rule_whose_action_is_rollback_rolls_the_active_rollout_back(tmp_path: Path) -> None:
    cfg = config(rules={"error_rate": {"max_rate": 0.1, "min_requests": 10, "actions": ["rollback"]}})
    with open_project(tmp_path / "home") as project:
        pipelines.first_version(project)
        result = pipelines.RETRAIN.run(project, params={"seed": 1, "model": "clicks", "flip": False})
        candidate = int(result.value("version"))
        RolloutController(project).start("clicks", candidate, plan="shadow,100", min_requests=50)
        log_traffic(project)
        out = Loop(project, cfg, lease=Lease(project.db, holder="a")).round()
        assert [a["rule"] for a in out["models"]["clicks"]["monitor"]["alerts_changed"]] == ["clicks.error_rate"]
        assert out["scheduler"] == [] and count(project, triggers) == 0  # no retraining was asked for
        state = RolloutController(project).get("clicks")
        assert state.status == "rolled_back" and "clicks.error_rate" in state.reason
        assert out["models"]["clicks"]["rollout"] is None


def test_the_status_names_the_applied_version_of_the_feature_service(tmp_path: Path) -> None:
    from modelmill.features import Entity, FeatureService, FeatureStore, FeatureView, Field

    with open_project(tmp_path / "home") as project:
        assert loop_status(project, config())["models"]["clicks"]["feature_service_version"] is None
        user = Entity(name="user", join_keys=["user_id"])
        view = FeatureView(name="user_stats", entities=(user,), source=str(tmp_path / "stats.parquet"),
                           fields=(Field("ctr"),), timestamp_field="ts")
        FeatureStore(project).apply([user, view, FeatureService(name="clicks_features", features=("user_stats:ctr",))])
        assert loop_status(project, config())["models"]["clicks"]["feature_service_version"] == 1


def test_a_holdout_the_gate_cannot_score_fails_the_decision(tmp_path: Path) -> None:
    cfg = config(pipeline={"function": "loop_test_bad_holdout", "params": {"seed": 1, "flip": False}})
    with open_project(tmp_path / "home") as project:
        pipelines.first_version(project)
        log_traffic(project)
        out = Loop(project, cfg, lease=Lease(project.db, holder="a")).round()
        (decision,) = out["models"]["clicks"]["decisions"]
        assert decision["status"] == "failed" and "x2" in decision["reason"] and decision["version"] == 2
        assert count(project, rollouts) == 0
        assert Registry(project).get("clicks", 2).gate is None  # registered, never judged: never rolled out


def test_a_version_rolled_back_before_is_not_rolled_out_again(tmp_path: Path) -> None:
    """A retraining run that hits the cache registers no new version and names the one it made before; if that
    version was rolled back, the loop rejects it rather than rolling out what the guardrails already refused."""
    with open_project(tmp_path / "home") as project:
        pipelines.first_version(project)
        log_traffic(project, ok=20, failed=20)
        loop = Loop(project, config(), lease=Lease(project.db, holder="a"))
        (first,) = loop.round()["models"]["clicks"]["decisions"]
        assert first["status"] == "rolling_out" and first["version"] == 2
        RolloutController(project).rollback("clicks", reason="breached by hand")
        trigger(pipelines.RETRAIN.name, "again", params=dict(loop._params["clicks"]), project=project)
        out = loop.round()
        (again,) = out["models"]["clicks"]["decisions"]
        assert again["version"] == 2 and again["status"] == "rejected"  # the cached run named version 2 again
        assert f"rollout {first['rollout_id']}" in again["reason"] and "breached by hand" in again["reason"]
        assert count(project, rollouts) == 1  # no second rollout of it


def test_the_rules_watch_the_production_version_not_a_candidate(tmp_path: Path) -> None:
    """A candidate's own metric (or drift) is its rollout's guardrails' business: it retrains nothing. The same
    measurement of the version production names fires."""
    cfg = config(rules={"metric_drop": {"metric": "auc", "baseline": 0.9, "min_labels": 50, "window": "1h"}})
    with open_project(tmp_path / "home") as project:
        pipelines.first_version(project)
        candidate = int(pipelines.RETRAIN.run(project, params={"seed": 1, "model": "clicks", "flip": False})
                        .value("version"))
        _labelled_traffic(project, version=candidate)  # AUC near 0.5, far below 0.9 - 0.05, over 120 labels
        loop = Loop(project, cfg, lease=Lease(project.db, holder="a"))
        quiet = loop.round()
        assert quiet["models"]["clicks"]["monitor"]["alerts_changed"] == [] and quiet["scheduler"] == []
        (rule,) = cfg.model("clicks").monitoring_rules()
        everything = LoopMeasure(project, min_counts={rule.name: 50}).measure(rule, time.time())
        assert [dict(k)["version"] for k in everything] == [str(candidate)]  # measured; only not watched
        Registry(project).set_alias("clicks", "production", candidate)
        fired = loop.round()
        assert [(a["rule"], a["labels"]["version"]) for a in fired["models"]["clicks"]["monitor"]["alerts_changed"]] \
            == [("clicks.metric_drop", str(candidate))]
