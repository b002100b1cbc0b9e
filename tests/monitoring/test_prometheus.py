"""Prometheus: the shipped rules pass promtool, and a real Prometheus scrapes the monitoring gauges."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
from importlib import resources
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from modelmill.monitoring import MonitoringExporter, detect_drift

from .conftest import need_binary

ASSETS = resources.files("modelmill.monitoring") / "assets"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_promtool_checks_and_unit_tests_the_shipped_rules() -> None:
    promtool = need_binary("promtool", "install it with scripts/install-prometheus.sh")
    with resources.as_file(ASSETS) as folder:
        check = subprocess.run([promtool, "check", "rules", str(folder / "prometheus-rules.yml")],
                               capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr
        unit = subprocess.run([promtool, "test", "rules", "prometheus-rules.test.yml"], cwd=folder,
                              capture_output=True, text=True, timeout=120)
        assert unit.returncode == 0, unit.stdout + unit.stderr
        tested = (folder / "prometheus-rules.test.yml").read_text()
    rules = (folder / "prometheus-rules.yml").read_text()
    for alert in re.findall(r"- alert: (\w+)", rules):  # every shipped alert has a unit test
        assert f"alertname: {alert}" in tested, alert


def test_grafana_dashboard_is_valid_json_over_the_exported_metrics() -> None:
    """The names here are the exported ones; test_live_prometheus.py asks a real Prometheus for each query."""
    dash = json.loads((ASSETS / "grafana-dashboard.json").read_text())
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    for metric in ("modelmill_drift_share", "modelmill_feature_drift_score", "modelmill_model_metric",
                   "modelmill_request_latency_seconds_bucket", "modelmill_requests_total"):
        assert metric in exprs
    assert "modelmill_request_duration_seconds" not in exprs  # never exported
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])


def test_real_prometheus_scrapes_the_gauges(tmp_path: Path) -> None:
    prometheus = need_binary("prometheus", "install it with scripts/install-prometheus.sh")
    exporter = MonitoringExporter(registry=CollectorRegistry())
    rng = np.random.default_rng(1)
    report = detect_drift({"a": rng.normal(size=2000), "b": rng.normal(size=2000)},
                          {"a": rng.normal(1, 1, 2000), "b": rng.normal(size=2000)})
    exporter.set_drift("flights", 3, report)
    exporter.set_model_metric("flights", 3, "main", "auc", 0.71)
    port, prom_port = _free_port(), _free_port()
    server, _thread = exporter.serve(port)
    with resources.as_file(ASSETS / "prometheus-rules.yml") as rules:
        (tmp_path / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"rule_files: ['{rules}']\n"
            f"scrape_configs:\n  - job_name: modelmill\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n")
        proc = subprocess.Popen([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={tmp_path / 'data'}",
                                 f"--web.listen-address=127.0.0.1:{prom_port}"],
                                stdout=subprocess.DEVNULL, stderr=(tmp_path / "prometheus.log").open("w"))
        try:
            api = f"http://127.0.0.1:{prom_port}/api/v1"
            deadline = time.monotonic() + 60
            result: list[dict[str, object]] = []
            while time.monotonic() < deadline and not result:
                time.sleep(0.5)
                try:
                    body = httpx.get(f"{api}/query", params={"query": "modelmill_drift_share"}, timeout=2).json()
                    result = body["data"]["result"]
                except (httpx.TransportError, KeyError, ValueError):
                    continue
            assert result, (tmp_path / "prometheus.log").read_text()[-2000:]
            assert result[0]["metric"]["model"] == "flights" and float(result[0]["value"][1]) == 0.5
            auc = httpx.get(f"{api}/query", params={"query": 'modelmill_model_metric{metric="auc"}'}).json()
            assert float(auc["data"]["result"][0]["value"][1]) == pytest.approx(0.71)
            groups = httpx.get(f"{api}/rules").json()["data"]["groups"]
            names = {r["name"] for g in groups for r in g["rules"]}
            assert {"ModelmillLatencyP95High", "ModelmillErrorRateHigh", "ModelmillDataDrift"} <= names
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            server.shutdown()
