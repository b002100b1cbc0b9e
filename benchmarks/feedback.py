"""The feedback path at scale: labels over HTTP, one monitor round, one rollout guardrail window.

    .venv/bin/python benchmarks/feedback.py [--rows 1000000] [--http-labels 100000]

Builds a project in a temporary folder on the embedded defaults (SQLite, a local Parquet offline store):
one registered binary model with a reference profile, a prediction log of ``--rows`` answered requests
written by the server's own writer (``PredictionLog``), and labels for half of them. Then, each against a
floor measured in the same run:

- **labels over HTTP**: ``--http-labels`` labels POSTed to ``modelmill serve``'s ``/v1/models/m/labels`` in
  batches of 500 over one keep-alive connection (goal: at least 20,000 labels/s); the floor is labels
  written in this process by ``Feedback.write_labels`` (the one label writer the route calls), in batches
  of 500 and of 50,000;
- **one monitor round** (``Monitor.run_once``: drift of the day's window against the reference profile, and
  the delayed-label metrics over the one-day label window; goal: at most 1 s per million rows in the
  window), then a second round after 1% more rows (the goal wants its cost proportional to the new rows);
  the floor is a hand-written DuckDB query doing the same label join (newest label per request) over the
  same files and the AUC of its result;
- **one guardrail evaluation** of a rollout (``ServingGuardrails.window``, what the controller reads each
  round: the model's logged requests since the stage began; goal: at most 50 ms whatever the log's size),
  the stage's requests being the 1% logged last; the floor is a DuckDB query reading the same rows.

Every figure is wall time on this machine; the ratios are within one run. Not part of ``make test``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _runner import Benchmark, console, serve

FEATURES = tuple(f"f{i}" for i in range(5))
LABEL_GOAL = 20_000.0
ROUND_GOAL_S_PER_M = 1.0
GUARDRAIL_GOAL_MS = 50.0


def _project(folder: Path) -> Any:
    from modelmill.config import load_settings
    from modelmill.project import Project

    (folder / "modelmill.toml").write_text('home = ".modelmill"\n\n[monitoring]\nwindow = "1d"\nlabel_window = "1d"\n')
    return Project(load_settings(cwd=folder))


def _register(project: Any, rng: np.random.Generator) -> tuple[Any, Any]:
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    from modelmill.monitoring import ReferenceStore
    from modelmill.registry import Registry, infer_signature

    X = rng.normal(size=(20_000, len(FEATURES)))
    y = (X[:, 0] + rng.normal(scale=1.0, size=len(X)) > 0).astype(int)
    frame = pd.DataFrame(X, columns=list(FEATURES))
    model = LogisticRegression().fit(X, y)
    mv = Registry(project).register("m", model, flavor="sklearn", signature=infer_signature(frame), actor="bench")
    ReferenceStore(project).ensure(mv, data=frame)
    return model, mv


def _log(project: Any, model: Any, rows: int, rng: np.random.Generator, *, start: int = 0) -> np.ndarray:
    """``rows`` answered one-row requests ``r{start}…`` in the prediction log, as the server logs them; their
    true labels."""
    from modelmill.store.feedback import PredictionLog

    X = rng.normal(size=(rows, len(FEATURES)))
    X[:, 1] += 0.3  # a shifted feature: the drift test has something to find
    p = model.predict_proba(X)[:, 1]
    truth = (rng.random(rows) < p).astype(int)
    log = PredictionLog(project.offline, flush_rows=10 ** 9, max_buffer_rows=rows + 1)
    for i in range(rows):
        log.append(f"r{start + i}", "m", 1, "default", f"u{(start + i) % 50_000}", FEATURES, X[i:i + 1], p[i:i + 1],
                   0.4)
        if (i + 1) % 200_000 == 0:
            log.flush()
    log.flush()
    return truth


def _post_labels(token: str, url: str, ids: list[str], labels: np.ndarray, batch: int = 500
                 ) -> tuple[float, int]:
    import httpx

    accepted = 0
    with httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {token}"}) as client:
        t0 = time.perf_counter()
        for i in range(0, len(ids), batch):
            body = {"labels": [{"id": rid, "label": int(v)} for rid, v in
                               zip(ids[i:i + batch], labels[i:i + batch], strict=True)]}
            reply = client.post("/v1/models/m/labels", json=body)
            if reply.status_code != 200:
                raise SystemExit(f"labels POST answered {reply.status_code}: {reply.text[:300]}")
            accepted += int(reply.json()["accepted"])
        return time.perf_counter() - t0, accepted


def _write_labels(project: Any, ids: list[str], labels: np.ndarray, batch: int = 50_000) -> float:
    from modelmill.store.feedback import Feedback, LabelTask

    feedback = Feedback(project.offline)
    t0 = time.perf_counter()
    for i in range(0, len(ids), batch):
        feedback.write_labels("m", [{"id": rid, "label": int(v)} for rid, v in
                                    zip(ids[i:i + batch], labels[i:i + batch], strict=True)],
                              task=LabelTask(kind="binary"))
    return time.perf_counter() - t0


def _floor_join(project: Any, since: float) -> tuple[float, int]:
    """The label join and AUC by hand: newest label per request, over the same Parquet files."""
    from scipy import stats

    offline = project.offline
    con = offline.connect(["predictions", "labels"])
    t0 = time.perf_counter()
    y, p = con.execute(
        "WITH latest AS (SELECT request_id, arg_max(label, ts) AS label FROM labels GROUP BY request_id) "
        "SELECT l.label, p.output FROM predictions p JOIN latest l USING (request_id) "
        "WHERE p.model = 'm' AND p.ts >= to_timestamp(?)", [since]).fetchnumpy().values()
    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    pos = y == 1
    ranks = stats.rankdata(p)
    auc = (ranks[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * (~pos).sum())
    took = time.perf_counter() - t0
    con.close()
    assert 0.5 < auc < 1.0, auc
    return took, len(y)


def _floor_guardrail(project: Any, since: float) -> tuple[float, int]:
    con = project.offline.connect(["predictions"])
    t0 = time.perf_counter()
    rows = con.execute("SELECT request_id, variant, status, latency_ms, output FROM predictions "
                       "WHERE model = 'm' AND ts >= to_timestamp(?)", [since]).fetchnumpy()
    took = time.perf_counter() - t0
    con.close()
    return took, len(rows["request_id"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="logged requests (default 1,000,000)")
    parser.add_argument("--http-labels", type=int, default=100_000, help="labels sent over HTTP (default 100,000)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary project folder")
    args = parser.parse_args()
    if args.http_labels > args.rows // 2:
        parser.error("--http-labels must be at most half of --rows")

    from modelmill.monitoring import Monitor, MonitoringConfig
    from modelmill.rollout.sources import ServingGuardrails

    rng = np.random.default_rng(0)
    folder = Path(tempfile.mkdtemp(prefix="mm-feedback-"))
    bench = Benchmark("feedback", f"The feedback path on a {args.rows:,}-row prediction log, half labelled "
                                  "(embedded defaults: SQLite, local Parquet)")
    try:
        project = _project(folder)
        model, _mv = _register(project, rng)
        t0 = time.perf_counter()
        truth = _log(project, model, args.rows, rng)
        console.print(f"logged {args.rows:,} requests in {time.perf_counter() - t0:.1f} s")
        half = args.rows // 2
        ids = [f"r{i}" for i in range(half)]

        # ---- labels: HTTP (the route) against the writer in this process (its floor)
        from modelmill.security import TokenStore

        token = TokenStore(project).create("label", name="bench-labels", actor="benchmark")[1]
        proc, url = serve(folder, ["m@1"])  # after the token: the server reads the tokens it knows when it starts
        try:
            http_s, accepted = _post_labels(token, url, ids[:args.http_labels], truth[:args.http_labels])
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        assert accepted == args.http_labels, (accepted, args.http_labels)
        # the writer the route calls, in this process: batches of 500 (the route's) and of 50,000
        a = args.http_labels
        n_small = min(10_000, (half - a) // 2)
        small_s = _write_labels(project, ids[a:a + n_small], truth[a:a + n_small], batch=500)
        n_big = min(100_000, half - a - n_small)
        big_s = _write_labels(project, ids[a + n_small:a + n_small + n_big], truth[a + n_small:a + n_small + n_big])
        rest = ids[a + n_small + n_big:]
        if rest:
            _write_labels(project, rest, truth[a + n_small + n_big:half])
        http_rate, small_rate, big_rate = a / http_s, n_small / small_s, n_big / big_s
        bench.row("labels over HTTP, batches of 500, one connection", labels_per_s=round(http_rate),
                  seconds=round(http_s, 3), goal=f">= {LABEL_GOAL:,.0f}/s", met="yes" if http_rate >= LABEL_GOAL else "NO")
        bench.row("the same writer in-process (Feedback.write_labels), batches of 500: floor",
                  labels_per_s=round(small_rate), seconds=round(small_s, 3))
        bench.row("the same writer in-process, batches of 50,000", labels_per_s=round(big_rate),
                  seconds=round(big_s, 3))
        bench.ratio("labels: HTTP / in-process writer, batches of 500", round(http_rate / small_rate, 3))
        bench.note("a label batch costs about the same whatever its size (the writer reads the log for the batch's "
                   "request ids, to count unknown ones): compare the rates of batches of 500 and of 50,000")

        # ---- one monitor round, then the next after 1% more rows
        monitor = Monitor(project, MonitoringConfig(window=86_400.0, label_window=86_400.0))
        since = time.time() - 86_400.0
        t0 = time.perf_counter()
        result = monitor.run_once()
        round_s = time.perf_counter() - t0
        windows = result["windows"]
        assert windows and windows[0]["n_rows"] > 0, windows
        perf = monitor.performance()
        auc = perf[0]["metrics"].get("auc", {})
        assert perf[0]["n"] == half and auc.get("status") == "measured", perf[0]
        floor_s, joined = _floor_join(project, since)
        assert joined == half, (joined, half)
        per_m = round_s / (args.rows / 1e6)
        bench.row("one monitor round: drift of the 1-day window + delayed-label metrics over 1 day",
                  seconds=round(round_s, 3), s_per_million_rows=round(per_m, 3), goal=f"<= {ROUND_GOAL_S_PER_M} s/M",
                  met="yes" if per_m <= ROUND_GOAL_S_PER_M else "NO")
        bench.row("hand-written DuckDB label join + AUC (floor of the label part)", seconds=round(floor_s, 3),
                  rows=joined)
        bench.ratio("monitor round / floor join", round(round_s / floor_s, 2))
        more = max(1, args.rows // 100)
        stage = time.time()  # a rollout stage begins: its traffic is these new rows, the log holds all the rest
        time.sleep(0.01)
        _log(project, model, more, rng, start=args.rows)
        t0 = time.perf_counter()
        monitor.run_once()
        next_s = time.perf_counter() - t0
        bench.row(f"the next round, after {more:,} more rows (1%)", seconds=round(next_s, 3),
                  goal="~1% of the first round's cost (incremental)",
                  met="yes" if next_s <= 0.05 * round_s else "NO")
        bench.ratio("next round / first round (1.0: a re-scan of the whole window)", round(next_s / round_s, 3))

        # ---- one guardrail evaluation: the stage's requests (1% of the log)
        guard = ServingGuardrails(project)
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            window = guard.window("m", since=stage, mark={})
            times.append(time.perf_counter() - t0)
        g_ms = float(np.median(times)) * 1e3
        requests = sum(o.requests for o in window.values())
        floor_g, floor_rows = _floor_guardrail(project, stage)
        assert requests == floor_rows, (requests, floor_rows)
        bench.row(f"one guardrail window (ServingGuardrails.window, {requests:,} requests in the stage)",
                  ms=round(g_ms, 1), goal=f"<= {GUARDRAIL_GOAL_MS:.0f} ms", met="yes" if g_ms <= GUARDRAIL_GOAL_MS else "NO")
        bench.row("hand-written DuckDB read of the same rows (floor)", ms=round(floor_g * 1e3, 1), rows=floor_rows)
        bench.ratio("guardrail window / floor read", round(g_ms / (floor_g * 1e3), 2))
        bench.note(f"{os.cpu_count()} cores; the server, the client and DuckDB share them")
        bench.finish()
    finally:
        if args.keep:
            console.print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
