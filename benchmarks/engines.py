"""Engines: what running work through modelmill's pipelines (and, later, other engines) costs.

Each section is a function decorated with ``@section`` that adds rows and ratios to one
Benchmark; add an engine by adding a section (Ray, Kafka groups...). Baselines are measured in
the same run as what they are compared with.

* ``pipeline_local``: a chain of N steps of 50 ms of work each through ``Pipeline.run`` (local
  executor: threads, the metadata database on SQLite, outputs pickled into the artifact store)
  against calling the N functions directly; the same N steps with no dependencies between them
  (run at once); the chain again, all cached; and a chain of timed steps (each attempt in a child
  process). Per-step overhead = (pipeline seconds - direct seconds) / N.
* ``ray_batch``: ``predict-batch`` over a Parquet data set of 10M rows (MODELMILL_BENCH_RAY_ROWS), the local
  engine against a real two-node Ray cluster (``ray start --head`` and a worker node, one CPU each), rows/s;
  the outputs must be equal row for row.
* ``pipeline_ray``: the same chain and independent steps through the ``ray://`` executor on a two-node
  cluster, per-step overhead against direct calls.
* ``kafka_group``: a two-ingestor Kafka consumer group against one ingestor over the same two-partition
  Tansu topic (started by scripts/tansu.sh when nothing listens), events/s into the offline store.

    .venv/bin/python benchmarks/engines.py                  # every section
    .venv/bin/python benchmarks/engines.py pipeline_local   # one section
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from _runner import Benchmark
from modelmill.config import Settings
from modelmill.project import Project
from modelmill.training import Pipeline, step

SECTIONS: dict[str, Callable[[Benchmark], None]] = {}

STEPS = 20
WORK_S = 0.05
TIMED_STEPS = 5


def section(fn: Callable[[Benchmark], None]) -> Callable[[Benchmark], None]:
    SECTIONS[fn.__name__] = fn
    return fn


def _work(x: int) -> int:
    time.sleep(WORK_S)
    return x + 1


def _chain(name: str, n: int, *, timeout: float | None = None) -> Pipeline:
    steps = []
    for i in range(n):
        src = "seed" if i == 0 else f"v{i - 1}"

        def fn(**kw: Any) -> int:
            return _work(next(iter(kw.values())))

        steps.append(step(inputs=[src], outputs=[f"v{i}"], name=f"s{i}", timeout=timeout)(fn))
    return Pipeline(name, steps)


def _fan(name: str, n: int) -> Pipeline:
    def fn(seed: int) -> int:
        return _work(seed)

    return Pipeline(name, [step(inputs=["seed"], outputs=[f"v{i}"], name=f"s{i}")(fn) for i in range(n)])


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


@section
def pipeline_local(bench: Benchmark) -> None:
    with tempfile.TemporaryDirectory() as home, Project(Settings.defaults(home=home)) as project:
        assert project.db is not None  # the schema: not timed
        warm = _chain("warm", 2)
        warm.run(project, params={"seed": -1})

        def direct() -> None:
            x = 0
            for _ in range(STEPS):
                x = _work(x)

        direct_s = _timed(direct)
        chain = _chain("chain", STEPS)
        chain_s = _timed(lambda: _check(chain.run(project, params={"seed": 0}), "ran"))
        cached_s = _timed(lambda: _check(chain.run(project, params={"seed": 0}), "cached"))
        fan = _fan("fan", STEPS)
        fan_s = _timed(lambda: _check(fan.run(project, params={"seed": 0}), "ran"))
        timed = _chain("timed", TIMED_STEPS, timeout=600)
        timed_direct_s = TIMED_STEPS * WORK_S
        timed_s = _timed(lambda: _check(timed.run(project, params={"seed": 0}), "ran"))

    per = (chain_s - direct_s) / STEPS
    bench.row("direct calls (baseline)", steps=STEPS, seconds=direct_s, per_step_ms=direct_s / STEPS * 1000,
              overhead_per_step_ms=0.0)
    bench.row("local pipeline, chain", steps=STEPS, seconds=chain_s, per_step_ms=chain_s / STEPS * 1000,
              overhead_per_step_ms=per * 1000)
    bench.row("local pipeline, chain, all cached", steps=STEPS, seconds=cached_s,
              per_step_ms=cached_s / STEPS * 1000, overhead_per_step_ms=cached_s / STEPS * 1000)
    bench.row("local pipeline, independent steps", steps=STEPS, seconds=fan_s, per_step_ms=fan_s / STEPS * 1000,
              overhead_per_step_ms=(fan_s - direct_s) / STEPS * 1000)
    bench.row("local pipeline, timed steps (child process)", steps=TIMED_STEPS, seconds=timed_s,
              per_step_ms=timed_s / TIMED_STEPS * 1000,
              overhead_per_step_ms=(timed_s - timed_direct_s) / TIMED_STEPS * 1000)
    bench.ratio("local chain / direct calls", chain_s / direct_s, goal="<= 1.5 (50 ms steps)", met=chain_s / direct_s <= 1.5)
    bench.ratio("independent steps / direct calls", fan_s / direct_s, goal="< 1 (they run at once)",
                met=fan_s < direct_s)
    bench.note(f"each step does {WORK_S * 1000:.0f} ms of work (a sleep); the project is embedded (SQLite, local "
               "files); overhead = pipeline seconds minus the direct calls' seconds, per step")


# ---- a two-ingestor Kafka group against one ------------------------------------------------------------

KAFKA_EVENTS = 200_000


def _kafka_group_run(url: str, members: int, partitions: int) -> tuple[float, int]:
    """Seconds from the first publish until every event is written by ``members`` ingestors, and the count."""
    import multiprocessing
    import uuid
    from pathlib import Path

    from modelmill.ingest.kafka import delete_topic, ensure_topic

    topic = f"bench_{uuid.uuid4().hex[:10]}"
    ensure_topic(url, topic, partitions=partitions)
    ctx = multiprocessing.get_context("spawn")  # librdkafka's threads do not survive a fork
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        with Project(Settings.defaults(home=home)) as project:
            assert project.db.schema_version()  # migrated before the members race to
        procs = [ctx.Process(target=_kafka_ingestor, args=(str(home), url, topic, f"g-{topic}", f"m{i}",
                                                           partitions // members, f"{tmp}/m{i}.ready"))
                 for i in range(members)]
        for p in procs:
            p.start()
        try:
            deadline = time.monotonic() + 120
            while not all(Path(f"{tmp}/m{i}.ready").exists() for i in range(members)):
                if time.monotonic() > deadline or any(p.exitcode is not None for p in procs):
                    raise SystemExit("the Kafka group did not form")
                time.sleep(0.05)
            payloads = _bench_events(KAFKA_EVENTS)
            from modelmill.ingest import open_publisher

            t0 = time.perf_counter()
            with open_publisher(url, stream=topic, partitions=partitions) as pub:
                pub.publish(payloads)
            while _written(home) < KAFKA_EVENTS:
                if time.perf_counter() - t0 > 600 or any(p.exitcode is not None for p in procs):
                    raise SystemExit(f"{members} ingestor(s) wrote {_written(home)} of {KAFKA_EVENTS} events")
                time.sleep(0.02)
            seconds = time.perf_counter() - t0
            with Project(Settings.defaults(home=home)) as project:
                stored = project.offline.read("bench_clicks", columns=["id"]).num_rows
        finally:
            for p in procs:
                p.terminate()
                p.join(30)
            delete_topic(url, topic)
    return seconds, stored


def _bench_schema() -> Any:
    from modelmill.ingest import EventSchema, Field

    return EventSchema(name="bench_clicks", fields=[Field("id", "string"), Field("ts", "timestamp"),
                                                    Field("user", "int"), Field("price", "float")],
                       event_id="id", event_time="ts")


def _bench_events(n: int) -> list[bytes]:
    import datetime as dt

    import orjson

    t0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    return [orjson.dumps({"id": f"e{i:08d}", "ts": (t0 + dt.timedelta(seconds=i)).isoformat(), "user": i % 997,
                          "price": i * 0.25}) for i in range(n)]


def _kafka_ingestor(home: str, url: str, topic: str, group: str, name: str, share: int, ready: str) -> None:
    from pathlib import Path

    from modelmill.ingest import Ingestor, open_source

    with Project(Settings.defaults(home=home)) as project:
        source = open_source(url, stream=topic, group=group, consumer=name)
        source.open()
        deadline = time.monotonic() + 90
        while len(source.assignment()) != share and time.monotonic() < deadline:  # type: ignore[attr-defined]
            source.poll(10, 0.2)
        Path(ready).write_text("ready")
        Ingestor(project, _bench_schema(), source, batch_size=20_000, batch_seconds=0.5).run(idle_timeout=600)


def _written(home: Any) -> int:
    """Events committed so far, as the crash tests' outside observer counts them (tests/ingest/crash.py)."""
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.ingest.crash import written

    return written(home / "modelmill.db")


@section
def kafka_group(bench: Benchmark) -> None:
    """A two-ingestor Kafka group against one, over the same two-partition Tansu topic."""
    import os
    import subprocess
    from pathlib import Path

    url = os.environ.get("MODELMILL_TEST_KAFKA", "kafka://127.0.0.1:9092")
    script = Path(__file__).resolve().parents[1] / "scripts" / "tansu.sh"
    started = "already listens" not in subprocess.run(["bash", str(script)], capture_output=True, text=True,
                                                       timeout=60, check=True).stdout
    try:
        one_s, one_n = _kafka_group_run(url, members=1, partitions=2)
        two_s, two_n = _kafka_group_run(url, members=2, partitions=2)
    finally:
        if started:
            subprocess.run(["bash", str(script), "stop"], timeout=30, check=False)
    bench.row("Kafka, one ingestor, 2 partitions (baseline)", events=one_n, seconds=one_s,
              events_per_s=one_n / one_s)
    bench.row("Kafka, a group of two ingestors, 2 partitions", events=two_n, seconds=two_s,
              events_per_s=two_n / two_s)
    bench.ratio("two-ingestor group / one ingestor, events/s", one_s / two_s,
                goal="> 1 with a core per ingestor", met=one_s / two_s > 1)
    bench.note(f"{KAFKA_EVENTS:,} events published once every member holds its partitions; timed from the first "
               "publish until the offline store holds them all (publishing included in both); each ingestor is "
               f"its own process, on a machine of {os.cpu_count()} cores shared with Tansu and the publisher")


# ---- batch scoring on a two-node Ray cluster against the local engine ------------------------------------

RAY_ROWS = int(__import__("os").environ.get("MODELMILL_BENCH_RAY_ROWS", "10000000"))
RAY_FILES = 20
RAY_FEATURES = 8
RAY_CHUNK = 100_000


def _ray_dataset(folder: Any, rows: int) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True)
    per = -(-rows // RAY_FILES)
    rng = np.random.default_rng(3)
    for i in range(RAY_FILES):
        lo, hi = i * per, min(rows, (i + 1) * per)
        if lo >= hi:
            break
        X = rng.normal(size=(hi - lo, RAY_FEATURES))
        pq.write_table(pa.table({"row_id": pa.array(np.arange(lo, hi)),
                                 **{f"f{j}": X[:, j] for j in range(RAY_FEATURES)}}),
                       folder / f"part-{i:03d}.parquet", row_group_size=RAY_CHUNK)


@section
def ray_batch(bench: Benchmark) -> None:
    """predict-batch over a Parquet data set of RAY_ROWS rows: local engine against a two-node Ray cluster."""
    from pathlib import Path

    import numpy as np
    import pyarrow.parquet as pq
    from sklearn.linear_model import LogisticRegression

    from modelmill.registry import Field, Registry, Signature
    from modelmill.serving.batch import predict_batch
    from modelmill.testing.ray_cluster import RayCluster

    with tempfile.TemporaryDirectory(prefix="mm-bench-ray-") as tmp:
        root = Path(tmp)
        rng = np.random.default_rng(0)
        X = rng.normal(size=(2000, RAY_FEATURES))
        model = LogisticRegression(max_iter=500).fit(X, (X @ rng.normal(size=RAY_FEATURES) > 0).astype(int))
        with Project(Settings.defaults(home=root / "home")) as project:
            reg = Registry(project)
            reg.register("bench", model, flavor="sklearn", signature=Signature(
                inputs=[Field(f"f{j}", "float64") for j in range(RAY_FEATURES)], outputs=[Field("probability")]))
            t0 = time.perf_counter()
            _ray_dataset(root / "in", RAY_ROWS)
            write_s = time.perf_counter() - t0
            size_mib = sum(f.stat().st_size for f in (root / "in").iterdir()) / 2**20
            local = predict_batch(reg, "bench@1", root / "in", root / "local.parquet", chunk_rows=RAY_CHUNK)
            t0 = time.perf_counter()
            with RayCluster(root / "ray-logs") as cluster, cluster.driver_env():
                start_s = time.perf_counter() - t0
                remote = predict_batch(reg, "bench@1", root / "in", root / "ray.parquet", chunk_rows=RAY_CHUNK,
                                       engine="ray", ray_address=cluster.address)
        a, b = pq.read_table(root / "local.parquet"), pq.read_table(root / "ray.parquet")
        same = a.equals(b)
        del a, b
    if not same or remote["rows"] != RAY_ROWS:
        raise SystemExit(f"the Ray cluster's output differs from the local engine's ({remote['rows']} rows)")
    local_rps, ray_rps = local["rows"] / local["seconds"], remote["rows"] / remote["seconds"]
    bench.row("batch scoring, local engine (baseline)", rows=local["rows"], seconds=local["seconds"],
              rows_per_s=local_rps, nodes=1)
    bench.row("batch scoring, Ray cluster (head + worker node)", rows=remote["rows"], seconds=remote["seconds"],
              rows_per_s=ray_rps, nodes=len(remote["nodes"]))
    bench.ratio("Ray cluster / local, rows/s", ray_rps / local_rps, goal="> 1 with cores to spare", met=None)
    share = {node[:8]: n for node, n in remote["nodes"].items()}
    bench.note(f"{RAY_ROWS:,} rows ({size_mib:,.0f} MiB of Parquet in {RAY_FILES} files, {RAY_FEATURES} float "
               f"features, logistic regression), chunks of {RAY_CHUNK:,}; two Ray nodes of 1 CPU and a 200 MiB "
               f"object store each (the data set is larger than a node's share), started in {start_s:.0f} s (not "
               f"timed); rows per node {share}; outputs equal row for row; the data set took {write_s:.0f} s to "
               f"write; {__import__('os').cpu_count()} cores shared by both nodes and the driver")


RAY_STEPS = 10


@section
def pipeline_ray(bench: Benchmark) -> None:
    """Per-step overhead of the ray:// executor (Ray Client to a two-node cluster) against direct calls."""
    from modelmill.testing.ray_cluster import RayCluster

    with tempfile.TemporaryDirectory(prefix="mm-bench-rayp-") as tmp, \
            Project(Settings.defaults(home=f"{tmp}/home")) as project:
        assert project.db is not None
        with RayCluster(f"{tmp}/ray-logs") as cluster, cluster.driver_env():
            warm = _chain("ray-warm", 2)
            warm.run(project, params={"seed": -1}, executor=cluster.client_address)  # workers started: not timed

            def direct() -> None:
                x = 0
                for _ in range(RAY_STEPS):
                    x = _work(x)

            direct_s = _timed(direct)
            chain = _chain("ray-chain", RAY_STEPS)
            chain_s = _timed(lambda: _check(chain.run(project, params={"seed": 0}, executor=cluster.client_address),
                                            "ran"))
            fan = _fan("ray-fan", RAY_STEPS)
            fan_s = _timed(lambda: _check(fan.run(project, params={"seed": 0}, executor=cluster.client_address),
                                          "ran"))
    bench.row("direct calls (baseline, Ray section)", steps=RAY_STEPS, seconds=direct_s,
              per_step_ms=direct_s / RAY_STEPS * 1000, overhead_per_step_ms=0.0)
    bench.row("Ray pipeline, chain", steps=RAY_STEPS, seconds=chain_s, per_step_ms=chain_s / RAY_STEPS * 1000,
              overhead_per_step_ms=(chain_s - direct_s) / RAY_STEPS * 1000)
    bench.row("Ray pipeline, independent steps", steps=RAY_STEPS, seconds=fan_s,
              per_step_ms=fan_s / RAY_STEPS * 1000, overhead_per_step_ms=(fan_s - direct_s) / RAY_STEPS * 1000)
    bench.ratio("Ray chain / direct calls", chain_s / direct_s, goal="", met=None)
    bench.note(f"ray:// executor over Ray Client to a two-node cluster (one CPU per node, so two independent "
               f"steps run at once); {RAY_STEPS} steps of {WORK_S * 1000:.0f} ms; the cluster's start and a "
               "two-step warm-up are not timed; each run connects through Ray Client once (seconds), counted in its time")


def _check(result: Any, status: str) -> None:
    got = {s.status for s in result.steps}
    if result.status != "finished" or got != {status}:
        raise SystemExit(f"pipeline {result.pipeline}: {result.status}, steps {got} (wanted {status}): {result.error}")


def main(argv: list[str]) -> None:
    wanted = argv or list(SECTIONS)
    unknown = [w for w in wanted if w not in SECTIONS]
    if unknown:
        raise SystemExit(f"unknown sections {unknown}; there are {list(SECTIONS)}")
    bench = Benchmark("engines", "Engines: pipeline overhead per step, a Kafka group (and other engines' rows)")
    for name in wanted:
        SECTIONS[name](bench)
    bench.finish()


if __name__ == "__main__":
    main(sys.argv[1:])
