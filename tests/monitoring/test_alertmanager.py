"""The monitor's alerts posted to a real Alertmanager's API (Debian's prometheus-alertmanager on loopback).

An incident's alert shows in Alertmanager while it fires, carrying the rule's labels; it is re-sent each round it
stays firing (Alertmanager resolves an alert that nobody re-sends), and its resolution reaches Alertmanager too.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from modelmill.errors import ConfigError
from modelmill.monitoring import Alert, AlertEvaluator, AlertmanagerSink, Rule
from modelmill.monitoring.alerts import sink_from_mapping
from modelmill.monitoring.monitor import ProjectMeasure
from modelmill.project import Project
from tests.conftest import need
from tests.processes import stop_process
from tests.serving.conftest import free_port

from .conftest import log_predictions

T0 = dt.datetime(2024, 7, 1, 12, tzinfo=dt.UTC)
CONFIG = """route:
  receiver: "null"
  group_wait: 1h
receivers:
  - name: "null"
"""


class Alertmanager:
    def __init__(self, folder: Path) -> None:
        binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
        need(binary, "Alertmanager is not installed", "install it with scripts/install-alertmanager.sh")
        (folder / "alertmanager.yml").write_text(CONFIG)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = folder / "alertmanager.log"
        with self.log.open("wb") as fh:
            self.proc = subprocess.Popen(
                [str(binary), f"--config.file={folder / 'alertmanager.yml'}", f"--storage.path={folder / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address="],
                stdout=fh, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        stop_process(self.proc)
        raise RuntimeError(f"Alertmanager did not start:\n{self.log.read_text()[-2000:]}")

    def alerts(self) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.url}/api/v2/alerts", timeout=5)
        r.raise_for_status()
        return list(r.json())


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[Alertmanager]:
    am = Alertmanager(tmp_path)
    try:
        yield am
    finally:
        stop_process(am.proc)


class Recording:
    """A sink that records what it is sent, and asks, as Alertmanager's sink does, for firing alerts each round."""

    repeat_firing = True

    def __init__(self) -> None:
        self.sent: list[list[tuple[str, str]]] = []

    def send(self, alerts: Sequence[Alert]) -> None:
        self.sent.append([(a.rule, a.status) for a in alerts])


def _traffic(project: Project, at: dt.datetime, latency_ms: float, n: int = 200) -> None:
    rng = np.random.default_rng(int(at.timestamp()))
    log_predictions(project, model="flights", version=1, ts=at, features=pd.DataFrame({"x": rng.normal(size=n)}),
                    outputs=rng.random(n), latency_ms=rng.normal(latency_ms, 1.0, n))


def _rule() -> Rule:
    return Rule.from_mapping({"name": "LatencyHigh", "kind": "latency_p95", "threshold": 50, "window": "5m",
                              "severity": "page"})


def test_an_incident_fires_in_alertmanager_and_resolves_there(project: Project, alertmanager: Alertmanager) -> None:
    sink = sink_from_mapping({"type": "alertmanager", "url": alertmanager.url, "expires_s": 600})
    assert isinstance(sink, AlertmanagerSink)
    ev = AlertEvaluator(project, [_rule()], measure=ProjectMeasure(project), sinks=[sink])
    t0 = T0.timestamp()
    _traffic(project, T0, latency_ms=80.0)
    assert alertmanager.alerts() == []
    assert [a.status for a in ev.evaluate(t0 + 120)] == ["firing"]
    [shown] = alertmanager.alerts()
    assert shown["labels"] == {"alertname": "LatencyHigh", "severity": "page", "model": "flights", "version": "1",
                               "variant": "main"}
    assert shown["status"]["state"] == "active" and float(shown["annotations"]["value"]) > 50
    assert shown["startsAt"].startswith("2024-07-01T12:02")
    first_end = shown["endsAt"]
    ev.evaluate(t0 + 180)  # still firing: sent again, so Alertmanager keeps it (its end moves on)
    [again] = alertmanager.alerts()
    assert again["fingerprint"] == shown["fingerprint"] and again["endsAt"] > first_end
    _traffic(project, T0 + dt.timedelta(minutes=10), latency_ms=5.0)  # recovered
    assert [a.status for a in ev.evaluate(t0 + 700)] == ["resolved"]
    assert alertmanager.alerts() == []  # resolved there too (its endsAt is the resolution, in the past)


def test_a_firing_alert_is_resent_each_round_to_a_repeating_sink_only(project: Project) -> None:
    repeating, once = Recording(), Recording()
    once.repeat_firing = False  # type: ignore[misc]
    ev = AlertEvaluator(project, [_rule()], measure=ProjectMeasure(project), sinks=[repeating, once])
    t0 = T0.timestamp()
    _traffic(project, T0, latency_ms=80.0)
    for now in (t0 + 120, t0 + 150, t0 + 180):
        ev.evaluate(now)
    _traffic(project, T0 + dt.timedelta(minutes=10), latency_ms=5.0)
    ev.evaluate(t0 + 700)
    ev.evaluate(t0 + 730)  # nothing firing any more: nothing re-sent
    fired, resolved = [("LatencyHigh", "firing")], [("LatencyHigh", "resolved")]
    assert repeating.sent == [fired, fired, fired, resolved]  # the transition once, then again each round
    assert once.sent == [fired, resolved]


def test_an_unreachable_alertmanager_is_logged_and_the_round_goes_on(
        project: Project, caplog: pytest.LogCaptureFixture) -> None:
    sink = AlertmanagerSink(url=f"http://127.0.0.1:{free_port()}", timeout_s=0.5, retries=1)
    ev = AlertEvaluator(project, [_rule()], measure=ProjectMeasure(project), sinks=[sink])
    _traffic(project, T0, latency_ms=80.0)
    with caplog.at_level(logging.ERROR, logger="modelmill.monitoring"):
        assert [a.status for a in ev.evaluate(T0.timestamp() + 120)] == ["firing"]
    assert any("alertmanager" in r.getMessage() and "unreachable" in r.getMessage() for r in caplog.records)
    assert [a["state"] for a in ev.active()] == ["firing"]  # the alert's state is kept for the next round


@pytest.mark.parametrize(("table", "key"), [
    ({"type": "alertmanager", "url": "ftp://x"}, "monitoring.sinks.url"),
    ({"type": "alertmanager", "url": "http://am:9093", "expires_s": 0}, "monitoring.sinks.expires_s"),
    ({"type": "alertmanager", "url": "http://am:9093", "timeout_s": "5"}, "monitoring.sinks.timeout_s"),
    ({"type": "pager"}, "monitoring.sinks.type"),
])
def test_a_bad_sink_table_names_its_key(table: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        sink_from_mapping(table)
    assert err.value.key == key
