"""``[models.NAME.rules.estimated_metric_drop]`` through the loop's own measure: its min_rows, the watched alias,
and the version's recorded metric as the baseline."""

from __future__ import annotations

import datetime as dt
import time

import numpy as np
import pandas as pd

from modelmill.loop import parse_models
from modelmill.loop.measure import LoopMeasure
from modelmill.monitoring.alerts import AlertEvaluator
from modelmill.monitoring.estimate import estimate
from modelmill.project import Project
from modelmill.registry import Registry
from tests.monitoring.conftest import log_predictions
from tests.serving.conftest import signature, train_lr

NOW = time.time()


def _evaluator(project: Project, **rule: object) -> AlertEvaluator:
    m = parse_models({"m": {"pipeline": {"function": "p:q"}, "gate": {"min": {"auc": 0.6}},
                            "rules": {"estimated_metric_drop": {"metric": "auc", "margin": 0.05, "window": "1h",
                                                                "actions": [], **rule}}}}).model("m")
    counts = {m.rule_name(r.kind): r.min_count for r in m.rules}
    return AlertEvaluator(project, m.monitoring_rules(), measure=LoopMeasure(project, min_counts=counts,
                                                                            watch=m.gate.against))


def _serve(project: Project, version: int, p: np.ndarray) -> None:
    log_predictions(project, model="m", version=version, ts=dt.datetime.fromtimestamp(NOW - 600, tz=dt.UTC),
                    features=pd.DataFrame({"x": np.zeros(p.size)}), outputs=p, latency_ms=1.0)


def test_only_the_production_version_is_judged_against_its_recorded_metric(project: Project) -> None:
    rng = np.random.default_rng(0)
    p1, p2 = rng.beta(2, 3, size=300), rng.beta(2, 3, size=300)
    auc = estimate(p1).value("auc")
    assert auc is not None
    registry = Registry(project)
    registry.register("m", train_lr(0), flavor="sklearn", signature=signature(), metrics={"auc": auc + 0.1})
    registry.register("m", train_lr(1), flavor="sklearn", signature=signature(), metrics={"auc": 0.5})
    registry.set_alias("m", "production", 1)
    _serve(project, 1, p1)
    _serve(project, 2, p2)  # a candidate: judged by its guardrails, not by this rule
    ev = _evaluator(project)
    changed = ev.evaluate(NOW)
    status = ev.statuses["m.estimated_metric_drop"]
    assert (status.status, status.series) == ("fail", 1)
    assert [(a.status, a.labels["version"]) for a in changed] == [("firing", "1")]


def test_fewer_predictions_than_min_rows_is_no_data(project: Project) -> None:
    Registry(project).register("m", train_lr(0), flavor="sklearn", signature=signature(), metrics={"auc": 0.99})
    _serve(project, 1, np.random.default_rng(1).beta(2, 3, size=80))
    ev = _evaluator(project)  # min_rows defaults to 100 in the loop
    assert ev.evaluate(NOW) == [] and ev.statuses["m.estimated_metric_drop"].status == "no_data"
    ev = _evaluator(project, min_rows=50)
    assert [a.status for a in ev.evaluate(NOW)] == ["firing"]
