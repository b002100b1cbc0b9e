"""Drift report speed, memory and verdicts: modelmill vs Evidently vs a plain scipy loop.

    .venv/bin/python benchmarks/drift.py            # 100k vs 100k x 25 (all three) and 1M x 100 (modelmill)
    .venv/bin/python benchmarks/drift.py --quick    # skip the 1M x 100 run

Each tool runs in a process of its own (Evidently in its own virtualenv), so
its peak RSS is its own; "extra MB" is the peak minus the RSS once the data
is loaded, and the memory goal is that extra against the data's size.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _runner import Benchmark, package_version, peer_venv

SHIFTED = ["n0", "n1", "n2", "c0"]
CATEGORIES = np.array(["a", "b", "c", "d", "e", "f"])


def make_table(rows: int, numeric: int, categorical: int, *, current: bool, seed: int) -> pa.Table:
    """Normal and gamma numeric columns, 6-level categoricals; in the current data the first three
    numeric columns shift by half a standard deviation and the first categorical changes its mix."""
    rng = np.random.default_rng(seed)
    cols: dict[str, Any] = {}
    for i in range(numeric):
        shift = 0.5 if current and i < 3 else 0.0
        cols[f"n{i}"] = rng.normal(shift, 1.0, rows) if i % 2 == 0 else rng.gamma(2.0, 1.0, rows) + shift * 1.41
    base = np.array([0.3, 0.2, 0.2, 0.1, 0.1, 0.1])
    for j in range(categorical):
        p = np.array([0.1, 0.1, 0.2, 0.2, 0.2, 0.2]) if current and j == 0 else base
        codes = rng.choice(6, rows, p=p).astype(np.int8)
        cols[f"c{j}"] = pa.DictionaryArray.from_arrays(pa.array(codes), pa.array(CATEGORIES))
    return pa.table(cols)


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- workers: each prints one JSON line ------------------------------------------------------


def worker_modelmill(ref: pa.Table, cur: pa.Table, repeat: int) -> dict[str, Any]:
    from modelmill.monitoring import detect_drift

    loaded = rss_mb()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        report = detect_drift(ref, cur)
        times.append(time.perf_counter() - t)
    return {"seconds": min(times), "rss_loaded_mb": loaded, "peak_mb": peak_mb(),
            "drifted": sorted(report.drifted), "tests": {k: c.test for k, c in report.columns.items()}}


def worker_scipy(ref: pa.Table, cur: pa.Table, repeat: int) -> dict[str, Any]:
    """The obvious loop: KS for numeric columns, chi-square for categorical ones, p < 0.05."""
    from scipy import stats

    loaded = rss_mb()
    times, drifted = [], []
    for _ in range(repeat):
        t = time.perf_counter()
        drifted = []
        for name in ref.column_names:
            a, b = ref.column(name), cur.column(name)
            if pa.types.is_dictionary(a.type):
                ka, ca = np.unique(a.to_numpy(), return_counts=True)
                kb, cb = np.unique(b.to_numpy(), return_counts=True)
                keys = np.union1d(ka, kb)
                fa = np.array([ca[ka == k].sum() for k in keys], dtype=float)
                fb = np.array([cb[kb == k].sum() for k in keys], dtype=float)
                p = stats.chisquare(fb, fa * fb.sum() / fa.sum()).pvalue
            else:
                p = stats.ks_2samp(a.to_numpy(), b.to_numpy()).pvalue
            if p < 0.05:
                drifted.append(name)
        times.append(time.perf_counter() - t)
    return {"seconds": min(times), "rss_loaded_mb": loaded, "peak_mb": peak_mb(), "drifted": sorted(drifted)}


EVIDENTLY_WORKER = r"""
import json, resource, sys, time
from pathlib import Path
import pandas as pd
def rss():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
from evidently import Dataset, DataDefinition, Report
from evidently.presets import DataDriftPreset
folder = Path(sys.argv[1])
ref = pd.read_parquet(folder / "ref.parquet"); cur = pd.read_parquet(folder / "cur.parquet")
for df in (ref, cur):
    for c in df.columns:
        if str(df[c].dtype) == "category":
            df[c] = df[c].astype(str)
num = [c for c in ref.columns if c.startswith("n")]; cat = [c for c in ref.columns if c.startswith("c")]
dd = DataDefinition(numerical_columns=num, categorical_columns=cat)
loaded = rss()
t = time.perf_counter()
snap = Report([DataDriftPreset()]).run(Dataset.from_pandas(cur, data_definition=dd),
                                        Dataset.from_pandas(ref, data_definition=dd))
seconds = time.perf_counter() - t
drifted, tests = [], {}
for m in snap.dict()["metrics"]:
    cfg = m["config"]
    if cfg.get("type", "").endswith("ValueDrift"):
        method, value, thr = cfg["method"], m["value"], cfg["threshold"]
        tests[cfg["column"]] = method
        if ("p_value" in method and value < thr) or ("p_value" not in method and value >= thr):
            drifted.append(cfg["column"])
print(json.dumps({"seconds": seconds, "rss_loaded_mb": loaded,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "drifted": sorted(drifted), "tests": tests}))
"""


def run_worker(args: list[str], python: str = sys.executable, timeout: int = 900) -> dict[str, Any] | None:
    proc = subprocess.run([python, *args], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def data_mb(*tables: pa.Table) -> float:
    return sum(t.nbytes for t in tables) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="skip the 1M x 100 run")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, default=0, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.worker:
        if opts.data:
            ref, cur = pq.read_table(Path(opts.data) / "ref.parquet"), pq.read_table(Path(opts.data) / "cur.parquet")
        else:  # generated in this process: the 1M x 100 run never touches disk
            ref = make_table(opts.rows, 90, 10, current=False, seed=1)
            cur = make_table(opts.rows, 90, 10, current=True, seed=2)
        fn = worker_modelmill if opts.worker == "modelmill" else worker_scipy
        out = fn(ref, cur, repeat=3 if opts.rows == 0 else 1)
        out["data_mb"] = data_mb(ref, cur)
        print(json.dumps(out))
        return

    bench = Benchmark("drift", "Drift report: 100k vs 100k rows x 25 columns (4 shifted); 1M x 100")
    evidently_python = peer_venv("evidently", "evidently==0.7.23", "pandas<3")
    ev_version = None
    if evidently_python is not None:
        ev_version = subprocess.run([str(evidently_python), "-c", "import evidently; print(evidently.__version__)"],
                                    capture_output=True, text=True).stdout.strip() or None
    bench.versions(evidently=ev_version, scipy=package_version("scipy"), numpy=package_version("numpy"))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ref, cur = make_table(100_000, 20, 5, current=False, seed=1), make_table(100_000, 20, 5, current=True, seed=2)
        pq.write_table(ref, folder / "ref.parquet")
        pq.write_table(cur, folder / "cur.parquet")
        size = data_mb(ref, cur)
        me = run_worker([__file__, "--worker", "modelmill", "--data", tmp])
        sp = run_worker([__file__, "--worker", "scipy", "--data", tmp])
        ev = None
        if evidently_python is not None:
            script = folder / "evidently_worker.py"
            script.write_text(EVIDENTLY_WORKER)
            ev = run_worker([str(script), tmp], python=str(evidently_python))
    results = {"modelmill": me, "scipy loop (KS + chi-square)": sp, f"evidently {ev_version}": ev}
    for label, r in results.items():
        if r is None:
            bench.row(label, note="failed or not installed")
            continue
        bench.row(label, seconds=r["seconds"], peak_mb=r["peak_mb"], extra_mb=r["peak_mb"] - r["rss_loaded_mb"],
                  data_mb=size, drifted=",".join(r["drifted"]), exact=r["drifted"] == sorted(SHIFTED))
    if me and ev:
        bench.ratio("Evidently time / modelmill time", ev["seconds"] / me["seconds"], goal=">= 20",
                    met=ev["seconds"] / me["seconds"] >= 20)
        same = me["drifted"] == ev["drifted"]
        bench.ratio("columns with the same verdict as Evidently", float(sum(
            (c in me["drifted"]) == (c in ev["drifted"]) for c in ev["tests"])), goal=f"= {len(ev['tests'])}",
            met=same)
    if me and sp:
        bench.ratio("scipy loop time / modelmill time", sp["seconds"] / me["seconds"], goal="> 1",
                    met=sp["seconds"] > me["seconds"])
    if me:
        bench.ratio("modelmill 100k x 25 seconds", me["seconds"], goal="~0.4", met=me["seconds"] <= 0.5)
    if not opts.quick:
        big = run_worker([__file__, "--worker", "modelmill", "--rows", "1000000"], timeout=1800)
        if big is None:
            bench.row("modelmill 1M x 100", note="failed")
        else:
            extra = big["peak_mb"] - big["rss_loaded_mb"]
            bench.row("modelmill 1M x 100", seconds=big["seconds"], peak_mb=big["peak_mb"], extra_mb=extra,
                      data_mb=big["data_mb"], drifted=",".join(big["drifted"]),
                      exact=big["drifted"] == sorted(SHIFTED))
            bench.ratio("modelmill 1M x 100 seconds", big["seconds"], goal="<= 10", met=big["seconds"] <= 10)
            bench.ratio("1M x 100 peak RSS / data size", big["peak_mb"] / big["data_mb"], goal="<= 2",
                        met=big["peak_mb"] / big["data_mb"] <= 2)
    bench.note("data_mb is the Arrow size of reference + current; extra_mb = peak RSS - RSS with the data loaded.")
    bench.note("Shifted: n0, n1, n2 by 0.5 sd; c0's category mix. Evidently picks Wasserstein / Jensen-Shannon "
               "at this size; the scipy loop's p-values are too sensitive at 100k rows.")
    bench.finish()


if __name__ == "__main__":
    main()
