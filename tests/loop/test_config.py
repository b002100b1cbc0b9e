"""``[models.NAME]``: each malformed key is an error naming it exactly and saying what is accepted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from modelmill.config import load_settings
from modelmill.errors import ConfigError
from modelmill.loop import Lease, Loop, load_loop_config, parse_models
from tests.loop import pipelines
from tests.loop.helpers import BODY, body, open_project

ROOT = Path(__file__).resolve().parents[2]


def error(models: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_models(models)
    return info.value


def with_(path: str, value: Any) -> dict[str, Any]:
    """:data:`BODY` with the dotted ``path`` set to ``value`` (``...`` deletes it)."""
    out = body()
    *parents, last = path.split(".")
    node = out
    for p in parents:
        node = node.setdefault(p, {})
    if value is ...:
        node.pop(last, None)
    else:
        node[last] = value
    return out


@pytest.mark.parametrize(("path", "value", "key", "accepted"), [
    ("colour", "red", "models.clicks.colour", "one of the keys feature_service, gate, pipeline, rollout, rules"),
    ("pipeline", ..., "models.clicks.pipeline", "function ="),
    ("pipeline.function", "", "models.clicks.pipeline.function", "'module:attr'"),
    ("pipeline.params", [1], "models.clicks.pipeline.params", "a table of the pipeline's params"),
    ("pipeline.cron", "every day", "models.clicks.pipeline.cron", "cron expression"),
    ("pipeline.retries", 3, "models.clicks.pipeline.retries", "cron, function, params"),
    ("gate", ..., "models.clicks.gate", "at least one of min, max, max_regression"),
    ("gate.min", {"auc": "high"}, "models.clicks.gate.min.auc", "a finite number"),
    ("gate.min", {"f1": 0.5}, "models.clicks.gate.min.f1", "a metric of accuracy, auc, brier, calibration_error, logloss"),
    ("gate.min", 0.7, "models.clicks.gate.min", "a table of metric = number"),
    ("gate.max_regression", {"auc": -0.1}, "models.clicks.gate.max_regression.auc", "0 or more"),
    ("gate.label", "", "models.clicks.gate.label", "the label column"),
    ("gate.minimum", {"auc": 0.7}, "models.clicks.gate.minimum", "against, data, label, max, max_calibration_error,"),
    ("feature_service", 3, "models.clicks.feature_service", "the name of a feature service"),
    ("rules.drift", {"window": "1h"}, "models.clicks.rules.drift.share", "share of drifted columns"),
    ("rules.drift", {"share": 1.5}, "models.clicks.rules.drift.share", "(0, 1]"),
    ("rules.drift", {"share": 0.3, "window": "soon"}, "models.clicks.rules.drift.window", "duration"),
    ("rules.drift", {"share": 0.3, "window": -5}, "models.clicks.rules.drift.window", "positive duration"),
    ("rules.drift", {"share": 0.3, "for": "later"}, "models.clicks.rules.drift.for", "duration"),
    ("rules.drift", {"share": 0.3, "actions": ["page"]}, "models.clicks.rules.drift.actions", "'retrain'"),
    ("rules.drift", {"share": 0.3, "threshold": 0.3}, "models.clicks.rules.drift.threshold",
     "severity, share, window"),
    ("rules.latency", {"p95_ms": 0}, "models.clicks.rules.latency.p95_ms", "positive number of milliseconds"),
    ("rules.error_rate", {"max_rate": 1}, "models.clicks.rules.error_rate.max_rate", "[0, 1)"),
    ("rules.error_rate", {"max_rate": 0.1, "min_requests": 2.5}, "models.clicks.rules.error_rate.min_requests",
     "a whole number"),
    ("rules.metric_drop", {"metric": "logloss"}, "models.clicks.rules.metric_drop.metric", "auc, precision"),
    ("rules.metric_drop", {"margin": -1}, "models.clicks.rules.metric_drop.margin", "0 or more"),
    ("rules.metric_drop", {"min_labels": True}, "models.clicks.rules.metric_drop.min_labels", "a whole number"),
    ("rules.spike", {}, "models.clicks.rules.spike",
     "drift, error_rate, estimated_metric_drop, latency, metric_drop"),
    ("rollout.plan", ["shadow", 50, 20, 100], "models.clicks.rollout.plan", "strictly increasing"),
    ("rollout.plan", "5,50", "models.clicks.rollout.plan", "ending at 100"),
    ("rollout.min_requests", 10, "models.clicks.rollout.min_requests", "at least guardrails.min_samples (50)"),
    ("rollout.stage_seconds", "forever", "models.clicks.rollout.stage_seconds", "duration"),
    ("rollout.max_stage_seconds", "0.5s", "models.clicks.rollout.max_stage_seconds", "at least stage_seconds"),
    ("rollout.on_timeout", "retry", "models.clicks.rollout.on_timeout", "'rollback' or 'hold'"),
    ("rollout.guardrails", {"max_error_rate": 0.1}, "models.clicks.rollout.guardrails.max_error_rate",
     "max_error_rate_increase"),
    ("rollout.guardrails", {"min_samples": 0}, "models.clicks.rollout.guardrails.min_samples", "at least 1"),
    ("rollout.guardrails", {"significance": 1.5}, "models.clicks.rollout.guardrails.significance", "between 0 and 1"),
    ("rollout.guardrails", {"max_output_shift": True}, "models.clicks.rollout.guardrails.max_output_shift",
     "a finite number"),
])
def test_a_malformed_key_is_named_with_what_is_accepted(path: str, value: Any, key: str, accepted: str) -> None:
    exc = error({"clicks": with_(path, value)})
    assert exc.key == key
    assert accepted in exc.accepted, exc.accepted


def test_the_gate_takes_the_multiclass_and_regression_metrics_too() -> None:
    """The candidate's task is known only when the gate runs (which refuses a metric it lacks), so the loop's
    config takes every task's metric names, and still refuses a name no task has."""
    [spec] = parse_models({"clicks": with_("gate.min", {"macro_f1": 0.6})}).models
    assert spec.gate.minimum == {"macro_f1": 0.6}
    [spec] = parse_models({"clicks": with_("gate.max", {"rmse": 2.0, "mae": 1.5})}).models
    assert spec.gate.maximum == {"rmse": 2.0, "mae": 1.5}
    assert error({"clicks": with_("gate.min", {"rmse_": 1.0})}).key == "models.clicks.gate.min.rmse_"


def test_a_model_name_and_a_shared_pipeline_are_refused() -> None:
    assert error({"bad name": BODY}).key == "models.bad name"
    exc = error({"a": BODY, "b": BODY})
    assert exc.key == "models.b.pipeline.function" and "models.a uses it" in exc.accepted
    assert error({"clicks": 3}).key == "models.clicks"


def test_a_full_table_is_parsed_into_the_monitor_rules_and_the_rollout() -> None:
    cfg = parse_models({"clicks": with_("rules", {
        "drift": {"share": 0.3, "window": "2h", "for": "5m"},
        "metric_drop": {"metric": "accuracy", "margin": 0.1, "baseline": 0.8, "min_labels": 20, "window": "6h",
                        "actions": ["retrain", "rollback"]},
        "latency": {"p95_ms": 50, "window": "5m", "actions": []},
        "error_rate": {"max_rate": 0.02, "window": 300, "severity": "critical"},
    }) | {"rollout": {"plan": "shadow,10,100", "stage_seconds": "2m", "max_stage_seconds": "1h",
                      "on_timeout": "hold", "guardrails": {"max_output_shift": False, "min_samples": 20},
                      "min_requests": 20}}})
    m = cfg.model("clicks")
    rules = {r.name: r for r in m.monitoring_rules({"seed": 1, "model": "clicks"})}
    assert sorted(rules) == ["clicks.drift", "clicks.error_rate", "clicks.latency", "clicks.metric_drop"]
    drift = rules["clicks.drift"]
    assert (drift.kind, drift.threshold, drift.window, drift.for_s, drift.model) == (
        "drift_share", 0.3, 7200.0, 300.0, "clicks")
    assert drift.actions == ("pipeline:loop_test_retrain",)
    assert drift.action_params == {"pipeline:loop_test_retrain": {"seed": 1, "model": "clicks"}}
    drop = rules["clicks.metric_drop"]
    assert (drop.kind, drop.metric, drop.margin, drop.baseline) == ("metric_below_baseline", "accuracy", 0.1, 0.8)
    assert drop.actions == ("pipeline:loop_test_retrain", "rollback:clicks")
    assert rules["clicks.latency"].actions == () and rules["clicks.latency"].threshold == 50
    assert (rules["clicks.error_rate"].window, rules["clicks.error_rate"].severity) == (300.0, "critical")
    assert [r.min_count for r in m.rules] == [0, 20, 0, 100]
    r = m.rollout
    assert (r.plan, r.stage_seconds, r.max_stage_seconds, r.on_timeout, r.min_requests) == (
        ("shadow", 10, 100), 120.0, 3600.0, "hold", 20)
    assert r.guardrails.max_output_shift is None and r.guardrails.min_samples == 20
    assert r.guardrails.max_error_rate_increase == 0.01  # the default stays
    assert m.as_dict()["rollout"]["plan"] == ["shadow", 10, 100]


def test_the_file_is_read_through_the_settings(tmp_path: Path) -> None:
    (tmp_path / "modelmill.toml").write_text(
        '[models.clicks.pipeline]\nfunction = "loop_test_retrain"\n'
        '[models.clicks.gate]\nmin = { auc = 0.7 }\nlabel = "clicked"\n'
        '[models.clicks.rules.drift]\nshare = 0.3\nwindow = "30m"\n')
    cfg = load_loop_config(load_settings(cwd=tmp_path, env={}))
    assert cfg.names == ["clicks"] and cfg.model("clicks").rules[0].window == 1800.0


@pytest.mark.parametrize(("change", "key", "accepted"), [
    ({"pipeline": {"function": "no.such.module:pipe"}}, "models.clicks.pipeline.function", "importable"),
    ({"pipeline": {"function": "loop_test_retrain", "params": {"flip": False}}}, "models.clicks.pipeline.params",
     "missing seed"),
    ({"gate": {"min": {"auc": 0.6}, "data": "test_set", "label": "clicked"}}, "models.clicks.gate.data",
     "it has holdout, train_set, version"),
])
def test_what_only_the_pipeline_can_tell_is_refused_when_the_loop_starts(
        tmp_path: Path, change: dict[str, Any], key: str, accepted: str) -> None:
    assert pipelines.RETRAIN.name == "loop_test_retrain"  # registered by name
    with open_project(tmp_path / "home") as project:
        loop = Loop(project, parse_models({"clicks": body(**change)}), lease=Lease(project.db, holder="a"))
        with pytest.raises(ConfigError) as info:
            loop.start()
        assert info.value.key == key and accepted in info.value.accepted


def mm(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELMILL_")} | {"PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "modelmill", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_the_cli_names_the_key_of_a_bad_table(tmp_path: Path) -> None:
    (tmp_path / "modelmill.toml").write_text(
        '[models.clicks.pipeline]\nfunction = "tests.loop.pipelines:RETRAIN"\n'
        '[models.clicks.gate]\nmin = { auc = "high" }\n')
    out = mm(["loop", "status", "--json"], tmp_path)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert json.loads(out.stdout)["key"] == "models.clicks.gate.min.auc"
    text = mm(["loop", "--once"], tmp_path)
    assert text.returncode == 1 and "'models.clicks.gate.min.auc'" in text.stderr and "a finite number" in text.stderr
    (tmp_path / "modelmill.toml").write_text("")
    empty = mm(["loop", "--once", "--json"], tmp_path)
    assert empty.returncode == 1 and json.loads(empty.stdout)["key"] == "models"


def test_the_readme_example_is_a_valid_table() -> None:
    import tomllib

    text = (ROOT / "README.md").read_text()
    section = text.split("## The loop: one `[models.NAME]` table per model", 1)[1]
    example = section.split("```toml\n", 1)[1].split("```", 1)[0]
    m = parse_models(tomllib.loads(example)["models"]).model("clicks")
    assert [r.kind for r in m.rules] == ["drift", "metric_drop", "latency", "error_rate"]
    assert m.rules[-1].actions == ("rollback",) and m.rollout.guardrails.max_output_shift is None


def test_the_package_docstring_example_is_a_valid_table() -> None:
    import tomllib

    import modelmill.loop

    doc = modelmill.loop.__doc__ or ""
    block = doc.split("::\n\n", 1)[1].split("\nEach model's rules", 1)[0]
    lines = [line[4:] for line in block.splitlines()]
    m = parse_models(tomllib.loads("\n".join(lines))["models"]).model("clicks")
    assert [r.kind for r in m.rules] == ["drift", "metric_drop", "estimated_metric_drop", "latency", "error_rate"]
    assert m.gate.maximum == {"logloss": 0.6, "calibration_error": 0.1} and m.rollout.max_stage_seconds == 600.0
    assert m.gate.max_regression == {"auc": 0.01, "logloss": 0.01}
