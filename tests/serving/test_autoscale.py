"""What an autoscaler reads: the serving metrics it needs, and the HPA's queries against a real Prometheus.

- the batcher's queue depth per model and the configured p95 objective are exported, correctly with
  several worker processes (a gauge every worker sets to the same value must not be summed);
- the HorizontalPodAutoscaler's metrics (deploy/hpa.yaml), rendered from the prometheus-adapter rules in
  deploy/prometheus-adapter/values.yaml the way the adapter renders them, asked of a real Prometheus that
  scrapes a real two-worker ``modelmill serve``: every one has a value, and the request rate rises with load.
"""

from __future__ import annotations

import asyncio
import math
import re
import subprocess
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from modelmill.errors import ConfigError
from modelmill.serving import metrics
from modelmill.serving.batching import Batcher
from modelmill.serving.server import ServerConfig
from tests.monitoring.conftest import need_binary
from tests.serving.conftest import N_FEATURES, ServeProcess, free_port, infer_body, make_project

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
# What Prometheus' Kubernetes pod discovery adds to a serving pod's series (prometheus-adapter maps them).
POD_LABELS = {"namespace": "default", "pod": "modelmill-serving-0"}


def _samples(text: str, name: str) -> dict[frozenset[tuple[str, str]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                out[frozenset(s.labels.items())] = s.value
    return out


# ---- the exported metrics, in one process ------------------------------------------------------------


def test_queue_depth_is_the_batchers_waiting_requests_per_model() -> None:
    labels = frozenset({"model": "qd", "version": "3", "queue": "predict"}.items())
    calls: list[int] = []

    def fn(X: np.ndarray) -> np.ndarray:
        calls.append(len(X))
        return X.sum(axis=1)

    batcher = Batcher(fn, max_batch_size=64, max_wait_us=0, queue=("qd", "3", "predict"))
    other = Batcher(fn, max_batch_size=64, max_wait_us=0, queue=("qd", "3", "predict"))
    depths: list[float] = []

    async def main() -> None:
        futures = [batcher.submit(np.ones((1, 2))) for _ in range(5)] + [other.submit(np.ones((1, 2)))]
        metrics.REQUESTS.publish()  # nothing has run yet: all six wait
        depths.append(_samples(metrics.render()[0].decode(), "modelmill_batch_queue_depth")[labels])
        await asyncio.gather(*futures)
        metrics.REQUESTS.publish()
        depths.append(_samples(metrics.render()[0].decode(), "modelmill_batch_queue_depth")[labels])

    asyncio.run(main())
    assert depths == [6.0, 0.0]  # two batchers of one version share its series
    assert sum(calls) == 6


def test_a_dropped_batchers_series_reads_zero() -> None:
    labels = frozenset({"model": "gone", "version": "1", "queue": "shadow"}.items())

    async def main() -> None:
        b = Batcher(lambda X: X[:, 0], queue=("gone", "1", "shadow"))
        b.submit(np.ones((1, 1)))
        metrics.REQUESTS.publish()
        assert _samples(metrics.render()[0].decode(), "modelmill_batch_queue_depth")[labels] == 1.0
        assert b._task is not None
        b._task.cancel()  # the version is unloaded: its batcher stops and goes away

    asyncio.run(main())
    import gc

    gc.collect()
    metrics.REQUESTS.publish()
    assert _samples(metrics.render()[0].decode(), "modelmill_batch_queue_depth")[labels] == 0.0


def test_latency_slo_is_read_from_the_serving_section_and_checked() -> None:
    assert ServerConfig().latency_slo_ms == 100.0
    assert ServerConfig.from_section({"latency_slo_ms": 25}).latency_slo_ms == 25
    for bad in (0, -5, "fast", True):
        with pytest.raises(ConfigError) as err:
            ServerConfig.from_section({"latency_slo_ms": bad})
        assert err.value.key == "serving.latency_slo_ms"
    metrics.set_latency_slo(25)
    assert _samples(metrics.render()[0].decode(), "modelmill_latency_slo_seconds") == {frozenset(): 0.025}


def test_a_bad_latency_slo_stops_serve_naming_the_key(tmp_path: Path) -> None:
    import sys

    root = make_project(tmp_path / "proj", serving="latency_slo_ms = -1\n")
    out = subprocess.run([sys.executable, "-m", "modelmill", "serve", "--port", str(free_port())], cwd=root,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "serving.latency_slo_ms" in out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr


# ---- the HPA's queries against a real Prometheus -----------------------------------------------------


def _metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or an adapter template) reads."""
    words = set(re.findall(r"\b(modelmill_[a-z0-9_]+)\b", expr))
    return words


def hpa_queries() -> list[tuple[str, str, str]]:
    """(HPA metric name, type, PromQL) for every Pods and External metric of deploy/hpa.yaml, rendered from
    the adapter rule whose name mapping produces it, with the label matchers the adapter would add."""
    hpa = yaml.safe_load((DEPLOY / "hpa.yaml").read_text())
    adapter = yaml.safe_load((DEPLOY / "prometheus-adapter" / "values.yaml").read_text())
    out = []
    for m in hpa["spec"]["metrics"]:
        if m["type"] == "Resource":
            continue
        kind = {"Pods": "custom", "External": "external"}[m["type"]]
        name = m[m["type"].lower()]["metric"]["name"]
        found = []
        for rule in adapter["rules"].get(kind, []):
            series = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", rule["seriesQuery"])
            assert series, rule["seriesQuery"]
            pattern, as_ = rule["name"]["matches"], rule["name"]["as"]
            if not re.search(pattern, series.group(0)):
                continue
            derived = re.sub(pattern, as_.replace("${", "\\g<").replace("}", ">"), series.group(0))
            if derived != name:
                continue
            # custom (per-pod) metrics are asked per pod; external ones per namespace
            labels = POD_LABELS if kind == "custom" else {"namespace": POD_LABELS["namespace"]}
            matchers = ",".join(f'{k}="{v}"' for k, v in labels.items())
            found.append(" ".join(rule["metricsQuery"].replace("<<.Series>>", series.group(0))
                                  .replace("<<.LabelMatchers>>", matchers)
                                  .replace("<<.GroupBy>>", "pod" if kind == "custom" else "").split())
                         .replace("by ()", ""))
        assert len(found) == 1, f"{len(found)} {kind} adapter rules produce the HPA's metric {name}"
        out.append((name, m["type"], found[0]))
    return out


def test_every_hpa_metric_has_exactly_one_adapter_rule() -> None:
    queries = hpa_queries()
    assert {(n, t) for n, t, _ in queries} == {("modelmill_requests_per_second", "Pods"),
                                               ("modelmill_latency_p95_slo_ratio", "External")}
    for _, _, q in queries:
        assert "<<" not in q and _metric_names(q)


class Load:
    """``clients`` threads sending single-row OIP requests, each at most every ``pause`` seconds, until
    ``seconds`` pass or ``max_requests`` are sent (bounded in count and time)."""

    def __init__(self, url: str, *, clients: int, pause: float, seconds: float, max_requests: int = 40_000) -> None:
        self.url, self.clients, self.pause, self.seconds, self.max_requests = url, clients, pause, seconds, max_requests
        self.statuses: list[int] = []
        self._lock = threading.Lock()

    def _client(self, seed: int) -> None:
        body = infer_body(np.random.default_rng(seed).normal(size=(1, N_FEATURES)))
        deadline = time.monotonic() + self.seconds
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while time.monotonic() < deadline and len(self.statuses) < self.max_requests:
                status = client.post("/v2/models/clf/infer", json=body).status_code
                with self._lock:
                    self.statuses.append(status)
                if self.pause:
                    time.sleep(self.pause)

    def run(self) -> Load:
        threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(self.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=self.seconds + 30)
        return self


def _query(api: str, expr: str) -> list[float]:
    body = httpx.get(f"{api}/query", params={"query": expr}, timeout=5).json()
    assert body["status"] == "success", body
    return [float(r["value"][1]) for r in body["data"]["result"]]


def _wait_value(api: str, expr: str, timeout: float = 30.0) -> float:
    deadline = time.monotonic() + timeout
    values: list[float] = []
    while time.monotonic() < deadline:
        try:
            values = [v for v in _query(api, expr) if math.isfinite(v)]
        except httpx.HTTPError:
            values = []
        if values:
            return values[0]
        time.sleep(0.5)
    raise AssertionError(f"no value for {expr} in {timeout} s (last: {values})")


@pytest.mark.slow
def test_the_hpa_metrics_have_values_and_the_request_rate_rises_with_load(tmp_path: Path) -> None:
    prometheus = need_binary("prometheus", "install it with scripts/install-prometheus.sh")
    queries = {name: q for name, _, q in hpa_queries()}
    root = make_project(tmp_path / "proj", serving="latency_slo_ms = 40\n")
    serve = ServeProcess(root, "--model", "clf@production", "--workers", "2", "--no-cache").wait_ready()
    prom: subprocess.Popen[bytes] | None = None
    try:
        Load(serve.url, clients=2, pause=0.0, seconds=1.0).run()  # every worker has served (series exist)
        text = httpx.get(f"{serve.url}/metrics", timeout=5).text
        exported = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
        adapter = yaml.safe_load((DEPLOY / "prometheus-adapter" / "values.yaml").read_text())
        read = [r[k] for rules in adapter["rules"].values() if isinstance(rules, list) for r in rules
                for k in ("seriesQuery", "metricsQuery")]
        wanted = {"modelmill_inflight_requests", "modelmill_batch_queue_depth"}.union(*map(_metric_names, read))
        assert wanted <= exported, f"named in deploy/ but not exported: {sorted(wanted - exported)}"
        # one objective, set by both workers: livemax, not a sum of two
        assert _samples(text, "modelmill_latency_slo_seconds") == {frozenset(): 0.04}
        depth = _samples(text, "modelmill_batch_queue_depth")
        assert frozenset({"model": "clf", "version": "1", "queue": "predict"}.items()) in depth

        port = free_port()
        config = {"global": {"scrape_interval": "1s"},
                  "scrape_configs": [{"job_name": "modelmill-serving", "static_configs": [
                      {"targets": [serve.url.removeprefix("http://")], "labels": POD_LABELS}]}]}
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        with (tmp_path / "prometheus.log").open("wb") as fh:
            prom = subprocess.Popen([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                                     f"--storage.tsdb.path={tmp_path / 'data'}",
                                     f"--web.listen-address=127.0.0.1:{port}"], stdout=fh, stderr=subprocess.STDOUT)
        api = f"http://127.0.0.1:{port}/api/v1"
        rps, ratio = queries["modelmill_requests_per_second"], queries["modelmill_latency_p95_slo_ratio"]

        _wait_value(api, 'up{job="modelmill-serving"} == 1', timeout=60)  # Prometheus scrapes serve
        light = Load(serve.url, clients=1, pause=0.05, seconds=8.0).run()  # about 20 requests/s
        time.sleep(2.0)  # two more scrapes
        low = _wait_value(api, rps)
        heavy = Load(serve.url, clients=4, pause=0.0, seconds=8.0).run()
        time.sleep(2.0)
        high = _wait_value(api, rps)
        p95_ratio = _wait_value(api, ratio)
        inflight = _wait_value(api, 'max_over_time(sum(modelmill_inflight_requests{pod!=""})[30s:1s])')

        assert set(light.statuses) == set(heavy.statuses) == {200}
        assert len(heavy.statuses) > 4 * len(light.statuses)
        assert 0 < low < high, (low, high, len(light.statuses), len(heavy.statuses))
        assert p95_ratio > 0 and inflight >= 0
        print(f"requests/s per pod (adapter query, a 2m window mostly before the test): light {low:.1f}, heavy {high:.1f}; "
              f"p95/SLO {p95_ratio:.3f}; max in-flight {inflight}; requests sent {len(light.statuses)}, "
              f"{len(heavy.statuses)}")
    finally:
        if prom is not None:
            prom.terminate()
            prom.wait(timeout=30)
        serve.stop()
