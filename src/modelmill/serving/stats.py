"""Per model version inference statistics, as Triton's statistics extension reports them.

``GET /v2/models[/{name}[/versions/{version}]]/stats`` answers
``{"model_stats": [...]}``; each entry holds, since the server started:

- ``inference_count`` (rows predicted) and ``execution_count`` (model calls: a
  batch of several requests is one execution), ``last_inference`` (ms since the epoch);
- ``inference_stats``: ``{"count", "ns"}`` per request for ``success`` and ``fail``
  (the whole request), ``queue`` (waiting in the micro-batcher for a batch to
  start), ``compute_input`` (from the request's arrival to its rows joining a batch:
  reading, checking and decoding the inputs), ``compute_infer`` (the model call of
  the batch the request was in), ``compute_output`` (from the model's answer to the
  response being ready), ``cache_hit`` / ``cache_miss`` (the prediction cache lookups);
- ``batch_stats``: per batch size, the executions' ``compute_infer``.

    >>> s = ModelStats("m", 1)
    >>> s.execution(3, 2_000)
    >>> s.request(ok=True, total_ns=9_000, input_ns=1_000, queue_ns=500, infer_ns=2_000, output_ns=300)
    >>> d = s.to_dict()
    >>> d["inference_count"], d["execution_count"], d["inference_stats"]["queue"]
    (3, 1, {'count': 1, 'ns': 500})
"""

from __future__ import annotations

import threading
import time
from typing import Any

__all__ = ["KINDS", "ModelStats"]

KINDS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss")


class ModelStats:
    """The counters of one model version (thread safe: a model may run in an executor thread)."""

    def __init__(self, name: str, version: int) -> None:
        self.name = name
        self.version = version
        self._lock = threading.Lock()
        self.inference_count = 0
        self.execution_count = 0
        self.last_inference_ms = 0
        self._d = {k: [0, 0] for k in KINDS}
        self._batches: dict[int, list[int]] = {}  # batch size -> [executions, compute_infer ns]

    def execution(self, rows: int, infer_ns: int) -> None:
        """One model call over ``rows`` rows that took ``infer_ns``."""
        with self._lock:
            self.execution_count += 1
            self.inference_count += rows
            self.last_inference_ms = int(time.time() * 1000)
            b = self._batches.setdefault(rows, [0, 0])
            b[0] += 1
            b[1] += infer_ns

    def cache(self, hit: bool, ns: int) -> None:
        with self._lock:
            d = self._d["cache_hit" if hit else "cache_miss"]
            d[0] += 1
            d[1] += ns

    def request(self, *, ok: bool, total_ns: int, input_ns: int | None = None, queue_ns: int | None = None,
                infer_ns: int | None = None, output_ns: int | None = None) -> None:
        """One answered request; the parts it did not go through (a cache hit has no queue) are None."""
        with self._lock:
            d = self._d
            for kind, ns in (("success" if ok else "fail", total_ns), ("compute_input", input_ns),
                             ("queue", queue_ns), ("compute_infer", infer_ns), ("compute_output", output_ns)):
                if ns is not None:
                    d[kind][0] += 1
                    d[kind][1] += max(0, int(ns))

    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "name": self.name,
                "version": str(self.version),
                "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count,
                "execution_count": self.execution_count,
                "inference_stats": {k: {"count": c, "ns": ns} for k, (c, ns) in self._d.items()},
                "batch_stats": [{"batch_size": size, "compute_input": {"count": 0, "ns": 0},
                                 "compute_infer": {"count": c, "ns": ns}, "compute_output": {"count": 0, "ns": 0}}
                                for size, (c, ns) in sorted(self._batches.items())],
            }
