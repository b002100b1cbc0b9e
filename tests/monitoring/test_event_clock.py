"""``[monitoring] clock = "event"``: windows over the event time a request's features were judged at
(``features_at``), ending at the online store's watermark: a replay of 2013 served in 2026 is monitored in
2013. The log is written by the server's own writer, answered now (wall clock), judged in 2013."""

from __future__ import annotations

import datetime as dt
import uuid

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from modelmill.errors import ConfigError, InputError
from modelmill.features import FeatureStore
from modelmill.monitoring import Monitor, MonitoringConfig
from modelmill.project import Project
from modelmill.registry import Field, Registry, Signature
from modelmill.store.feedback import Feedback, write_labels
from tests.prediction_log import prediction_log

EVENT_T0 = dt.datetime(2013, 3, 4, 9, tzinfo=dt.UTC)
SIGNATURE = Signature(inputs=[Field("x0", "float64"), Field("x1", "float64")])


def _replayed(project: Project, n: int, *, at: dt.datetime = EVENT_T0, seed: int = 0,
              event_time: bool = True, keyed: bool = True) -> tuple[list[str], np.ndarray]:
    """``n`` requests answered now, their features judged at ``at`` + i minutes (as the feature route logs them)."""
    rng = np.random.default_rng(seed)
    ids = [uuid.uuid4().hex for _ in range(n)]
    X = rng.normal(size=(n, 2))
    out = np.round(rng.uniform(size=n), 3)
    with prediction_log(project.offline) as log:
        for i, rid in enumerate(ids):
            features_at = int((at + dt.timedelta(minutes=i)).timestamp() * 1e6) if event_time else None
            log.append(rid, "credit", 1, "main", None, ("x0", "x1"), X[i:i + 1], out[i:i + 1], 2.0,
                       entities={"id": i} if keyed else None, features_at=features_at)
    return ids, out


def _register(project: Project) -> None:
    X = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0], [3.0, 1.0]])
    Registry(project).register("credit", LogisticRegression().fit(X, [0, 0, 1, 1]), flavor="sklearn",
                               signature=SIGNATURE)


def test_event_windows_select_by_the_time_features_were_judged_at(project: Project) -> None:
    ids, _ = _replayed(project, 120)
    labels = (np.arange(120) % 3 == 0).astype(int)
    write_labels(project.offline, "credit", [{"id": r, "label": int(y)} for r, y in zip(ids, labels, strict=True)])
    first_hour = (EVENT_T0, EVENT_T0 + dt.timedelta(hours=1))
    wall = Feedback(project.offline)
    event = Feedback(project.offline, clock="event")
    assert wall.labelled(start=first_hour[0], end=first_hour[1]).num_rows == 0  # answered in 2026, not 2013
    got = event.labelled(start=first_hour[0], end=first_hour[1])
    assert got.num_rows == 60  # minutes 0..59 of the replay
    assert event.served_versions(start=first_hour[0], end=first_hour[1]) == [("credit", 1)]
    assert wall.served_versions(start=first_hour[0], end=first_hour[1]) == []
    outcomes = event.outcomes("credit", since=EVENT_T0 + dt.timedelta(minutes=100))
    assert outcomes is not None and len(outcomes) == 20
    assert outcomes["t"].min() == pytest.approx((EVENT_T0 + dt.timedelta(minutes=100)).timestamp())
    with pytest.raises(InputError, match="clock"):
        Feedback(project.offline, clock="simulated")


def test_monitor_under_the_event_clock_ends_its_windows_at_the_watermark(project: Project) -> None:
    _register(project)
    ids, out = _replayed(project, 300)
    labels = np.random.default_rng(1).integers(0, 2, size=300)
    write_labels(project.offline, "credit", [{"id": r, "label": int(y)} for r, y in zip(ids, labels, strict=True)])
    config = MonitoringConfig.from_section({"clock": "event", "window": "1d", "label_window": "2h"})
    monitor = Monitor(project, config)
    FeatureStore(project).set_watermark(int((EVENT_T0 + dt.timedelta(hours=3)).timestamp() * 1e6))
    assert monitor.now() == (EVENT_T0 + dt.timedelta(hours=3)).timestamp()
    result = monitor.run_once()
    assert result["at"] == monitor.now()
    [perf] = result["performance"]
    # The label window is the 2 hours before the watermark: requests judged at minutes 60..179, all 2013.
    inside = slice(60, 180)
    assert perf["n"] == 120
    assert perf["metrics"]["auc"]["value"] == pytest.approx(roc_auc_score(labels[inside], out[inside]), abs=1e-9)
    # The same log under the wall clock: nothing was answered in the last day of 2013's replay time.
    wall = Monitor(project, MonitoringConfig.from_section({"window": "1d", "label_window": "2h"}))
    [wall_perf] = wall.run_once(now=(EVENT_T0 + dt.timedelta(hours=3)).timestamp())["performance"] or [{"n": 0}]
    assert wall_perf["n"] == 0


@pytest.mark.parametrize("keyed", [True, False], ids=["feature-route", "oip-route"])
def test_no_event_time_is_no_data_never_pass(project: Project, keyed: bool) -> None:
    """Requests that logged no features_at (the OIP route, or no watermark to judge at) are in no event
    window: the round has no data."""
    _register(project)
    _replayed(project, 50, event_time=False, keyed=keyed)
    monitor = Monitor(project, MonitoringConfig.from_section({"clock": "event", "window": "1d"}))
    FeatureStore(project).set_watermark(int(EVENT_T0.timestamp() * 1e6))
    result = monitor.run_once()
    assert result["status"] == "no_data" and result["windows"] == [] and result["performance"] == []
    assert "no predictions logged" in result["reasons"][0]


def test_no_watermark_falls_back_to_the_wall_clock(project: Project) -> None:
    monitor = Monitor(project, MonitoringConfig.from_section({"clock": "event"}))
    before = pd.Timestamp.now(tz="UTC").timestamp()
    assert before - 1 <= monitor.now() <= pd.Timestamp.now(tz="UTC").timestamp() + 1


def test_clock_is_validated() -> None:
    with pytest.raises(ConfigError, match=r"monitoring\.clock"):
        MonitoringConfig.from_section({"clock": "simulated"})
    assert MonitoringConfig.from_section({}).clock == "wall"
