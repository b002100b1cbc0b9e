"""The ``estimated_metric_drop`` rule through the real evaluator and measure, on a real prediction log (no labels),
and the estimate beside the realised metrics in the monitor's round."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from modelmill.errors import ConfigError
from modelmill.loop.config import parse_models
from modelmill.monitoring import Monitor, MonitoringConfig, ProjectMeasure
from modelmill.monitoring.alerts import AlertEvaluator, Rule
from modelmill.monitoring.estimate import estimate
from modelmill.project import Project
from modelmill.registry import Registry

from .conftest import log_labels, log_predictions

NOW = time.time()


def _serve(project: Project, p: np.ndarray, *, version: int = 1, at: float = NOW - 600) -> list[str]:
    return log_predictions(project, model="m", version=version, ts=dt.datetime.fromtimestamp(at, tz=dt.UTC),
                           features=pd.DataFrame({"x": np.arange(p.size, dtype=np.float64)}), outputs=p,
                           latency_ms=1.0)


def _probabilities(n: int = 400, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).beta(2, 3, size=n)


def _status(project: Project, **rule: object) -> tuple[str, list[str], AlertEvaluator]:
    r = Rule.from_mapping({"name": "EstDrop", "kind": "estimated_metric_drop", "model": "m", **rule})
    ev = AlertEvaluator(project, [r], measure=ProjectMeasure(project))
    changed = ev.evaluate(NOW)
    return ev.statuses["EstDrop"].status, [a.status for a in changed], ev


def test_an_estimate_above_baseline_minus_margin_passes_and_one_below_fires(project: Project) -> None:
    p = _probabilities()
    _serve(project, p)
    auc = estimate(p).value("auc")
    assert auc is not None
    assert _status(project, metric="auc", baseline=auc + 0.04, margin=0.05)[:2] == ("pass", [])
    status, changed, ev = _status(project, metric="auc", baseline=auc + 0.06, margin=0.05)
    assert (status, changed) == ("fail", ["firing"])
    [active] = ev.active()
    assert active["labels"]["version"] == "1" and active["value"] == pytest.approx(auc)


def test_an_estimated_log_loss_fires_above_baseline_plus_margin(project: Project) -> None:
    p = _probabilities()
    _serve(project, p)
    loss = estimate(p).value("log_loss")
    assert loss is not None
    assert _status(project, metric="log_loss", baseline=loss - 0.04, margin=0.05)[0] == "pass"
    assert _status(project, metric="log_loss", baseline=loss - 0.06, margin=0.05)[:2] == ("fail", ["firing"])


def test_no_predictions_in_the_window_is_no_data(project: Project) -> None:
    assert _status(project, metric="auc", baseline=0.9)[0] == "no_data"  # no prediction log at all
    _serve(project, _probabilities(), at=NOW - 7200)  # logged, but before the window
    status, changed, ev = _status(project, metric="auc", baseline=0.9, window="1h")
    assert (status, changed) == ("no_data", []) and "no value" in ev.statuses["EstDrop"].reason


def test_fewer_predictions_than_min_rows_is_no_data(project: Project) -> None:
    _serve(project, _probabilities(n=40))
    assert _status(project, metric="auc", baseline=0.99, min_rows=50)[:2] == ("no_data", [])
    assert _status(project, metric="auc", baseline=0.99, min_rows=40)[:2] == ("fail", ["firing"])


def test_outputs_that_are_not_probabilities_are_no_data(project: Project) -> None:
    _serve(project, np.linspace(-3, 40, 200))  # a regression model's outputs
    assert _status(project, metric="auc", baseline=0.99)[0] == "no_data"


def test_the_baseline_is_the_versions_recorded_metric_and_none_is_no_data(project: Project) -> None:
    from tests.serving.conftest import signature, train_lr

    p = _probabilities()
    _serve(project, p)
    assert _status(project, metric="auc")[0] == "no_data"  # version 1 is not registered: no baseline
    auc = estimate(p).value("auc")
    assert auc is not None
    Registry(project).register("m", train_lr(0), flavor="sklearn", signature=signature(),
                               metrics={"auc": auc + 0.2})
    status, changed, _ = _status(project, metric="auc", margin=0.05)
    assert (status, changed) == ("fail", ["firing"])


@pytest.mark.parametrize(("extra", "field"), [({"metric": "precision"}, "metric"), ({"min_rows": -1}, "min_rows"),
                                              ({"min_rows": "many"}, "min_rows")])
def test_a_bad_rule_is_refused_naming_the_key(extra: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        Rule.from_mapping({"name": "E", "kind": "estimated_metric_drop", **extra})
    assert info.value.key == f"monitoring.rules[E].{field}"


def test_the_loop_config_makes_the_rule_with_its_min_rows() -> None:
    cfg = parse_models({"m": {"pipeline": {"function": "p:q"}, "gate": {"min": {"auc": 0.6}},
                              "rules": {"estimated_metric_drop": {"metric": "log_loss", "margin": 0.02,
                                                                  "min_rows": 30}}}})
    [rule] = cfg.model("m").monitoring_rules()
    assert (rule.kind, rule.metric, rule.margin, rule.min_rows, rule.name) == (
        "estimated_metric_drop", "log_loss", 0.02, 30, "m.estimated_metric_drop")
    with pytest.raises(ConfigError) as info:
        parse_models({"m": {"pipeline": {"function": "p:q"}, "gate": {"min": {"auc": 0.6}},
                            "rules": {"estimated_metric_drop": {"metric": "recall"}}}})
    assert info.value.key == "models.m.rules.estimated_metric_drop.metric"


def test_the_round_shows_the_estimate_beside_the_realised_metric(project: Project) -> None:
    rng = np.random.default_rng(5)
    p = _probabilities(n=600, seed=5)
    ids = _serve(project, p)
    labelled = ids[:300]  # half the labels have arrived
    log_labels(project, labelled, (rng.random(300) < p[:300]).astype(int),
               dt.datetime.fromtimestamp(NOW - 60, tz=dt.UTC))
    monitor = Monitor(project, MonitoringConfig.from_section({"window": "1h", "label_window": "1d"}))
    [row] = monitor.run_once(NOW)["performance"]
    est = row["estimated"]
    assert est["status"] == "estimated" and est["n"] == 600  # every answered prediction, labelled or not
    assert row["metrics"]["auc"]["n"] == 300
    for name in ("accuracy", "auc", "log_loss"):
        m = est["metrics"][name]
        assert m["realised"] == row["metrics"][name]["value"]
        assert m["error"] == pytest.approx(m["value"] - m["realised"])
        assert m["low"] <= m["value"] <= m["high"]
    assert est["metrics"]["log_loss"]["value"] == pytest.approx(estimate(p).value("log_loss"))


def test_a_round_with_no_labels_still_estimates(project: Project) -> None:
    _serve(project, _probabilities())
    monitor = Monitor(project, MonitoringConfig.from_section({"window": "1h", "label_window": "1d"}))
    [row] = monitor.run_once(NOW)["performance"]
    assert row["status"] == "no_data" and row["estimated"]["status"] == "estimated"
    assert row["estimated"]["metrics"]["auc"]["realised"] is None and row["estimated"]["metrics"]["auc"]["error"] is None


def test_the_report_shows_the_estimate_beside_the_realised_metric(project: Project) -> None:
    from modelmill.monitoring.report import build_report

    assert "Estimated performance" not in build_report(project)  # nothing served: no such section
    rng = np.random.default_rng(6)
    p = _probabilities(n=500, seed=6)
    ids = _serve(project, p, at=time.time() - 600)
    log_labels(project, ids[:200], (rng.random(200) < p[:200]).astype(int),
               dt.datetime.fromtimestamp(time.time() - 60, tz=dt.UTC))
    html = build_report(project)
    assert "Estimated performance (before the labels arrive)" in html
    section = html.split("Estimated performance", 1)[1].split("</table>", 1)[0]
    [row] = Monitor(project, MonitoringConfig.from_section({})).performance()
    for name in ("accuracy", "auc", "log_loss"):
        m = row["estimated"]["metrics"][name]
        assert (f"<td>{name}</td><td>{m['value']:.4f}</td><td>{m['low']:.4f} – {m['high']:.4f}</td><td>500</td>"
                f"<td>{m['realised']:.4f}</td><td>200</td><td>{m['error']:+.4f}</td><td>unknown</td>") in section


@pytest.mark.parametrize("spelling", ["log_loss", "logloss"])
def test_a_log_loss_baseline_is_found_as_the_trainer_or_the_gate_spells_it(project: Project, spelling: str) -> None:
    from tests.serving.conftest import signature, train_lr

    p = _probabilities()
    _serve(project, p)
    loss = estimate(p).value("log_loss")
    assert loss is not None
    Registry(project).register("m", train_lr(0), flavor="sklearn", signature=signature(),
                               metrics={spelling: loss - 0.1})
    assert _status(project, metric="log_loss", margin=0.05)[:2] == ("fail", ["firing"])


def test_failed_requests_have_no_output_and_do_not_spoil_the_estimate(project: Project) -> None:
    from tests.prediction_log import prediction_log

    p = _probabilities(n=200)
    _serve(project, p)
    at = dt.datetime.fromtimestamp(NOW - 300, tz=dt.UTC)
    with prediction_log(project.offline, at={"failed-1": at, "failed-2": at}) as writer:
        for rid in ("failed-1", "failed-2"):
            writer.append_failure(rid, "m", 1, "main", None, 500, "RuntimeError", 1.0)
    monitor = Monitor(project, MonitoringConfig.from_section({"window": "1h", "label_window": "1d"}))
    [row] = monitor.performance(NOW)
    assert row["estimated"]["status"] == "estimated" and row["estimated"]["n"] == 200
    assert _status(project, metric="auc", baseline=0.0)[0] == "pass"


def test_modelmill_monitor_json_carries_the_estimate(tmp_path: Path) -> None:
    """The CLI path: a project folder, predictions of its production version, no labels, `monitor --once --json`."""
    from modelmill.config import load_settings
    from tests.monitoring.test_cli import mm
    from tests.serving.conftest import make_project

    root = make_project(tmp_path / "proj")
    p = _probabilities(n=150)
    with Project(load_settings(cwd=root, env={})) as project:
        log_predictions(project, model="clf", version=1, ts=dt.datetime.now(tz=dt.UTC) - dt.timedelta(minutes=10),
                        features=pd.DataFrame({"x": np.zeros(p.size)}), outputs=p, latency_ms=1.0)
    out = mm(["monitor", "--once", "--json"], root)
    assert out.returncode == 3, out.stdout + out.stderr  # no reference, no labels: no data, and it says so
    [row] = json.loads(out.stdout)["performance"]
    assert (row["model"], row["version"], row["status"]) == ("clf", 1, "no_data")
    est = row["estimated"]
    assert est["status"] == "estimated" and est["n"] == 150
    assert est["metrics"]["log_loss"]["value"] == pytest.approx(estimate(p).value("log_loss"))
    assert est["metrics"]["auc"]["realised"] is None


def test_a_version_that_is_not_a_binary_classifier_is_no_data_even_with_outputs_in_0_1(project: Project) -> None:
    from tests.serving.conftest import signature, train_lr

    _serve(project, _probabilities())
    Registry(project).register("m", train_lr(0), flavor="sklearn", signature=signature(), tags={"task": "regression"},
                               metrics={"auc": 0.99})
    status, changed, ev = _status(project, metric="auc", margin=0.05)
    assert (status, changed) == ("no_data", []), ev.statuses["EstDrop"]
    [row] = Monitor(project, MonitoringConfig.from_section({"window": "1h", "label_window": "1d"})).performance(NOW)
    assert row["task"] == "regression" and row["estimated"]["status"] == "no_data"
