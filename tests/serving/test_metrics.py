"""/metrics with several workers: every scrape, whichever worker answers it, sums all workers."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.serving.conftest import N_FEATURES


def _value(text: str, pattern: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith("#") and re.match(pattern, line):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.slow  # over 5 s (make test alone stays under 10 min; .ci/run runs it)
def test_metrics_are_summed_across_workers(project_dir: Path, serve: Any) -> None:
    proc = serve(project_dir, "--model", "clf@production", "--workers", "2")
    X = np.random.default_rng(1).normal(size=(1, N_FEATURES))
    body = {"inputs": [{"name": "input", "shape": [1, N_FEATURES], "datatype": "FP64", "data": X.tolist()}]}
    n = 60
    for _ in range(n):
        # a new connection each time, so the kernel spreads requests over both workers
        with httpx.Client(base_url=proc.url) as client:
            assert client.post("/v2/models/clf/infer", json=body).status_code == 200
    with httpx.Client(base_url=proc.url) as client:
        assert client.post("/v2/models/nope/infer", json=body).status_code == 404
    time.sleep(2.5)  # the resource sampler runs every 2 s
    texts = []
    for _ in range(6):
        with httpx.Client(base_url=proc.url) as client:
            texts.append(client.get("/metrics").text)
    for text in texts:
        ok = _value(text, r'modelmill_requests_total\{.*model="clf".*status="200".*variant="default"'
                          r'.*version="1"')
        assert ok == n, text
        assert _value(text, r'modelmill_requests_total\{.*model="\(unknown\)".*status="404"') == 1
        assert _value(text, r'modelmill_request_latency_seconds_count\{.*model="clf"') == n
        assert _value(text, r'modelmill_batch_size_count\{model="clf",version="1"\}') >= 1
        assert _value(text, r'modelmill_cache_hits_total\{model="clf"\}') == n - _value(
            text, r'modelmill_cache_misses_total\{model="clf"\}')
        assert _value(text, r"modelmill_inflight_requests ") >= 0
        assert _value(text, r"modelmill_process_resident_memory_bytes ") > 10_000_000
        assert _value(text, r"modelmill_process_cpu_seconds ") > 0
    # the same request hit the cache in each worker at most once per worker: misses <= workers
    assert _value(texts[0], r'modelmill_cache_misses_total\{model="clf"\}') <= 2


def test_request_stats_publish_what_observe_would() -> None:
    from prometheus_client import CollectorRegistry, Histogram

    from modelmill.serving import metrics

    metrics.REQUESTS.publish()  # start from what earlier tests left

    def samples(prefix: str, **labels: str) -> dict[tuple[str, str], float]:
        out = {}
        for family in metrics.REGISTRY.collect():
            for s in family.samples:
                if s.name.startswith(prefix) and all(s.labels.get(k) == v for k, v in labels.items()):
                    out[(s.name, s.labels.get("le", ""))] = s.value
        return out

    before = samples("modelmill_request_latency_seconds", route="infer", model="stats-test")
    count_before = samples("modelmill_requests_total", model="stats-test", status="200")
    seconds = [0.0001, 0.0002, 0.00021, 0.004, 0.5, 7.0, 11.0, 0.0002]
    reference = Histogram("ref_latency", "reference", buckets=metrics._LATENCY_BUCKETS, registry=CollectorRegistry())
    for x in seconds:
        metrics.REQUESTS.answered("infer", "stats-test", "1", "default", "200", x)
        reference.observe(x)
    metrics.REQUESTS.inflight += 3
    metrics.REQUESTS.publish()
    metrics.REQUESTS.inflight -= 3
    after = samples("modelmill_request_latency_seconds", route="infer", model="stats-test")
    expected = {(s.name.replace("ref_latency", "modelmill_request_latency_seconds"), s.labels.get("le", "")): s.value
                for family in reference.collect() for s in family.samples if not s.name.endswith("_created")}
    for key, value in expected.items():
        assert after[key] - before.get(key, 0.0) == pytest.approx(value), key
    count = samples("modelmill_requests_total", model="stats-test", status="200")
    assert sum(count.values()) - sum(count_before.values()) == len(seconds)
    assert samples("modelmill_inflight_requests")[("modelmill_inflight_requests", "")] == 3
