"""The shipped Prometheus rules, Grafana dashboard and HPA metric against what modelmill really exports.

One module-wide stack: a real ``modelmill serve`` (model ``clf``: a stable variant and a canary that fails
on about one request in six with 422) and a real ``modelmill monitor`` with its exporter, under a bounded
stream of requests (successes, model failures, malformed requests), with a reference profile and labels so
that drift and quality gauges exist. Two questions are asked of it:

- do the promtool unit tests feed series named and labelled as the live exposition names them?
- does a real Prometheus scraping both return a series for every shipped query?
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from modelmill.demo.faulty import FaultyModel
from modelmill.monitoring import ReferenceStore
from modelmill.registry import Registry
from modelmill.serving import RouteTable, Variant
from tests.serving.conftest import (
    COLUMNS,
    N_FEATURES,
    ServeProcess,
    free_port,
    make_project,
    open_project_at,
    signature,
    train_lr,
)

from .conftest import log_labels, need_binary

REPO = Path(__file__).resolve().parents[2]
ASSETS = REPO / "src" / "modelmill" / "monitoring" / "assets"
DEPLOY = REPO / "deploy"
# What Prometheus' Kubernetes pod discovery adds to a serving pod's series (prometheus-adapter maps them).
POD_LABELS = {"namespace": "default", "pod": "modelmill-serving-0"}


class Traffic:
    """One client sending single-row requests of random users until stopped (bounded in count and time).

    Every 40th request is malformed (400) and every 97th names an unknown model (404): caller errors,
    which the error-rate rule must not count; the canary's failures (422) are model errors.
    """

    def __init__(self, url: str, *, max_requests: int = 150_000, max_seconds: float = 900.0) -> None:
        self.url = url
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.statuses: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> Traffic:
        self._thread.start()
        return self

    @property
    def flowing(self) -> bool:
        """Still sending: the rate queries and the monitor's window need requests up to the moment asked."""
        return self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        rng = np.random.default_rng(3)
        deadline = time.monotonic() + self.max_seconds
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while not self._stop.is_set() and len(self.statuses) < self.max_requests and time.monotonic() < deadline:
                i = len(self.statuses)
                x = rng.normal(size=N_FEATURES)
                body = {"inputs": [{"name": c, "shape": [1], "datatype": "FP64", "data": [float(v)]}
                                   for c, v in zip(COLUMNS, x, strict=True)],
                        "parameters": {"routing_key": f"user-{rng.integers(1_000_000)}"}}
                if i % 40 == 39:
                    r = client.post("/v2/models/clf/infer", content=b"{")
                elif i % 97 == 96:
                    r = client.post("/v2/models/nope/infer", json=body)
                else:
                    r = client.post("/v2/models/clf/infer", json=body)
                self.statuses.append(r.status_code)
                time.sleep(0.005)  # a steady stream, not a load test


@dataclasses.dataclass
class Stack:
    root: Path
    serve_url: str
    monitor_url: str
    traffic: Traffic
    canary_version: int


def _scrape(url: str) -> str:
    return httpx.get(f"{url}/metrics", timeout=5).text


def _wait(what: str, check: Any, timeout: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"{what} not seen in {timeout} s" + (f":\n{log.read_text()[-3000:]}" if log else ""))


def _label_requests(root: Path) -> int:
    """Label every successful logged prediction (as the label feed would, an hour later); returns how many."""
    project = open_project_at(root)
    try:
        if not project.offline.exists("predictions"):
            return 0
        with project.offline.connect(["predictions"]) as con:
            rows = con.execute("SELECT request_id, output FROM predictions").fetchall()
        rows = [(rid, out) for rid, out in rows if out is not None and math.isfinite(out)]
        if len(rows) < 50:
            return 0
        rng = np.random.default_rng(9)
        y = (rng.random(len(rows)) < np.array([o for _, o in rows])).astype(np.int64)
        log_labels(project, [rid for rid, _ in rows], y, dt.datetime.now(dt.UTC))
        return len(rows)
    finally:
        project.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = make_project(tmp_path_factory.mktemp("live") / "proj")  # clf v1 (production) and v2
    project = open_project_at(root)
    try:
        registry = Registry(project)
        stable = registry.load(registry.resolve("clf@1"))
        canary = registry.register("clf", FaultyModel(train_lr(0), column=0, limit=1.0), flavor="sklearn",
                                   signature=signature())
        RouteTable(project).set("clf", [Variant("stable", "production", 80), Variant("canary", canary.version, 20)])
        train = pd.DataFrame(np.random.default_rng(5).normal(size=(3000, N_FEATURES)), columns=COLUMNS)
        outputs = stable.predict(train.to_numpy())  # the canary wraps the same model
        for version in (1, canary.version):
            ReferenceStore(project).compute("clf", version, train, predictions=outputs)
    finally:
        project.close()
    procs: list[subprocess.Popen[bytes]] = []
    serve = ServeProcess(root, "--no-cache").wait_ready()
    traffic = Traffic(serve.url).start()
    monitor_port = free_port()
    with (root / "modelmill.toml").open("a") as fh:
        fh.write(f'\n[monitoring]\ninterval = "1s"\nwindow = "1h"\nmetrics_url = "{serve.url}/metrics"\n'
                 '[[monitoring.rules]]\nname = "AnyTraffic"\nkind = "latency_p95"\nthreshold = 0\n'
                 '[[monitoring.rules]]\nname = "ClfErrors"\nkind = "error_rate"\nthreshold = 0.01\n')
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("MODELMILL_HOME", None)
    monitor_log = root / "monitor.log"
    with monitor_log.open("wb") as out:
        procs.append(subprocess.Popen([sys.executable, "-m", "modelmill", "monitor", "--exporter-port",
                                       str(monitor_port)], cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT))
    monitor_url = f"http://127.0.0.1:{monitor_port}"
    try:
        labelled = [0]

        def labelled_and_monitored() -> bool:
            if not labelled[0]:
                labelled[0] = _label_requests(root)
            text = _scrape(monitor_url) if labelled[0] else ""
            return all(s in text for s in ("modelmill_drift_share{", 'metric="auc"', "modelmill_alert_active{",
                                           "modelmill_monitor_last_run_timestamp_seconds "))

        _wait("the monitor's drift, quality and alert gauges", labelled_and_monitored, 120, monitor_log)
        _wait("a model failure (422) in serving's counters",
              lambda: 'status="422"' in _scrape(serve.url) and 'status="400"' in _scrape(serve.url), 60, serve.log)
        yield Stack(root=root, serve_url=serve.url, monitor_url=monitor_url, traffic=traffic,
                    canary_version=canary.version)
    finally:
        traffic.stop()
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        serve.stop()


# ---- the promtool unit tests feed the live names ---------------------------------------------------------


_SERIES = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?$")


def _series_labels(series: str) -> tuple[str, frozenset[str]]:
    m = _SERIES.match(series.strip())
    assert m, f"cannot read the test series {series!r}"
    labels = re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"', m.group("labels") or "")
    return m.group("name"), frozenset(labels)


def _live_series(*texts: str) -> dict[str, set[frozenset[str]]]:
    """Every sample name of the expositions, with the label-name sets it is exported with."""
    out: dict[str, set[frozenset[str]]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out.setdefault(s.name, set()).add(frozenset(s.labels))
    return out


def test_promtool_test_series_are_named_and_labelled_as_the_live_exposition(stack: Stack) -> None:
    """Each input series of prometheus-rules.test.yml exists in a real scrape of serve and the monitor, with
    exactly the label names it is exported with (so a rule test cannot pass on a name nobody exports)."""
    live = _live_series(_scrape(stack.serve_url), _scrape(stack.monitor_url))
    tests = yaml.safe_load((ASSETS / "prometheus-rules.test.yml").read_text())["tests"]
    used = [s["series"] for t in tests for s in t["input_series"]]
    assert len(used) > 10
    wrong = []
    for series in used:
        name, labels = _series_labels(series)
        if labels not in live.get(name, set()):
            wrong.append(f"{series}: live label sets {sorted(map(sorted, live.get(name, set())))}")
    assert not wrong, "\n".join(wrong)


# ---- a real Prometheus finds a series for every shipped query --------------------------------------------


def _split_top_level(expr: str, word: str) -> list[str]:
    """``expr`` split on the binary operator ``word`` where it is outside brackets and strings."""
    parts, depth, quote, start, i = [], 0, "", 0, 0
    while i < len(expr):
        ch = expr[i]
        if quote:
            quote = "" if ch == quote and expr[i - 1] != "\\" else quote
        elif ch in "\"'`":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0 and i > 0 and re.match(rf"\s{word}\s", expr[i - 1:i + len(word) + 1]):
            parts.append(expr[start:i])
            start = i + len(word)
            i = start
            continue
        i += 1
    parts.append(expr[start:])
    return [p.strip() for p in parts]


_COMPARISON = re.compile(r"\s*(==|!=|>=|<=|>|<)\s*-?[0-9.]+(e[+-]?[0-9]+)?\s*$")


def _metric_parts(expr: str) -> list[str]:
    """The measured part of each alternative of an alert expression.

    An alert is ``<measurement> <comparison> <threshold>``, perhaps ``or``-ed with more. The comparison
    filters out every series while the system is healthy, so "the expression returns a series" says
    nothing; the measurement returning one does: it proves each metric, label and function in it exists
    and matches. ``absent(x)`` is the one form that is empty while ``x`` exists: for it, ``x`` is asked.
    """
    out = []
    for alternative in _split_top_level(" ".join(expr.split()), "or"):
        part = _COMPARISON.sub("", alternative)
        inner = re.fullmatch(r"absent\((.*)\)", part)
        out.append(inner.group(1) if inner else part)
    return out


def _dashboard_queries() -> list[tuple[str, str]]:
    """(where, expr) for every panel target, the dashboard's variables replaced by their "All" values."""
    dash = json.loads((ASSETS / "grafana-dashboard.json").read_text())
    values = {v["name"]: v.get("allValue", ".*") for v in dash["templating"]["list"] if v["type"] == "query"}
    out = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in values.items():
                expr = expr.replace(f"${{{name}}}", value).replace(f"${name}", value)
            assert "$" not in expr, f"panel {panel['title']!r} uses an unknown variable: {expr}"
            out.append((f"panel {panel['title']!r} {target['refId']}", expr))
    return out


def _hpa_queries() -> tuple[str, list[tuple[str, str, bool]]]:
    """The HPA's Pods metric, and the adapter rule's series query (asked of the series API: True) and
    rendered metrics query that produce it."""
    hpa = yaml.safe_load((DEPLOY / "hpa.yaml").read_text())
    [name] = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    adapter = yaml.safe_load((DEPLOY / "prometheus-adapter" / "values.yaml").read_text())
    queries = []
    for rule in adapter["rules"]["custom"]:
        series = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", rule["seriesQuery"])
        assert series, rule["seriesQuery"]
        pattern, as_ = rule["name"]["matches"], rule["name"]["as"]
        derived = re.sub(pattern, as_.replace("${", "\\g<").replace("}", ">"), series.group(0))
        if derived != name:
            continue
        matchers = ",".join(f'{k}="{v}"' for k, v in POD_LABELS.items())
        metrics_query = (rule["metricsQuery"].replace("<<.Series>>", series.group(0))
                         .replace("<<.LabelMatchers>>", matchers).replace("<<.GroupBy>>", "pod"))
        queries += [(f"adapter rule for {name}: series", rule["seriesQuery"], True),
                    (f"adapter rule for {name}: metrics", metrics_query, False)]
    return name, queries


def _prometheus_config(tmp_path: Path, stack: Stack) -> Path:
    """Scrape serve (as a pod: the labels Kubernetes discovery adds) and the monitor every second, with the
    shipped rules; their ``for`` is dropped so an alert that the traffic breaches fires within the test."""
    rules = yaml.safe_load((ASSETS / "prometheus-rules.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("for", None)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    serve, monitor = stack.serve_url.removeprefix("http://"), stack.monitor_url.removeprefix("http://")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(tmp_path / "rules.yml")],
        "scrape_configs": [
            {"job_name": "modelmill-serving", "static_configs": [{"targets": [serve], "labels": POD_LABELS}]},
            {"job_name": "modelmill-monitor", "static_configs": [{"targets": [monitor]}]},
        ],
    }
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def _has_series(api: str, expr: str, *, series_api: bool = False) -> tuple[bool, str]:
    """Whether the query returns at least one series with a number (NaN is no data); and what it said."""
    if series_api:
        body = httpx.get(f"{api}/series", params={"match[]": expr}, timeout=5).json()
        return bool(body.get("data")), json.dumps(body)[:300]
    body = httpx.get(f"{api}/query", params={"query": expr}, timeout=5).json()
    if body.get("status") != "success":
        return False, json.dumps(body)[:300]
    result = body["data"]["result"]
    finite = [r for r in result if math.isfinite(float(r["value"][1]))]
    return bool(finite), f"{len(result)} series, {len(finite)} with a number"


@pytest.mark.slow  # many CLI processes or a served model: .ci/run runs it, make test keeps its 10 minutes
def test_real_prometheus_finds_a_series_for_every_alert_panel_and_the_hpa_metric(stack: Stack,
                                                                                 tmp_path: Path) -> None:
    """Every shipped query, asked of a real Prometheus scraping the live stack, returns a series.

    - alert rules: the measured part of each alternative (see :func:`_metric_parts`): the comparison
      with the threshold is stripped, ``absent(x)`` asks for ``x``; the whole expression must parse too;
    - Grafana: every panel target as written, ``$model`` as its "All" value, and the ``model`` variable's
      ``label_values`` query;
    - HPA: its Pods metric comes from the prometheus-adapter rule in deploy/; the rule's series query must
      find serve's series (with the pod labels discovery adds) and its rendered metrics query a value.

    A series must carry a number (a NaN quantile or ratio is no data). Prometheus is polled until every
    query answers or a minute passes, then each query that never did is listed.
    """
    prometheus = need_binary("prometheus", "install it with scripts/install-prometheus.sh")
    assert stack.traffic.flowing, f"the traffic ended ({len(stack.traffic.statuses)} requests) before the test"
    rules = yaml.safe_load((ASSETS / "prometheus-rules.yml").read_text())
    alert_exprs = {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"]}
    queries: list[tuple[str, str, bool]] = []
    for alert, expr in alert_exprs.items():
        parts = _metric_parts(expr)
        queries += [(f"alert {alert} part {i}", part, False) for i, part in enumerate(parts)]
    queries += [(where, expr, False) for where, expr in _dashboard_queries()]
    hpa_metric, hpa_queries = _hpa_queries()
    assert hpa_queries, f"no prometheus-adapter rule in deploy/ produces the HPA's metric {hpa_metric}"
    queries += hpa_queries
    assert {"ModelmillLatencyP95High", "ModelmillErrorRateHigh", "ModelmillMonitorStale"} <= set(alert_exprs)

    prom_port = free_port()
    log = tmp_path / "prometheus.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen([prometheus, f"--config.file={_prometheus_config(tmp_path, stack)}",
                                 f"--storage.tsdb.path={tmp_path / 'data'}",
                                 f"--web.listen-address=127.0.0.1:{prom_port}"], stdout=fh, stderr=subprocess.STDOUT)
    api = f"http://127.0.0.1:{prom_port}/api/v1"
    try:
        answers: dict[str, str] = {}
        missing = [q[0] for q in queries]
        deadline = time.monotonic() + 60
        while missing and time.monotonic() < deadline:
            time.sleep(1.0)
            try:
                for where, expr, series_api in queries:
                    ok, answers[where] = _has_series(api, expr, series_api=series_api)
                    if ok and where in missing:
                        missing.remove(where)
            except (httpx.HTTPError, ValueError):
                continue  # Prometheus is still starting
        assert not missing, "\n".join(f"{w}: {dict((q[0], q[1]) for q in queries)[w]} -> {answers.get(w)}"
                                      for w in missing) + "\n" + log.read_text()[-2000:]
        for alert, expr in alert_exprs.items():  # the whole expression is valid PromQL as well
            body = httpx.get(f"{api}/query", params={"query": expr}, timeout=5).json()
            assert body["status"] == "success", (alert, body)
        models = httpx.get(f"{api}/label/model/values", params={"match[]": "modelmill_requests_total"}).json()
        assert "clf" in models["data"]  # the dashboard's model variable: label_values(modelmill_requests_total, model)
        canary = httpx.get(f"{api}/query", params={"query": (
            'modelmill_request_latency_seconds_count{model="clf",variant="canary",'
            f'version="{stack.canary_version}"}}')}).json()
        assert canary["data"]["result"], "the canary's latency is not told apart from the stable variant's"
        # the rule fires at a rule evaluation after the scrapes it needs: wait for it (an event, not a clock)
        deadline = time.monotonic() + 60
        while True:
            firing = httpx.get(f"{api}/query", params={"query": 'ALERTS{alertname="ModelmillErrorRateHigh"}'}).json()
            if firing["data"]["result"] or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        assert firing["data"]["result"], "the canary's 422s did not breach the error-rate rule"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_monitors_error_rate_rule_counts_the_canarys_model_failures(stack: Stack) -> None:
    """The traffic has no 5xx: only the canary's 422s (and callers' 400/404) can breach ``ClfErrors``."""
    assert stack.traffic.flowing, f"the traffic ended ({len(stack.traffic.statuses)} requests) before the test"
    assert 422 in stack.traffic.statuses and not any(s >= 500 for s in stack.traffic.statuses)
    _wait("the monitor's error_rate rule firing on 422s",
          lambda: 'modelmill_alert_active{alertname="ClfErrors"} 1.0' in _scrape(stack.monitor_url), 60)
