"""Per-core cost of each stage of the loop on this machine: the figures docs/capacity.md plans 1M users from.

Each row is CPU time per unit of work (``cpu_us``: microseconds of one core), measured from the CPU clock of
the processes that do the work, not from wall time, so it does not depend on how many cores the load
generator took:

- a prediction without the feature lookup (OIP infer of a 20-feature logistic regression) and with it
  (``/v1/models/risk/predict``: 20 features of one user from Redis), through a real ``modelmill serve``
  (one worker, no prediction log, no cache) under wrk; the server's own CPU (``/proc``) per answered request,
  and Redis' CPU (``INFO cpu``) per request of the feature route;
- a prediction-log row (the server's writer: buffer, Arrow, Parquet), in this process;
- an ingested event (local broker -> validation -> Parquet, exactly-once bookkeeping in SQLite);
- a label join (predictions joined to delayed labels and the quality metrics computed over them);
- a drift window (20 numeric features, 100,000 current rows against 100,000 reference rows).

The baseline of the run is the bare-floor HTTP app of benchmarks/serving.py (uvicorn + one JSON answer):
the ratio says what share of a prediction's cost is the HTTP server itself.

    .venv/bin/python benchmarks/capacity.py          # CAPACITY_SECONDS=8 per wrk run
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _runner import Benchmark, package_version

SECONDS = float(os.environ.get("CAPACITY_SECONDS", "8"))
CONNECTIONS = 16
TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` and its finished, waited-for children."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + stime + cutime + cstime) / TICKS


def redis_cpu_s(url: str) -> float:
    import redis

    info = redis.Redis.from_url(url).info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def in_process(fn: Callable[[], int]) -> tuple[float, int, float]:
    """(CPU seconds of this process, all threads; units of work; wall seconds) of ``fn()``."""
    cpu, wall = time.process_time(), time.perf_counter()
    n = fn()
    return time.process_time() - cpu, n, time.perf_counter() - wall


# ---- the stages ------------------------------------------------------------------------------------


def serving_rows(bench: Benchmark, tmp: Path) -> dict[str, float]:
    import serving as sb  # benchmarks/serving.py: its project (clf, risk on Redis), server and wrk

    tmp.mkdir(parents=True, exist_ok=True)
    sb.setup_project(tmp)
    (tmp / "floor_app.py").write_text(sb.FLOOR_APP)
    os.environ.pop("MODELMILL_HOME", None)
    one_row = np.random.default_rng(2).normal(size=(1, sb.K))
    oip = json.dumps({"inputs": [{"name": "input", "shape": [1, sb.K], "datatype": "FP64",
                                  "data": one_row.tolist()}]}).encode()
    predict = b'{"entities": {"user_id": 4242}}'
    out: dict[str, float] = {}

    def run(label: str, srv: Any, path: str, body: bytes, key: str, *, redis: bool = False) -> None:
        cpu0 = process_cpu_s(srv.proc.pid)
        r0 = redis_cpu_s(sb.REDIS) if redis else 0.0
        t0 = time.perf_counter()
        r = sb.wrk(f"http://127.0.0.1:{srv.port}{path}", body, CONNECTIONS, SECONDS)
        wall = time.perf_counter() - t0
        cpu = process_cpu_s(srv.proc.pid) - cpu0
        n = r["rps"] * SECONDS
        row: dict[str, Any] = {"cpu_us": cpu / n * 1e6, "per_core_per_s": n / cpu, "rps": r["rps"],
                               "p99_ms": r["p99_ms"], "errors": r["errors"], "server_cores": cpu / wall}
        out[key] = cpu / n * 1e6
        if redis:
            redis_cpu = redis_cpu_s(sb.REDIS) - r0
            row["redis_cpu_us"] = redis_cpu / n * 1e6
            out["redis_lookup"] = redis_cpu / n * 1e6
        bench.row(label, **row)

    port = sb.free_port()
    srv = sb.Server("floor", [sb.PY, "-m", "uvicorn", "floor_app:app", "--port", str(port), "--workers", "1",
                              "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning"],
                    cwd=tmp, port=port, ready="/ready")
    try:
        run("HTTP floor (uvicorn, one JSON answer)", srv, "/v2/models/clf/infer", oip, "floor")
    finally:
        srv.stop()
    port = sb.free_port()
    srv = sb.Server("modelmill", [sb.PY, "-m", "modelmill", "serve", "--port", str(port), "--workers", "1",
                                  "--no-cache", "--no-log-predictions", "--model", "clf@production",
                                  "--model", "risk@production"], cwd=tmp, port=port, ready="/v2/health/ready")
    try:
        run("prediction, no feature lookup (OIP infer)", srv, "/v2/models/clf/infer", oip, "predict")
        run("prediction with feature lookup (Redis)", srv, "/v1/models/risk/predict", predict, "predict_features",
            redis=True)
    finally:
        srv.stop()
    return out


def database_and_redis(bench: Benchmark, tmp: Path) -> dict[str, float]:
    """What a serving worker asks of the metadata database (statements per route reload, counted on the
    engine), and the Redis memory one user's 20 materialised features take."""
    import asyncio

    import redis
    from sqlalchemy import event

    import serving as sb
    from modelmill.config import load_settings
    from modelmill.project import Project
    from modelmill.serving.app import build_server, create_app
    from modelmill.serving.server import ServerConfig

    out: dict[str, float] = {}
    project = Project(load_settings(cwd=tmp))
    statements = [0]

    def count(*_: Any) -> None:
        statements[0] += 1

    engine = project.db.engine
    event.listen(engine, "before_cursor_execute", count)
    server = build_server(project, ServerConfig(models=["clf@production", "risk@production"],
                                                log_predictions=False, cache=False))
    create_app(server)  # what serve adds to each reload: the API tokens' refresh
    reloads = 50

    async def main() -> None:
        await server.start()
        try:
            statements[0] = 0
            for _ in range(reloads):
                await server.reload()
        finally:
            await server.stop()

    asyncio.run(main())
    event.remove(engine, "before_cursor_execute", count)
    project.close()
    out["statements_per_reload"] = statements[0] / reloads
    bench.row("metadata database: statements per route reload (one worker, 2 models)",
              statements=out["statements_per_reload"], reloads=reloads)
    client = redis.Redis.from_url(sb.REDIS)
    keys = [k for k in client.scan_iter(count=1000)][:200]
    if keys:
        used = [client.memory_usage(k) or 0 for k in keys]
        out["redis_bytes_per_key"] = float(np.mean(used))
        bench.row("Redis memory per materialised entity (20 float features)", bytes=out["redis_bytes_per_key"],
                  keys_sampled=len(keys), keys_total=client.dbsize())
    return out


def log_row(bench: Benchmark, tmp: Path, n: int = 100_000) -> tuple[float, Any, list[str]]:
    from modelmill.config import Settings
    from modelmill.project import Project
    from modelmill.store.feedback import PredictionLog

    project = Project(Settings.defaults(home=tmp / "log"))
    cols = tuple(f"f{i}" for i in range(20))
    X = np.random.default_rng(0).normal(size=(n, 20))
    out = 1 / (1 + np.exp(-X[:, 0]))
    ids = [uuid.uuid4().hex for _ in range(n)]

    def work() -> int:
        log = PredictionLog(project.offline, flush_interval_s=1.0).start()
        for i in range(n):
            log.append(ids[i], "clf", 1, "default", f"user-{i % 50_000}", cols, X[i:i + 1], out[i:i + 1], 0.4)
        log.stop()
        assert log.written == n, log.written
        return n

    cpu, done, wall = in_process(work)
    bench.row("prediction-log row (append + Parquet write)", cpu_us=cpu / done * 1e6, per_core_per_s=done / cpu,
              rows=done, wall_s=wall)
    return cpu / done * 1e6, project, ids


def label_join(bench: Benchmark, project: Any, ids: list[str]) -> float:
    from modelmill.monitoring.performance import PerformanceMonitor

    n = len(ids)
    y = (np.random.default_rng(1).random(n) < 0.5).astype(np.int64)
    project.offline.write("labels", pa.table({
        "request_id": pa.array(ids, pa.string()),
        "ts": pa.array([dt.datetime.now(dt.UTC)] * n, pa.timestamp("us", tz="UTC")),
        "label": pa.array(y)}), time_column="ts")
    monitor = PerformanceMonitor(project)

    def work() -> int:
        [row] = monitor.summary()  # one model, version and variant
        assert row["model"] == "clf", row
        return n

    work()  # DuckDB's first query plans and loads the extension-free readers
    cpu, done, wall = in_process(work)
    bench.row("label join + quality metrics, per labelled prediction", cpu_us=cpu / done * 1e6,
              per_core_per_s=done / cpu, rows=done, wall_s=wall)
    return cpu / done * 1e6


def ingested_event(bench: Benchmark, tmp: Path, n: int = 200_000) -> float:
    import ingest as ib  # benchmarks/ingest.py: its events and schema
    from modelmill.config import Settings
    from modelmill.ingest import Ingestor, open_publisher, open_source
    from modelmill.project import Project

    url = f"local:///{tmp / 'broker'}"
    with open_publisher(url, stream="clicks") as pub:
        pub.publish(ib.events(n))
    with Project(Settings.defaults(home=tmp / "ingest")) as project:
        project.db  # noqa: B018  (migrate outside the measurement)

        def work() -> int:
            source = open_source(url, stream="clicks", group="capacity")
            stats = Ingestor(project, ib.SCHEMA, source, batch_size=100_000, batch_seconds=2.0).run(
                max_events=n, idle_timeout=15)
            assert stats.written == n, stats
            return int(stats.written)

        cpu, done, wall = in_process(work)
    bench.row("ingested event (local broker -> Parquet, exactly once)", cpu_us=cpu / done * 1e6,
              per_core_per_s=done / cpu, rows=done, wall_s=wall)
    return cpu / done * 1e6


def drift_window(bench: Benchmark, rows: int = 100_000, features: int = 20) -> float:
    import drift as db  # benchmarks/drift.py: its tables
    from modelmill.monitoring import detect_drift

    ref = db.make_table(rows, features, 0, current=False, seed=0)
    cur = db.make_table(rows, features, 0, current=True, seed=1)
    detect_drift(ref, cur)

    def work() -> int:
        report = detect_drift(ref, cur)
        assert report.drifted
        return rows

    cpu, done, wall = in_process(work)
    bench.row(f"drift window ({features} features, {rows:,} rows vs {rows:,}), per current row",
              cpu_us=cpu / done * 1e6, per_core_per_s=done / cpu, rows=done, wall_s=wall)
    return cpu / done * 1e6


def main() -> None:
    bench = Benchmark("capacity", f"Per-core cost of each stage ({os.cpu_count()} cores; cpu_us = CPU "
                                  "microseconds of one core per unit)")
    bench.versions(uvicorn=package_version("uvicorn"), duckdb=package_version("duckdb"),
                   pyarrow=package_version("pyarrow"), redis=package_version("redis"))
    tmp = Path(tempfile.mkdtemp(prefix="mm-bench-capacity-"))
    try:
        costs = serving_rows(bench, tmp / "serve")
        costs.update(database_and_redis(bench, tmp / "serve"))
        costs["log_row"], project, ids = log_row(bench, tmp)
        costs["label_join"] = label_join(bench, project, ids)
        project.close()
        costs["event"] = ingested_event(bench, tmp)
        costs["drift_row"] = drift_window(bench)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    bench.ratio("HTTP floor / prediction cost (share that is the HTTP server)", costs["floor"] / costs["predict"])
    bench.ratio("feature lookup / plain prediction cost", costs["predict_features"] / costs["predict"])
    served = costs["predict"] + costs["log_row"]
    bench.ratio("logged prediction / plain prediction cost", served / costs["predict"])
    bench.note("cpu_us of the serving rows is the server process's CPU per answered request (wrk, "
               f"{CONNECTIONS} connections, {SECONDS:.0f} s); Redis' CPU is its own process's, from INFO cpu.")
    bench.note("docs/capacity.md turns these figures into replicas, Redis shards, partitions and connections.")
    bench.finish()


if __name__ == "__main__":
    main()
