"""/metrics with several workers: every scrape, whichever worker answers it, sums all workers."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from tests.serving.conftest import N_FEATURES


def _value(text: str, pattern: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith("#") and re.match(pattern, line):
            total += float(line.rsplit(" ", 1)[1])
    return total


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
