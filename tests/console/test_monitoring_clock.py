"""The monitoring page's delayed-label metrics over time are on the project's ``[monitoring] clock``.

The log is written by the server's own writer as a replay writes it: answered now (wall clock), its
features judged in March 2013 (``features_at``), as the flights demo (``clock = "event"``) serves.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import uuid
from collections.abc import Iterator

import numpy as np
import pytest
from starlette.testclient import TestClient

from modelmill.config import Settings
from modelmill.monitoring.performance import PerformanceMonitor
from modelmill.project import Project
from modelmill.store.feedback import write_labels
from tests.console.conftest import console_client
from tests.prediction_log import prediction_log

T0 = dt.datetime(2013, 3, 4, tzinfo=dt.UTC)
DAYS = (0, 1, 3)  # no request judged on day 2: a gap on the event clock
PER_DAY = 80


@pytest.fixture
def replayed(settings: Settings) -> Iterator[Project]:
    project = Project(dataclasses.replace(settings, extra={"monitoring": {"clock": "event"}}))
    rng = np.random.default_rng(5)
    ids, labels = [], []
    with prediction_log(project.offline) as log:
        for day in DAYS:
            for i in range(PER_DAY):
                rid = uuid.uuid4().hex
                y = int(rng.integers(0, 2))
                out = float(np.clip(0.3 + 0.4 * y + rng.normal(0, 0.2), 0, 1))
                at = T0 + dt.timedelta(days=day, minutes=10 * i)
                log.append(rid, "credit", 1, "main", None, ("x",), np.array([[out]]), np.array([out]), 2.0,
                           features_at=int(at.timestamp() * 1e6))
                ids.append(rid)
                labels.append(y)
    write_labels(project.offline, "credit", [{"id": r, "label": y} for r, y in zip(ids, labels, strict=True)])
    yield project
    project.close()


def test_rolling_buckets_are_on_the_event_clock(replayed: Project) -> None:
    event = PerformanceMonitor(replayed, clock="event").rolling(window="1d")
    assert [(r["bucket"], r["n"]) for r in event] == [(T0 + dt.timedelta(days=d), PER_DAY) for d in DAYS]
    wall = PerformanceMonitor(replayed, clock="wall").rolling(window="1d")
    assert sum(r["n"] for r in wall) == PER_DAY * len(DAYS)
    assert all(r["bucket"].year >= 2024 for r in wall)  # answered now, not in 2013


@pytest.fixture
def client(replayed: Project) -> Iterator[tuple[TestClient, dict[str, str]]]:
    with console_client(replayed) as c:
        yield c


def _delayed_label_section(html: str) -> str:
    start = html.index("Delayed-label metrics over time")
    return html[start:html.index("</section>", start)]


def test_the_page_uses_the_projects_clock_with_n_and_intervals_per_point(
        client: tuple[TestClient, dict[str, str]]) -> None:
    c, auth = client
    r = c.get("/ui/monitoring?window=1d", headers=auth)  # no ?clock=: the project's [monitoring] clock
    assert r.status_code == 200, r.text
    section = _delayed_label_section(r.text)
    assert "(event clock)" in section
    auc = next(f for f in re.findall(r"<figure.*?</figure>", section, flags=re.S) if "<title>auc" in f or ">auc<" in f)
    tips = re.findall(r"<circle[^>]*><title>([^<]*)</title>", auc)
    assert len(tips) == len(DAYS) and all("03-0" in t and "95% CI" in t and f"n={PER_DAY}" in t for t in tips), tips
    assert 'class="band"' in auc and 'class="gap"' in auc  # day 2 has no labelled prediction: a gap
    counts = next(f for f in re.findall(r"<figure.*?</figure>", section, flags=re.S) if "Labelled predictions" in f)
    assert len(re.findall(r"<circle", counts)) == len(DAYS)
    wall = _delayed_label_section(c.get("/ui/monitoring?window=1d&clock=wall", headers=auth).text)
    assert "(wall clock)" in wall and "03-0" not in wall
