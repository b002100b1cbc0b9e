"""Fails closed: every alert rule kind, with its data source removed, reports no data (or fires), never pass.

A rule that measured nothing used to look exactly like a rule that measured a healthy value: no alert, and a
firing alert resolved the moment its data stopped arriving.
"""

from __future__ import annotations

import math
import time
from typing import Any

import pytest

from modelmill.monitoring.alerts import AlertEvaluator, Rule
from modelmill.monitoring.monitor import ProjectMeasure
from modelmill.project import Project

RULES = {
    "latency_p95": ({"threshold": 50}, "no_data"),  # no prediction log
    "metric_below_baseline": ({"metric": "auc", "baseline": 0.7}, "no_data"),  # no labels
    "drift_share": ({"threshold": 0.5}, "no_data"),  # no monitoring round ever ran
    "error_rate": ({"threshold": 0.05}, "no_data"),  # no /metrics URL configured
    "feature_freshness": ({"threshold": 3600, "table": "weather"}, "fail"),  # no table: infinitely stale
}


@pytest.mark.parametrize("kind", sorted(RULES))
def test_a_rule_without_its_data_is_not_a_pass(project: Project, kind: str) -> None:
    extra, expected = RULES[kind]
    rule = Rule.from_mapping({"name": f"R_{kind}", "kind": kind, "model": "m", **extra})
    ev = AlertEvaluator(project, [rule], measure=ProjectMeasure(project))
    ev.evaluate()
    status = ev.statuses[rule.name]
    assert status.status == expected, status
    assert status.status != "pass"
    if expected == "no_data":
        assert status.reason, "no_data says why"


class Switchable:
    """A measure whose value can be taken away: the data source disappearing under a firing alert."""

    def __init__(self) -> None:
        self.value: float | None = 0.9

    def measure(self, rule: Rule, now: float) -> dict[Any, float]:
        if self.value is None:
            return {}
        return {(("model", "m"),): self.value}

    def baseline(self, rule: Rule, labels: Any) -> float | None:
        return None


@pytest.mark.parametrize("gone", [None, math.nan])
def test_a_firing_alert_stays_firing_when_its_data_goes_away(project: Project, gone: float | None) -> None:
    measure = Switchable()
    rule = Rule.from_mapping({"name": "DriftHigh", "kind": "drift_share", "threshold": 0.5})
    ev = AlertEvaluator(project, [rule], measure=measure)
    now = time.time()
    assert [a.status for a in ev.evaluate(now)] == ["firing"]
    assert ev.statuses["DriftHigh"].status == "fail"
    measure.value = gone
    assert ev.evaluate(now + 60) == []  # nothing resolved for lack of data
    assert ev.statuses["DriftHigh"].status == "no_data"
    assert [a["state"] for a in ev.active()] == ["firing"]
    measure.value = 0.1  # real data, below the threshold: now it resolves
    assert [a.status for a in ev.evaluate(now + 120)] == ["resolved"]
    assert ev.statuses["DriftHigh"].status == "pass"


class Baselined(Switchable):
    """An AUC measured on labels, with a baseline (the version's recorded metric) that can go missing."""

    def __init__(self) -> None:
        super().__init__()
        self.base: float | None = 0.9

    def baseline(self, rule: Rule, labels: Any) -> float | None:
        return self.base


def test_a_metric_drop_with_nothing_to_compare_with_is_no_data_not_a_pass(project: Project) -> None:
    measure = Baselined()
    measure.value = 0.6  # well below 0.9 - 0.05
    rule = Rule.from_mapping({"name": "AucDrop", "kind": "metric_below_baseline", "metric": "auc", "margin": 0.05})
    ev = AlertEvaluator(project, [rule], measure=measure)
    now = time.time()
    assert [a.status for a in ev.evaluate(now)] == ["firing"]
    measure.base = None  # the version has no recorded AUC: a healthy-looking value proves nothing
    measure.value = 0.95
    assert ev.evaluate(now + 60) == []  # the firing alert is not resolved for lack of a baseline
    status = ev.statuses["AucDrop"]
    assert status.status == "no_data" and "no baseline" in status.reason
    assert [a["state"] for a in ev.active()] == ["firing"]
    measure.base = 0.9  # compared again, and healthy: now it resolves
    assert [a.status for a in ev.evaluate(now + 120)] == ["resolved"]
    assert ev.statuses["AucDrop"].status == "pass"


def test_a_column_with_no_values_in_the_window_is_no_data_and_all_of_them_no_window(project: Project) -> None:
    """A feature that is null for every request of the window (an online store that lost it, say) is not
    tested: the window's drift is over the other columns and names it as no data; a window where no column
    has values is no data, never a pass (it raised out of the whole monitor round before)."""
    import datetime as dt

    import numpy as np
    import pandas as pd
    import sqlalchemy as sa

    from modelmill.monitoring import Monitor, MonitoringConfig, ReferenceStore
    from modelmill.store.tables.monitoring import monitoring_windows

    from .conftest import log_predictions

    rng = np.random.default_rng(5)
    train = pd.DataFrame({"temp": rng.normal(5, 6, 2000), "wind": rng.gamma(2, 3, 2000)})
    ReferenceStore(project).compute("flights", 1, train)
    monitor = Monitor(project, MonitoringConfig.from_section({"window": "1h", "models": ["flights"]}))
    t0 = dt.datetime(2013, 7, 1, tzinfo=dt.UTC)
    lost_wind = pd.DataFrame({"temp": rng.normal(5, 6, 300), "wind": np.full(300, np.nan)})
    log_predictions(project, model="flights", version=1, ts=t0, features=lost_wind, outputs=rng.uniform(size=300),
                    latency_ms=2.0, spread_s=600)
    one = monitor.run_once(now=(t0 + dt.timedelta(minutes=30)).timestamp())
    [window] = one["windows"]
    assert window["status"] in ("pass", "fail") and window["n_rows"] == 300
    with project.db.engine.connect() as conn:
        drift = conn.execute(sa.select(monitoring_windows.c.drift).order_by(monitoring_windows.c.id.desc())).scalar()
    assert set(drift["columns"]) == {"temp"} and "wind" in drift["no_data"]

    nothing = pd.DataFrame({"temp": np.full(200, np.nan), "wind": np.full(200, np.nan)})
    later = t0 + dt.timedelta(hours=2)
    log_predictions(project, model="flights", version=1, ts=later, features=nothing, outputs=rng.uniform(size=200),
                    latency_ms=2.0, spread_s=600)
    empty = monitor.run_once(now=(later + dt.timedelta(minutes=30)).timestamp())
    [window] = empty["windows"]
    assert window["status"] == "no_data" and "no column of flights@1 has values" in window["reason"]
    assert window["drift_share"] is None and empty["status"] == "no_data"
