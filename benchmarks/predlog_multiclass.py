"""The prediction log's cost of keeping a multiclass model's probabilities, against a binary model's rows.

    .venv/bin/python benchmarks/predlog_multiclass.py

One PredictionLog, in memory (an offline store in a temporary folder), takes the same requests three ways,
each timed over the whole append loop and the conversion of its buffer to Arrow (what the writer thread
does, without the Parquet write): a binary model (one output per row, no probabilities), a 10-class model's
rows as the server logs them now (the predicted index and the ``[rows, 10]`` probabilities), and the same
10-class rows without probabilities (what the log kept before). Single-row requests, as online serving sends
them, and 64-row batches. The ratio goal: a 10-class row costs at most 1.2x a binary one to log.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _runner import Benchmark
from modelmill.store import OfflineStore
from modelmill.store.feedback import PredictionLog

COLUMNS = tuple(f"f{i}" for i in range(20))


def run(requests: int, rows: int, classes: int | None, *, with_probabilities: bool, repeats: int = 9) -> float:
    """Best seconds per logged row over ``repeats``: appends plus building the Arrow table."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(rows, len(COLUMNS)))
    proba = rng.dirichlet(np.ones(classes), size=rows) if classes else None
    out = proba.argmax(axis=1).astype(np.float64) if proba is not None else rng.random(rows)
    best = float("inf")
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(repeats):
            log = PredictionLog(OfflineStore(folder), flush_rows=10 ** 9, max_buffer_rows=10 ** 9)
            t0 = time.perf_counter()
            for i in range(requests):
                log.append(f"r{i}", "m", 1, "default", None, COLUMNS, X, out, 0.3,
                           probabilities=proba if with_probabilities else None)
            for buf in log._bufs.values():  # what the writer thread does before the Parquet write
                buf.to_arrow()
            best = min(best, (time.perf_counter() - t0) / (requests * rows))
    return best


def main() -> None:
    bench = Benchmark("predlog_multiclass", "Prediction log: a 10-class model's rows against a binary model's")
    for rows, requests in ((1, 20_000), (64, 1_000)):
        binary = run(requests, rows, None, with_probabilities=False)
        multi = run(requests, rows, 10, with_probabilities=True)
        bare = run(requests, rows, 10, with_probabilities=False)
        for label, s in (("binary", binary), ("10-class, probabilities kept", multi),
                         ("10-class, index only (before)", bare)):
            bench.row(f"{rows}-row requests: {label}", us_per_row=round(s * 1e6, 3), rows_per_s=round(1 / s))
        ratio = multi / binary
        bench.ratio(f"{rows}-row requests: 10-class / binary", round(ratio, 3), goal="<= 1.2", met=ratio <= 1.2)
    bench.finish()


if __name__ == "__main__":
    main()
