"""Drift tests: agreement with scipy's reference implementations, Evidently's defaults, and error rates."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from scipy import stats
from scipy.spatial import distance

from modelmill.errors import InputError
from modelmill.monitoring import ColumnOptions, DriftOptions, detect_drift
from modelmill.monitoring.drift import summarize_column, wasserstein_sorted

RNG = np.random.default_rng(20130101)


@pytest.mark.parametrize(("n", "m"), [(50, 50), (300, 170), (999, 1001), (4000, 2500), (20000, 7001)])
def test_wasserstein_and_ks_match_scipy(n: int, m: int) -> None:
    a, b = RNG.normal(0, 1, n), RNG.gamma(2.0, 0.7, m)
    assert wasserstein_sorted(np.sort(a), np.sort(b)) == pytest.approx(stats.wasserstein_distance(a, b), rel=1e-9)
    ks = detect_drift({"x": a}, {"x": b}, options=DriftOptions(columns={"x": ColumnOptions(test="ks")})).columns["x"]
    ref = stats.ks_2samp(a, b)
    assert ks.statistic == pytest.approx(ref.statistic, abs=1e-12)
    assert ks.p_value == pytest.approx(ref.pvalue, rel=1e-6, abs=1e-300)


def test_default_tests_follow_evidently_and_match_scipy() -> None:
    small_ref = {"x": RNG.normal(size=800), "c": RNG.choice(list("abcd"), 800), "b": RNG.choice(["y", "n"], 800)}
    small_cur = {"x": RNG.normal(0.2, 1, 600), "c": RNG.choice(list("abcd"), 600, p=[.4, .2, .2, .2]),
                 "b": RNG.choice(["y", "n"], 600, p=[.6, .4])}
    rep = detect_drift(small_ref, small_cur)
    assert {k: (c.type, c.test) for k, c in rep.columns.items()} == {
        "x": ("numeric", "ks"), "c": ("categorical", "chisquare"), "b": ("binary", "ztest")}
    # chi-square exactly as Evidently calls scipy: expected = reference counts scaled to the current size
    keys = sorted(set(small_ref["c"]) | set(small_cur["c"]))
    obs = [np.sum(small_cur["c"] == k) for k in keys]
    exp = [np.sum(small_ref["c"] == k) * 600 / 800 for k in keys]
    chi = stats.chisquare(obs, exp)
    assert rep.columns["c"].statistic == pytest.approx(chi.statistic)
    assert rep.columns["c"].p_value == pytest.approx(chi.pvalue)
    # two-proportion z-test with the pooled standard error
    p1, p2 = np.mean(small_ref["b"] == "n"), np.mean(small_cur["b"] == "n")
    pool = (p1 * 800 + p2 * 600) / 1400
    z = (p1 - p2) / math.sqrt(pool * (1 - pool) * (1 / 800 + 1 / 600))
    assert abs(rep.columns["b"].statistic) == pytest.approx(abs(z))
    assert rep.columns["b"].p_value == pytest.approx(2 * stats.norm.sf(abs(z)))

    big_ref = {"x": RNG.normal(size=5000), "c": RNG.choice(list("abcd"), 5000)}
    big_cur = {"x": RNG.normal(0.05, 1, 3000), "c": RNG.choice(list("abcd"), 3000, p=[.1, .3, .3, .3])}
    rep = detect_drift(big_ref, big_cur)
    assert (rep.columns["x"].test, rep.columns["c"].test) == ("wasserstein", "jensenshannon")
    wd = stats.wasserstein_distance(big_ref["x"], big_cur["x"]) / np.std(big_ref["x"])
    assert rep.columns["x"].statistic == pytest.approx(wd, rel=1e-9)
    assert rep.columns["x"].drift == bool(wd >= 0.1)
    pr = np.array([np.mean(big_ref["c"] == k) for k in "abcd"])
    pc = np.array([np.mean(big_cur["c"] == k) for k in "abcd"])
    assert rep.columns["c"].statistic == pytest.approx(distance.jensenshannon(pr, pc), rel=1e-9)
    assert rep.columns["c"].drift is True
    assert rep.columns["c"].p_value is None


def test_psi_and_numeric_jensenshannon_use_evidentlys_bins() -> None:
    ref, cur = RNG.normal(size=3000), RNG.normal(0.3, 1.2, 2000)
    col = detect_drift({"x": ref}, {"x": cur},
                       options=DriftOptions(columns={"x": ColumnOptions(test="jensenshannon")})).columns["x"]
    edges = np.histogram_bin_edges(np.concatenate([ref, cur]), bins="sturges")
    r = np.histogram(ref, edges)[0] / len(ref)
    c = np.histogram(cur, edges)[0] / len(cur)
    assert col.statistic == pytest.approx(distance.jensenshannon(r, c), rel=1e-9)
    rf, cf = np.where(r == 0, 0.0001, r), np.where(c == 0, 0.0001, c)
    low_r, low_c = r[r > 0].min(), c[c > 0].min()
    rf = np.where(r == 0, low_r / 1e6 if low_r <= 1e-4 else 1e-4, r)
    cf = np.where(c == 0, low_c / 1e6 if low_c <= 1e-4 else 1e-4, c)
    assert col.psi == pytest.approx(float(np.sum((rf - cf) * np.log(rf / cf))), rel=1e-9)


def test_overrides_and_nulls() -> None:
    ref = pd.DataFrame({"x": np.r_[RNG.normal(size=2000), [np.nan, np.inf]], "y": RNG.normal(size=2002)})
    cur = pd.DataFrame({"x": np.r_[RNG.normal(0.08, 1, 1500), [np.nan, -np.inf]], "y": RNG.normal(size=1502)})
    opts = DriftOptions(columns={"x": ColumnOptions(test="psi", threshold=0.01), "y": ColumnOptions(threshold=0.0)})
    rep = detect_drift(ref, cur, options=opts)
    assert rep.columns["x"].test == "psi" and rep.columns["x"].threshold == 0.01
    assert rep.columns["x"].statistic == rep.columns["x"].psi
    assert rep.columns["y"].drift is True  # a distance >= 0 always "drifts" at threshold 0
    assert rep.dataset_drift == (rep.drift_share >= 0.5)
    with pytest.raises(InputError):
        ColumnOptions(test="nope")
    with pytest.raises(InputError):
        detect_drift(ref, cur, columns=["x", "missing"])
    with pytest.raises(InputError):
        detect_drift({"x": np.array([np.nan, np.nan])}, {"x": np.array([1.0, 2.0])})


def test_sketch_of_reference_keeps_verdicts() -> None:
    ref, cur = RNG.normal(size=200_000), RNG.normal(0.15, 1, 20_000)
    full, sketch = summarize_column(ref, "numeric"), summarize_column(ref, "numeric", max_points=10_000)
    c = summarize_column(cur, "numeric")
    from modelmill.monitoring.drift import compare_column

    a, b = compare_column(full, c), compare_column(sketch, c)
    assert a.drift and b.drift
    assert b.statistic == pytest.approx(a.statistic, rel=0.02)
    assert b.psi == pytest.approx(a.psi, rel=0.05)


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """``modelmill ARGS`` in this process (as the console script runs it): exit code and stdout."""
    from modelmill.cli import main

    monkeypatch.setattr(sys, "argv", ["modelmill", *args])
    code: int | str | None = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code
    return int(code or 0), capsys.readouterr().out


def test_json_output_shape_from_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    ref = pa.table({"a": RNG.normal(size=3000), "b": RNG.choice(list("xyz"), 3000), "only_ref": np.ones(3000)})
    cur = pd.DataFrame({"a": RNG.normal(1, 1, 2000), "b": RNG.choice(list("xyz"), 2000)})
    import pyarrow.parquet as pq

    pq.write_table(ref, tmp_path / "ref.parquet")
    cur.to_csv(tmp_path / "cur.csv", index=False)
    code, stdout = run_cli(monkeypatch, capsys, "drift", "--reference", "ref.parquet", "--current", "cur.csv", "--json")
    assert code == 0
    out = json.loads(stdout)
    assert set(out) == {"dataset_drift", "drift_share", "columns"}
    assert set(out["columns"]) == {"a", "b"}
    for col in out["columns"].values():
        assert set(col) == {"type", "test", "statistic", "p_value", "threshold", "drift", "psi"}
    assert out["columns"]["a"]["drift"] is True and out["columns"]["b"]["type"] == "categorical"
    assert out["drift_share"] == 0.5 and out["dataset_drift"] is True
    code, stdout = run_cli(monkeypatch, capsys, "drift", "--reference", "ref.parquet", "--current", "cur.csv",
                           "--columns", "b", "--json")
    assert code == 0 and list(json.loads(stdout)["columns"]) == ["b"]
    code, stdout = run_cli(monkeypatch, capsys, "drift", "--reference", "nope.parquet", "--current", "cur.csv",
                           "--json")
    assert code != 0 and "nope.parquet" in json.loads(stdout)["error"]


WEATHER = ["temp", "dewp", "humid", "wind_dir", "wind_speed", "wind_gust", "precip", "pressure", "visib"]


def test_nycflights_january_vs_july_flags_temp_and_dewp(weather: pd.DataFrame) -> None:
    jan, jul = weather[weather.month == 1], weather[weather.month == 7]
    rep = detect_drift(jan, jul, columns=WEATHER)
    assert rep.columns["temp"].drift and rep.columns["dewp"].drift
    for name in WEATHER:  # same verdict as scipy's normalised Wasserstein on the same cleaned data
        a, b = jan[name].dropna().to_numpy(), jul[name].dropna().to_numpy()
        if rep.columns[name].test == "wasserstein":
            wd = stats.wasserstein_distance(a, b) / max(np.std(a), 0.001)
            assert rep.columns[name].drift == bool(wd >= 0.1), name


def test_nycflights_half_splits_rarely_drift(weather: pd.DataFrame) -> None:
    jan = weather[weather.month == 1][WEATHER].reset_index(drop=True)
    rng = np.random.default_rng(7)
    flagged = total = 0
    for _ in range(20):
        idx = rng.permutation(len(jan))
        half = len(jan) // 2
        rep = detect_drift(jan.iloc[idx[:half]], jan.iloc[idx[half:]])
        flagged += len(rep.drifted)
        total += len(rep.columns)
    assert flagged / total <= 0.10, f"{flagged} of {total} column tests flagged drift"


def test_synthetic_false_alarms_and_power() -> None:
    rng = np.random.default_rng(99)
    ref = {"num": rng.normal(10, 3, 10_000), "cat": rng.choice(list("abcde"), 10_000, p=[.4, .3, .15, .1, .05]),
           "bin": rng.random(10_000) < 0.3}
    from modelmill.monitoring import ReferenceProfile

    profile = ReferenceProfile.from_data(ref)
    alarms = {k: 0 for k in ref}
    for _ in range(200):
        cur = {"num": rng.normal(10, 3, 2000), "cat": rng.choice(list("abcde"), 2000, p=[.4, .3, .15, .1, .05]),
               "bin": rng.random(2000) < 0.3}
        for name in profile.compare(cur).drifted:
            alarms[name] += 1
    assert all(v / 200 <= 0.05 for v in alarms.values()), alarms
    detected = 0
    for _ in range(200):
        shifted = {"num": rng.normal(10 + 0.2 * 3, 3, 10_000)}
        detected += profile.compare(shifted).columns["num"].drift
    assert detected / 200 >= 0.95
