"""The offline store on S3 against local disk: a point-in-time join, a monitor window and a label join.

The same data is written to a local folder and to a bucket on moto's S3 server (127.0.0.1, started by
scripts/moto.sh; s3fs as the client, DuckDB reading through the registered fsspec filesystem), and each query
runs on both in this run, alternating, so the ratio (local time / S3 time, higher is better) compares like
with like. Rows:
  pit join        FeatureStore.get_training_set: 50,000 entity rows against 200,000 events over 30 days
  monitor window  Feedback.served_features of one hour (what Monitor.logged_features reads), out of a
                  prediction log of 48 flushes x 5,000 rows over two days (one Parquet file per flush)
  label join      Feedback.labelled of the whole log (every answered prediction joined to its label)
moto keeps objects in memory and answers from one Python process: its latency is not AWS's, and the figures
measure the cost of reading through fsspec and an HTTP S3 API rather than a disk.
Run: .venv/bin/python benchmarks/object_store.py   (BENCH_REPEAT=5 for more repetitions; default 3)
"""

from __future__ import annotations

import datetime as dt
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
from tests.prediction_log import prediction_log  # noqa: E402
from tests.s3 import start_moto  # noqa: E402

from _runner import Benchmark, package_version  # noqa: E402

REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
T0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


def _events(rng: np.random.Generator) -> tuple[pa.Table, pd.DataFrame]:
    n = 200_000
    ts = pd.Series(T0 + pd.to_timedelta(rng.integers(0, 30 * 86400, n), unit="s")).dt.floor("s")
    events = pd.DataFrame({"user_id": rng.integers(0, 20_000, n).astype("int64"), "ts": ts,
                           "amount": rng.normal(size=n), "count": rng.integers(0, 50, n).astype("int64")})
    rows = pd.DataFrame({"user_id": rng.integers(0, 20_000, 50_000).astype("int64"),
                         "event_timestamp": pd.to_datetime(pd.Series(
                             T0 + pd.to_timedelta(rng.integers(86400, 31 * 86400, 50_000), unit="s")),
                             utc=True).dt.floor("s")})
    return pa.Table.from_pandas(events.drop_duplicates(["user_id", "ts"]), preserve_index=False), rows


def _write_log(store: Any, rng: np.random.Generator) -> None:
    from modelmill.store import write_labels

    labels = []
    for flush in range(48):
        base = T0 + dt.timedelta(hours=flush)
        ids = [f"f{flush:02d}-{i:05d}" for i in range(5000)]
        at = {r: base + dt.timedelta(seconds=i * 0.7) for i, r in enumerate(ids)}
        x = rng.normal(size=(5000, 4))
        with prediction_log(store, at=at) as log:
            for i, rid in enumerate(ids):
                out = float(x[i, 0] > 0)
                log.append(rid, "m", 1, "main", None, ("a", "b", "c", "d"), x[i:i + 1], np.array([out]), 1.5)
        labels += [{"id": r, "label": int(rng.integers(0, 2)), "ts": base + dt.timedelta(hours=2)} for r in ids[::2]]
    write_labels(store, "m", labels)


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    from modelmill.config import Settings
    from modelmill.features import Entity, FeatureStore, FeatureView, Field
    from modelmill.project import Project
    from modelmill.store import Feedback

    bench = Benchmark("object_store", "The offline store on S3 (moto, s3fs) against local disk")
    bench.versions(s3fs=package_version("s3fs"), moto=_moto_version(), duckdb=package_version("duckdb"))
    server = start_moto()
    os.environ.update(server.env())
    import s3fs

    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    s3fs.S3FileSystem(skip_instance_cache=True).mkdir(bucket)
    rng = np.random.default_rng(5)
    events, rows = _events(rng)
    tmp = Path(tempfile.mkdtemp(prefix="mm-bench-s3-"))
    user = Entity(name="user", join_keys=["user_id"])
    view = FeatureView(name="spend", entities=[user], source="payments", timestamp_field="ts",
                       ttl=dt.timedelta(days=7), fields=[Field("amount", "float64"), Field("count", "int64")])
    projects = {"local": Project(Settings.defaults(home=tmp / "local")),
                "s3": Project(Settings.defaults(home=tmp / "s3").replace(offline=f"s3://{bucket}/offline"))}
    try:
        stores = {}
        for where, project in projects.items():
            write_s, _ = _timed(lambda p=project: (p.offline.write("payments", events, time_column="ts"),
                                                   _write_log(p.offline, np.random.default_rng(9))))
            fs = FeatureStore(project)
            fs.apply([user, view])
            stores[where] = fs
            bench.note(f"{where}: wrote the events and the prediction log (240,000 rows, labels) in {write_s:.1f} s")
        window = (T0 + dt.timedelta(hours=30), T0 + dt.timedelta(hours=31))
        queries: dict[str, Callable[[Project, FeatureStore], Any]] = {
            "pit join": lambda p, fs: fs.get_training_set(rows, ["spend:amount", "spend:count"]),
            "monitor window": lambda p, fs: Feedback(p.offline).served_features("m", 1, start=window[0],
                                                                                 end=window[1]),
            "label join": lambda p, fs: Feedback(p.offline).labelled(model="m"),
        }
        for name, query in queries.items():
            times: dict[str, list[float]] = {"local": [], "s3": []}
            sizes: dict[str, int] = {}
            for _ in range(REPEAT):
                for where, project in projects.items():
                    seconds, out = _timed(lambda q=query, p=project, w=where: q(p, stores[w]))
                    times[where].append(seconds)
                    sizes[where] = len(out)
            assert sizes["local"] == sizes["s3"], f"{name}: {sizes}"
            local, remote = statistics.median(times["local"]), statistics.median(times["s3"])
            bench.row(f"{name}, local disk", rows=sizes["local"], median_ms=local * 1000,
                      best_ms=min(times["local"]) * 1000)
            bench.row(f"{name}, S3 (moto)", rows=sizes["s3"], median_ms=remote * 1000,
                      best_ms=min(times["s3"]) * 1000)
            bench.ratio(f"{name}: S3 vs local (local time / S3 time)", local / remote)
        bench.note(f"{REPEAT} repetitions each, local and S3 alternating; {os.cpu_count()} cores shared with "
                   "the moto server")
    finally:
        for project in projects.values():
            project.close()
        fs3 = s3fs.S3FileSystem(skip_instance_cache=True)
        keys = fs3.find(bucket)
        if keys:
            fs3.rm(keys)
        fs3.rmdir(bucket)
        server.stop()
    bench.finish()


def _moto_version() -> str | None:
    venv = Path(os.environ.get("MOTO_VENV", REPO / ".modelmill" / "moto-venv"))
    found = sorted((venv / "lib").glob("python*/site-packages/moto-*.dist-info"))
    return found[-1].name.removeprefix("moto-").removesuffix(".dist-info") if found else None


if __name__ == "__main__":
    main()
