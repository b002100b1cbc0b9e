"""Prometheus metrics of the server, correct with several worker processes.

With ``PROMETHEUS_MULTIPROC_DIR`` set (``modelmill serve`` sets it before the
workers start), each worker writes its samples to memory-mapped files in
that folder and ``/metrics`` sums them across workers; otherwise the
process's default registry is used.

    >>> MODEL_REQUESTS.labels("infer", "m", "1", "default", "200").inc()
    >>> b"modelmill_requests_total" in render()[0]
    True
"""

from __future__ import annotations

import bisect
import os
import shutil
import subprocess
import time
import weakref
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _mp

__all__ = [
    "BATCH_SIZE",
    "CACHE_HITS",
    "CACHE_MISSES",
    "INFLIGHT",
    "LATENCY",
    "LATENCY_SLO",
    "MISSING_FEATURES",
    "MODEL_LOAD_FAILURES",
    "MODEL_REQUESTS",
    "QUEUE_DEPTH",
    "REQUESTS",
    "SHADOW_ERRORS",
    "RequestStats",
    "ResourceSampler",
    "multiprocess_dir",
    "prepare_multiprocess_dir",
    "render",
    "set_latency_slo",
    "track_queue",
]

ENV = "PROMETHEUS_MULTIPROC_DIR"

_LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                    1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)

MODEL_REQUESTS = Counter(
    "modelmill_requests", "Prediction requests answered, by route, model, version, variant and HTTP status.",
    ["route", "model", "version", "variant", "status"],
)
LATENCY = Histogram(
    "modelmill_request_latency_seconds",
    "Time from request to response, by route, model, version and variant (so a canary's latency shows).",
    ["route", "model", "version", "variant"], buckets=_LATENCY_BUCKETS,
)
BATCH_SIZE = Histogram(
    "modelmill_batch_size", "Rows per model call after micro-batching.", ["model", "version"],
    buckets=_BATCH_BUCKETS,
)
MODEL_LOAD_FAILURES = Counter(
    "modelmill_model_load_failures", "Times a version named by a route or alias could not be loaded, by model.",
    ["model"],
)
MISSING_FEATURES = Counter(
    "modelmill_missing_features", "Features the online store lacked for a feature-route request, by model, "
    "feature and reason (missing or expired), whatever the feature service's on_missing policy did.",
    ["model", "feature", "reason"],
)
CACHE_HITS = Counter("modelmill_cache_hits", "Prediction cache hits.", ["model"])
CACHE_MISSES = Counter("modelmill_cache_misses", "Prediction cache misses.", ["model"])
SHADOW_ERRORS = Counter(
    "modelmill_shadow_errors", "Mirrored requests a shadow variant failed on (never answered to a caller).",
    ["model", "version", "variant"],
)
INFLIGHT = Gauge("modelmill_inflight_requests", "Requests being answered now.", multiprocess_mode="livesum")
PROCESS_CPU = Gauge("modelmill_process_cpu_seconds", "CPU seconds used by the serving processes.",
                    multiprocess_mode="livesum")
PROCESS_RSS = Gauge("modelmill_process_resident_memory_bytes", "Resident memory of the serving processes.",
                    multiprocess_mode="livesum")
QUEUE_DEPTH = Gauge(
    "modelmill_batch_queue_depth", "Requests waiting for a batch now, by model, version and queue (predict: the "
    "model call; shadow: mirrored requests; features: the online feature lookup), summed over workers.",
    ["model", "version", "queue"], multiprocess_mode="livesum",
)
LATENCY_SLO = Gauge(
    "modelmill_latency_slo_seconds", "The p95 latency objective, [serving] latency_slo_ms in seconds: "
    "compare histogram_quantile(0.95, modelmill_request_latency_seconds_bucket) with it.",
    multiprocess_mode="livemax",
)
GPU_UTIL = Gauge("modelmill_gpu_utilization_ratio", "GPU utilisation (0-1), when a GPU is present.", ["gpu"],
                 multiprocess_mode="livemax")


class RequestStats:
    """Request counts, latencies and in-flight requests, kept as plain numbers on the hot path.

    A Prometheus value takes a lock on every change, and in multiprocess mode
    writes a memory-mapped file too: the three per-request updates cost about
    4 us, a tenth of an OIP request. Here a request costs a few dict updates;
    :meth:`publish` moves the totals into the Prometheus metrics, before each
    scrape and every half second (the server's flush task), so another
    worker's figures in a scrape are at most that old. Only the event loop's
    thread touches an instance.
    """

    def __init__(self) -> None:
        self.inflight = 0
        self._counts: dict[tuple[str, str, str, str, str], int] = {}
        # per (route, model, version, variant): the per-bucket counts, then the sum
        self._latency: dict[tuple[str, str, str, str], list[float]] = {}

    def __repr__(self) -> str:
        return f"RequestStats(inflight={self.inflight}, pending={sum(self._counts.values())})"

    def answered(self, route: str, model: str, version: str, variant: str, status: str, seconds: float) -> None:
        key = (route, model, version, variant, status)
        self._counts[key] = self._counts.get(key, 0) + 1
        series = (route, model, version, variant)
        hist = self._latency.get(series)
        if hist is None:
            hist = self._latency[series] = [0.0] * (len(_LATENCY_BUCKETS) + 2)
        hist[bisect.bisect_left(_LATENCY_BUCKETS, seconds)] += 1  # the first bucket with seconds <= le
        hist[-1] += seconds

    def publish(self) -> None:
        """Add what was counted since the last call to the Prometheus metrics."""
        counts, self._counts = self._counts, {}
        latency, self._latency = self._latency, {}
        for labels, n in counts.items():
            MODEL_REQUESTS.labels(*labels).inc(n)
        for series, hist in latency.items():
            child: Any = LATENCY.labels(*series)
            for bucket, observed in zip(child._buckets, hist[:-1], strict=True):  # what observe() updates, in bulk
                if observed:
                    bucket.inc(observed)
            child._sum.inc(hist[-1])
        INFLIGHT.set(self.inflight)
        _publish_queues()


# Per (model, version, queue): the batchers feeding that series (a version's batcher is dropped when the
# version is unloaded, and its series then reads 0 rather than its last depth).
_QUEUES: dict[tuple[str, str, str], weakref.WeakSet[Any]] = {}


def track_queue(batcher: Any, model: str, version: str, queue: str) -> None:
    """Export ``batcher.pending`` as ``modelmill_batch_queue_depth{model, version, queue}`` at each publish."""
    _QUEUES.setdefault((model, version, queue), weakref.WeakSet()).add(batcher)


def _publish_queues() -> None:
    for labels, batchers in list(_QUEUES.items()):
        live = list(batchers)
        QUEUE_DEPTH.labels(*labels).set(sum(b.pending for b in live))
        if not live:
            del _QUEUES[labels]


def set_latency_slo(ms: float) -> None:
    """Export the configured p95 latency objective (``[serving] latency_slo_ms``) as a gauge, in seconds."""
    LATENCY_SLO.set(ms / 1000.0)


#: The process's request statistics (see :class:`RequestStats`).
REQUESTS = RequestStats()


def multiprocess_dir() -> str | None:
    return os.environ.get(ENV) or None


def prepare_multiprocess_dir(path: str | os.PathLike[str]) -> str:
    """Empty (or create) ``path`` and export it as ``PROMETHEUS_MULTIPROC_DIR`` for workers started later."""
    folder = Path(path)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    os.environ[ENV] = str(folder)
    return str(folder)


def render() -> tuple[bytes, str]:
    """The exposition text (summed over workers in multiprocess mode) and its content type."""
    if multiprocess_dir():
        registry = CollectorRegistry()
        _mp.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def mark_dead(pid: int) -> None:
    """Drop the live gauges of a worker that exited."""
    if multiprocess_dir():
        _mp.mark_process_dead(pid)


class ResourceSampler:
    """Samples this process's CPU and memory, and the GPUs' utilisation, into the gauges."""

    def __init__(self, *, gpu: bool = True) -> None:
        self.gpu = gpu
        self._nvml: object | None = None
        self._smi = shutil.which("nvidia-smi") if gpu else None
        self._gpu_next = 0.0

    def sample(self) -> None:
        PROCESS_CPU.set(time.process_time())
        PROCESS_RSS.set(_rss_bytes())
        if self.gpu and time.monotonic() >= self._gpu_next:
            self._gpu_next = time.monotonic() + 5.0
            for i, util in enumerate(self._gpu_utilization()):
                GPU_UTIL.labels(str(i)).set(util)

    def _gpu_utilization(self) -> list[float]:
        try:
            import pynvml  # type: ignore[import-not-found]

            if self._nvml is None:
                pynvml.nvmlInit()
                self._nvml = pynvml
            return [pynvml.nvmlDeviceGetUtilizationRates(pynvml.nvmlDeviceGetHandleByIndex(i)).gpu / 100.0
                    for i in range(pynvml.nvmlDeviceGetCount())]
        except Exception:
            pass
        if not self._smi:
            return []
        try:
            text = subprocess.run([self._smi, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                  capture_output=True, text=True, timeout=5, check=True).stdout
            return [float(line) / 100.0 for line in text.split() if line.strip()]
        except (OSError, subprocess.SubprocessError, ValueError):
            self._smi = None  # not usable here; stop trying
            return []


def _rss_bytes() -> float:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0
