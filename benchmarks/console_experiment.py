"""The experiment page over time: the server's time to render it, against the page's own current analysis.

Builds a project in a temporary folder with one served experiment (``--requests`` logged requests, two
variants, spread over 24 hours, written by the server's own prediction-log writer) and renders
``/ui/experiments/ab`` in this process (the page function, so the console's 10 s reuse does not hide the
work). The baseline, in the same run, is the page's "now" part alone (``experiment results``: one read of
the log, one analysis); each over-time variant adds its looks (one ``Experiments.analyze_log`` per look
on slices of one read). The goal is the console's: at most 300 ms.

    .venv/bin/python benchmarks/console_experiment.py [--requests 20000] [--loads 10]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from _runner import Benchmark, percentiles

GOAL_MS = 300.0


class _Backdated:
    """The offline store as the log writer sees it, each row stamped with its request's chosen time."""

    def __init__(self, offline: Any, at: Mapping[str, dt.datetime]) -> None:
        self.offline, self.at = offline, at

    def write(self, table: str, data: pa.Table, **options: Any) -> Any:
        i = data.schema.get_field_index("ts")
        stamps = pa.array([self.at[r] for r in data.column("request_id").to_pylist()], data.schema.field(i).type)
        return self.offline.write(table, data.set_column(i, data.schema.field(i), stamps), **options)


def _project(folder: str, requests: int) -> Any:
    from modelmill.config import Settings
    from modelmill.experiments import Arm, Experiment, Experiments
    from modelmill.project import Project
    from modelmill.serving import PredictionLog

    project = Project(Settings.defaults(home=folder))
    exp = Experiments(project).create(Experiment(name="ab", model="m", primary_metric="output", min_sample_size=500,
                                                 variants=(Arm("control", 50, 1), Arm("treatment", 50, 2))))
    assigner = exp.assigner()
    start = dt.datetime.fromtimestamp(exp.created_at, dt.UTC) + dt.timedelta(seconds=1)
    rng = np.random.default_rng(0)
    at: dict[str, dt.datetime] = {}
    log = PredictionLog(_Backdated(project.offline, at))
    for i in range(requests):
        user = f"user-{i % (requests // 3)}"
        v = assigner.assign(user)
        rid = f"r{i}"
        at[rid] = start + dt.timedelta(seconds=86400 * i / requests)
        out = float(np.clip(rng.normal(0.50 if v == "control" else 0.51, 0.1), 0, 1))
        log.append(rid, "m", 1 if v == "control" else 2, v, user, ("x",), np.array([[out]]), np.array([out]), 1.0)
    log.flush()
    return project


def _time(fn: Callable[[], Any], loads: int) -> list[float]:
    fn()  # untimed: imports, the first DuckDB connection
    out = []
    for _ in range(loads):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000, help="logged requests of the experiment")
    parser.add_argument("--loads", type=int, default=10, help="timed renders per variant (after 1 untimed)")
    args = parser.parse_args()
    from modelmill import control
    from modelmill.console import pages

    folder = tempfile.mkdtemp(prefix="modelmill-console-exp-bench-")
    bench = Benchmark("console_experiment", f"Experiment page over time, {args.requests:,} logged requests over "
                                            f"24 h: server render, {args.loads} renders each")
    try:
        project = _project(folder, args.requests)
        ctx = pages.Context(project, "/ui")
        cases: dict[str, Callable[[], Any]] = {
            "now only (baseline: experiment results)": lambda: pages.experiment_body(
                control.experiment_results(project, "ab")),
            "page, 20 cumulative looks (default)": lambda: pages.experiment(ctx, "ab"),
            "page, per 1h window (24 looks)": lambda: pages.experiment(ctx, "ab", "window", "1h"),
            "page, 20 cumulative looks, sequential": lambda: pages.experiment(ctx, "ab", test="sequential"),
        }
        results = {}
        for label, fn in cases.items():
            p = percentiles(_time(fn, args.loads))
            results[label] = p
            bench.row(label, p50_ms=p["p50_ms"], p90_ms=p["p90_ms"], max_ms=p["max_ms"], goal_ms=GOAL_MS,
                      met="yes" if p["p90_ms"] <= GOAL_MS else "NO")
        base = results["now only (baseline: experiment results)"]["p50_ms"]
        for label, p in list(results.items())[1:]:
            bench.ratio(f"{label}: p50 / baseline's p50", p["p50_ms"] / base)
        project.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    bench.note("p90 is the tail reported: with 10 renders a p95 is the slowest one")
    bench.note(f"load average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (other processes share them)")
    bench.finish()


if __name__ == "__main__":
    main()
