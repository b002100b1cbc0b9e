"""Feature store: online lookups and point-in-time joins, side by side with Feast and raw floors.

(a) online lookup of 1 entity x 20 features and 100 entities x 20 features from
    Redis: modelmill ``online_vector`` / ``get_online_features`` against raw
    redis-py GET/MGET (+ orjson decode) of the same packed values, and Feast's
    ``get_online_features`` from the same Redis;
(b) point-in-time join of a 100k-row entity frame against 1M feature rows
    (100k entities x 10 timestamps x 20 features): seconds and peak RSS, each
    run in a fresh process, against a hand-written DuckDB ASOF join and Feast's
    file offline store.

    .venv/bin/python benchmarks/features.py [--quick]
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _runner import Benchmark, package_version, peer_venv, percentiles

REDIS_URL = os.environ.get("MODELMILL_BENCH_REDIS", "redis://127.0.0.1:6379/0")
N_FEATURES = 20
N_TIMESTAMPS = 10
T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
SPAN_S = 10 * 86400
TTL = dt.timedelta(days=30)
FEATURES = [f"f{i:02d}" for i in range(N_FEATURES)]
FLOOR = "raw redis-py GET/MGET + decode (floor)"


# ---- data ---------------------------------------------------------------------------------------

def make_data(work: Path, n_entities: int, n_rows: int) -> dict[str, Any]:
    rng = np.random.default_rng(42)
    n = n_entities * N_TIMESTAMPS
    ts = T0 + pd.to_timedelta(rng.integers(0, SPAN_S, n), unit="s")
    cols: dict[str, Any] = {"entity_id": np.repeat(np.arange(n_entities, dtype=np.int64), N_TIMESTAMPS),
                            "event_timestamp": pa.array(ts, pa.timestamp("us", tz="UTC"))}
    for f in FEATURES:
        cols[f] = rng.normal(size=n)
    features = pa.table(cols)
    features_path = work / "features.parquet"
    pq.write_table(features, features_path, row_group_size=128 * 1024)
    # Entity rows: random entities at random times, from a day before the first event on,
    # so some rows have no earlier value (Feast drops those; modelmill keeps them with nulls).
    ets = T0 + pd.to_timedelta(rng.integers(-86400, SPAN_S, n_rows), unit="s")
    entity = pd.DataFrame({"entity_id": rng.integers(0, n_entities, n_rows), "event_timestamp": ets})
    entity = entity.drop_duplicates(["entity_id", "event_timestamp"]).reset_index(drop=True)
    entity_path = work / "entity.parquet"
    entity.to_parquet(entity_path, index=False)
    return {"features": str(features_path), "entity": str(entity_path), "rows": n, "entity_rows": len(entity),
            "end": (T0 + dt.timedelta(seconds=SPAN_S)).isoformat()}


# ---- point-in-time children (each in a fresh process, for its own peak memory) -------------------

def child_pit(kind: str, work: str) -> None:
    paths = json.loads((Path(work) / "data.json").read_text())
    entity = pd.read_parquet(paths["entity"])
    out = Path(work) / f"pit-{kind}.parquet"
    if kind == "modelmill":
        from modelmill.config import Settings
        from modelmill.features import FeatureStore
        from modelmill.project import Project

        with Project(Settings.defaults(home=Path(work) / "mm")) as project:
            project.db  # noqa: B018 - open the metadata database before the clock starts, as a session would
            start = time.perf_counter()
            result = FeatureStore(project).get_training_set(entity, [f"bench:{f}" for f in FEATURES])
            rows = len(result)
    else:
        import duckdb

        start = time.perf_counter()
        con = duckdb.connect()
        con.register("entity_df", entity)
        result = con.sql(
            f"SELECT e.*, {', '.join('f.' + f for f in FEATURES)} FROM entity_df e ASOF LEFT JOIN "
            f"read_parquet('{paths['features']}') f ON e.entity_id = f.entity_id "
            "AND e.event_timestamp >= f.event_timestamp").df()
        rows = len(result)
    seconds = time.perf_counter() - start
    result.to_parquet(out, index=False)
    print(json.dumps({"seconds": seconds, "peak_mb": peak_rss_mb(), "rows": rows, "out": str(out)}))


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM; unlike ru_maxrss it is not inherited across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def setup_modelmill_view(work: Path, paths: dict[str, Any]) -> None:
    from modelmill.config import Settings
    from modelmill.features import Entity, FeatureStore, FeatureView, Field
    from modelmill.project import Project

    with Project(Settings.defaults(home=work / "mm")) as project:
        ent = Entity(name="entity", join_keys=["entity_id"])
        FeatureStore(project).apply([FeatureView(name="bench", entities=[ent], source=paths["features"],
                                                 timestamp_field="event_timestamp", ttl=TTL,
                                                 fields=[Field(f, "float64") for f in FEATURES])])


def run_child(cmd: list[str], timeout: float = 900) -> dict[str, Any] | None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- Feast, in its own virtualenv -----------------------------------------------------------------

FEAST_SCRIPT = textwrap.dedent('''
    import json, resource, sys, time
    from datetime import datetime, timedelta, timezone
    import pandas as pd

    mode, work, features_path, redis_host = sys.argv[1:5]
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType
    from feast.types import Float64

    names = [f"f{i:02d}" for i in range(20)]
    refs = [f"bench:{n}" for n in names]
    if mode == "setup":
        open(f"{work}/feature_store.yaml", "w").write(f"""
    project: mmbench
    registry: {work}/registry.db
    provider: local
    online_store:
      type: redis
      connection_string: "{redis_host},db=0"
    offline_store:
      type: file
    entity_key_serialization_version: 3
    """)
    store = FeatureStore(repo_path=work)
    if mode == "setup":
        ent = Entity(name="entity", join_keys=["entity_id"], value_type=ValueType.INT64)
        src = FileSource(path=features_path, timestamp_field="event_timestamp")
        fv = FeatureView(name="bench", entities=[ent], ttl=timedelta(days=30),
                         schema=[Field(name=n, dtype=Float64) for n in names], source=src, online=True)
        store.apply([ent, fv])
        t = time.perf_counter()
        store.materialize(datetime(2023, 12, 1, tzinfo=timezone.utc), datetime(2024, 2, 1, tzinfo=timezone.utc))
        print(json.dumps({"materialize_s": time.perf_counter() - t}))
    elif mode == "online":
        import random
        n_entities, iters1, iters100 = int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
        rnd = random.Random(1)
        def once(k):
            rows = [{"entity_id": rnd.randrange(n_entities)} for _ in range(k)]
            t = time.perf_counter()
            store.get_online_features(features=refs, entity_rows=rows).to_dict()
            return time.perf_counter() - t
        for _ in range(50):
            once(1); once(100)
        one = [once(1) for _ in range(iters1)]
        hundred = [once(100) for _ in range(iters100)]
        rows = [{"entity_id": 7}]
        sample = store.get_online_features(features=refs, entity_rows=rows).to_dict()
        print(json.dumps({"one": one, "hundred": hundred, "sample": {k: v[0] for k, v in sample.items()}}))
    elif mode == "pit":
        entity = pd.read_parquet(sys.argv[5])
        t = time.perf_counter()
        df = store.get_historical_features(entity_df=entity, features=refs).to_df()
        seconds = time.perf_counter() - t
        df.to_parquet(f"{work}/pit-feast.parquet", index=False)
        peak = next(int(l.split()[1]) / 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
        print(json.dumps({"seconds": seconds, "peak_mb": peak, "rows": len(df), "out": f"{work}/pit-feast.parquet"}))
    elif mode == "teardown":
        store.teardown()
        print(json.dumps({}))
''')


# ---- online lookups -------------------------------------------------------------------------------

def measure_online(work: Path, paths: dict[str, Any], n_entities: int, iters1: int, iters100: int,
                   bench: Benchmark) -> dict[str, dict[str, dict[str, float]]]:
    import redis

    from modelmill.config import Settings
    from modelmill.features import FeatureStore
    from modelmill.project import Project
    from modelmill.store.kv import RedisKV

    prefix = f"mmbench:{os.getpid()}:"
    kv = RedisKV(REDIS_URL, prefix=prefix)
    project = Project(Settings.defaults(home=work / "mm"))
    fs = FeatureStore(project, online=kv)
    client = redis.Redis.from_url(REDIS_URL)
    try:
        return _online_samples(fs, client, prefix, paths, n_entities, iters1, iters100, bench)
    finally:  # leave nothing behind in the shared Redis, even after a failure
        keys = list(client.scan_iter(match=f"{prefix}*", count=10_000))
        for i in range(0, len(keys), 1000):
            client.delete(*keys[i : i + 1000])
        client.close()
        kv.close()
        project.close()


def _online_samples(fs: Any, client: Any, prefix: str, paths: dict[str, Any], n_entities: int, iters1: int,
                    iters100: int, bench: Benchmark) -> dict[str, dict[str, dict[str, float]]]:
    import orjson

    t = time.perf_counter()
    [res] = fs.materialize(T0 - dt.timedelta(days=1), paths["end"])
    bench.row("materialize: modelmill -> Redis", seconds=round(time.perf_counter() - t, 2), rows=res.rows)
    refs = [f"bench:{f}" for f in FEATURES]
    key = f"{prefix}mm:fv:bench:"
    rnd = random.Random(1)
    at = dt.datetime.fromisoformat(paths["end"])  # ttl is judged at the end of the data, not today

    def raw_one() -> float:
        k = f"{key}{rnd.randrange(n_entities)}"
        s = time.perf_counter()
        raw = client.get(k)
        d = orjson.loads(raw)
        [d.get(f) for f in FEATURES]
        return time.perf_counter() - s

    def raw_many() -> float:
        keys = [f"{key}{rnd.randrange(n_entities)}" for _ in range(100)]
        s = time.perf_counter()
        out = []
        for raw in client.mget(keys):
            d = orjson.loads(raw)
            out.append([d.get(f) for f in FEATURES])
        return time.perf_counter() - s

    def mm_vector(k: int) -> float:
        rows = [{"entity_id": rnd.randrange(n_entities)} for _ in range(k)]
        s = time.perf_counter()
        fs.online_vector(rows, refs, at=at)
        return time.perf_counter() - s

    def mm_features(k: int) -> float:
        rows = [{"entity_id": rnd.randrange(n_entities)} for _ in range(k)]
        s = time.perf_counter()
        fs.get_online_features(rows, refs, at=at)
        return time.perf_counter() - s

    variants = {FLOOR: (raw_one, raw_many),
                "modelmill online_vector": (lambda: mm_vector(1), lambda: mm_vector(100)),
                "modelmill get_online_features": (lambda: mm_features(1), lambda: mm_features(100))}
    samples: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in variants}
    for one, many in variants.values():  # warm up connections and plans
        for _ in range(50):
            one()
            many()
    rounds = 10  # interleave variants so that load from other processes hits them alike
    for _ in range(rounds):
        for name, (one, many) in variants.items():
            samples[name][0].extend(one() for _ in range(iters1 // rounds))
            samples[name][1].extend(many() for _ in range(iters100 // rounds))
    # same values as the raw read
    check = fs.online_vector([{"entity_id": 7}], refs, at=at)[0][0]
    assert np.allclose(check, [orjson.loads(client.get(f"{key}7"))[f] for f in FEATURES])
    return {name: {"one": percentiles(a), "hundred": percentiles(b)} for name, (a, b) in samples.items()}


def main() -> None:
    quick = "--quick" in sys.argv
    n_entities = 10_000 if quick else 100_000
    n_rows = 10_000 if quick else 100_000
    iters1, iters100 = (500, 200) if quick else (3000, 1000)
    import _runner

    _runner.console.width = max(_runner.console.width, 170)  # one row per figure, not wrapped
    bench = Benchmark("features", f"Feature store: online lookup and point-in-time join "
                                  f"({n_entities:,} entities x {N_TIMESTAMPS} timestamps x {N_FEATURES} features)")
    import duckdb

    work = Path(tempfile.mkdtemp(prefix="mm-bench-features-"))
    try:
        paths = make_data(work, n_entities, n_rows)
        (work / "data.json").write_text(json.dumps(paths))
        setup_modelmill_view(work, paths)
        bench.note(f"{paths['rows']:,} feature rows, {paths['entity_rows']:,} entity rows; Redis {REDIS_URL}")

        feast_py = peer_venv("feast", "feast[redis]")
        feast_version = None
        feast_work = work / "feast"
        feast_work.mkdir()
        script = work / "feast_bench.py"
        script.write_text(FEAST_SCRIPT)
        redis_host = REDIS_URL.split("//", 1)[1].split("/", 1)[0]
        feast_ok = False
        if feast_py is not None:
            feast_version = subprocess.run([str(feast_py), "-c", "import feast; print(feast.__version__)"],
                                           capture_output=True, text=True).stdout.strip() or None
            setup = run_child([str(feast_py), str(script), "setup", str(feast_work), paths["features"], redis_host],
                              timeout=1800)
            if setup is None:
                bench.note("Feast setup/materialize failed; see stderr")
            else:
                feast_ok = True
                bench.row("materialize: Feast -> Redis", seconds=round(setup["materialize_s"], 2))
        else:
            bench.note("Feast could not be installed; its rows are missing")
        bench.versions(duckdb=duckdb.__version__, redis=package_version("redis"), feast=feast_version)

        # (a) online
        online = measure_online(work, paths, n_entities, iters1, iters100, bench)
        if feast_ok:
            res = run_child([str(feast_py), str(script), "online", str(feast_work), paths["features"], redis_host,
                             str(n_entities), str(iters1 // 2), str(iters100 // 4)])
            if res is not None:
                online["Feast get_online_features"] = {"one": percentiles(res["one"]),
                                                       "hundred": percentiles(res["hundred"])}
        floor = online[FLOOR]
        for name, figs in online.items():
            bench.row(f"online: {name}", **{
                "1x20 p50 ms": figs["one"]["p50_ms"], "1x20 p99 ms": figs["one"]["p99_ms"],
                "100x20 p50 ms": figs["hundred"]["p50_ms"], "100x20 p99 ms": figs["hundred"]["p99_ms"]})
        mm = online["modelmill online_vector"]
        for k, label in (("one", "1 entity"), ("hundred", "100 entities")):
            r = mm[k]["p99_ms"] / floor[k]["p99_ms"]
            bench.ratio(f"online_vector p99 / raw redis p99, {label}", r, goal="<= 2", met=r <= 2)
            if "Feast get_online_features" in online:
                f = online["Feast get_online_features"][k]["p99_ms"] / mm[k]["p99_ms"]
                bench.ratio(f"Feast p99 / modelmill p99, {label}", f, goal="> 1")

        # (b) point-in-time join, each run in a fresh process
        me = [sys.executable, str(Path(__file__).resolve()), "--child-pit"]
        pit: dict[str, dict[str, Any]] = {}
        for _ in range(3):
            for kind in ("duckdb", "modelmill"):
                res = run_child([*me, kind, str(work)])
                if res is not None and (kind not in pit or res["seconds"] < pit[kind]["seconds"]):
                    pit[kind] = res
        if feast_ok:
            res = run_child([str(feast_py), str(script), "pit", str(feast_work), paths["features"], redis_host,
                             paths["entity"]], timeout=1800)
            if res is not None:
                pit["feast"] = res
        labels = {"duckdb": "PIT: DuckDB ASOF by hand (floor)", "modelmill": "PIT: modelmill get_training_set",
                  "feast": "PIT: Feast get_historical_features"}
        for kind, res in pit.items():
            bench.row(labels[kind], **{"seconds": res["seconds"], "peak MB": res["peak_mb"], "rows": res["rows"],
                                       "rows kept": f"{res['rows'] / paths['entity_rows']:.1%}"})
        if "duckdb" in pit and "modelmill" in pit:
            t = pit["modelmill"]["seconds"] / pit["duckdb"]["seconds"]
            m = pit["modelmill"]["peak_mb"] / pit["duckdb"]["peak_mb"]
            bench.ratio("PIT time modelmill / DuckDB floor", t, goal="<= 1.2", met=t <= 1.2)
            bench.ratio("PIT peak memory modelmill / DuckDB floor", m, goal="<= 1.2", met=m <= 1.2)
            compare_results(bench, pit, paths)
        if "feast" in pit and "modelmill" in pit:
            bench.ratio("PIT time Feast / modelmill", pit["feast"]["seconds"] / pit["modelmill"]["seconds"],
                        goal=">= 8")
            bench.ratio("PIT peak memory modelmill / Feast", pit["modelmill"]["peak_mb"] / pit["feast"]["peak_mb"],
                        goal="<= 0.5")
        if feast_ok:
            run_child([str(feast_py), str(script), "teardown", str(feast_work), paths["features"], redis_host])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    bench.finish()


def compare_results(bench: Benchmark, pit: dict[str, dict[str, Any]], paths: dict[str, Any]) -> None:
    """Values must agree wherever two tools return the same entity row."""
    key = ["entity_id", "event_timestamp"]
    mm = pd.read_parquet(pit["modelmill"]["out"])
    for kind in ("duckdb", "feast"):
        if kind not in pit:
            continue
        other = pd.read_parquet(pit[kind]["out"])[key + FEATURES]
        other["event_timestamp"] = pd.to_datetime(other["event_timestamp"], utc=True)
        both = mm.assign(event_timestamp=pd.to_datetime(mm["event_timestamp"], utc=True)).merge(
            other, on=key, suffixes=("", "_o"))
        a = both[FEATURES].to_numpy(dtype=float)
        b = both[[f + "_o" for f in FEATURES]].to_numpy(dtype=float)
        same = np.isclose(a, b, equal_nan=True).all(axis=1)
        bench.note(f"{kind}: {len(both):,} rows in common with modelmill, {int((~same).sum())} differ in value; "
                   f"modelmill null rows {int(mm[FEATURES[0]].isna().sum()):,}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child-pit":
        child_pit(sys.argv[2], sys.argv[3])
    else:
        main()
