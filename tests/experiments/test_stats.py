"""The statistics against statsmodels (1e-9), on the Open Bandit sample and on synthetic data, plus properties."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import confint_proportions_2indep, proportion_confint, proportions_ztest
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW, ttest_ind

from modelmill.errors import InputError
from modelmill.experiments import (
    Sample,
    always_valid_p,
    cuped,
    power_means,
    power_proportions,
    prob_beat_control,
    sample_size_means,
    sample_size_proportions,
    sequential_test,
    srm_test,
    welch_ttest,
    ztest,
)
from modelmill.experiments import proportion_confint as mm_confint

OBD = Path(__file__).resolve().parent.parent / "data" / "obd" / "clicks.csv.gz"
TOL = 1e-9


@pytest.fixture(scope="module")
def obd() -> dict[str, np.ndarray]:
    df = pd.read_csv(OBD)
    return {p: g["click"].to_numpy() for p, g in df.groupby("policy")}


def _close(a: float, b: float) -> None:
    assert a == pytest.approx(b, rel=TOL, abs=TOL)


def _check_ztest(xa: int, na: int, xb: int, nb: int) -> None:
    r = ztest(Sample.from_counts("A", xa, na), Sample.from_counts("B", xb, nb))
    z, p = proportions_ztest([xa, xb], [na, nb])
    _close(r.statistic, z)
    _close(r.p_value, p)
    lo, hi = confint_proportions_2indep(xb, nb, xa, na, method="wald", compare="diff")
    _close(r.ci_abs[0], lo)
    _close(r.ci_abs[1], hi)
    lo, hi = confint_proportions_2indep(xb, nb, xa, na, method="log", compare="ratio")
    _close(r.ci_rel[0], lo - 1)
    _close(r.ci_rel[1], hi - 1)
    for method in ("normal", "wilson"):
        for x, n in ((xa, na), (xb, nb)):
            ours = mm_confint(x, n, method=method)
            theirs = proportion_confint(x, n, method=method)
            _close(ours[0], theirs[0])
            _close(ours[1], theirs[1])


def _check_welch(a: np.ndarray, b: np.ndarray) -> None:
    r = welch_ttest(Sample.from_values("A", a), Sample.from_values("B", b))
    t, p, df = ttest_ind(a, b, usevar="unequal")
    _close(r.statistic, t)
    _close(r.p_value, p)
    assert r.df is not None
    _close(r.df, df)
    lo, hi = CompareMeans(DescrStatsW(b), DescrStatsW(a)).tconfint_diff(usevar="unequal")
    _close(r.ci_abs[0], lo)
    _close(r.ci_abs[1], hi)


def test_obd_ctr_random_vs_bts_equals_statsmodels(obd: dict[str, np.ndarray]) -> None:
    ctrl, treat = obd["random"], obd["bts"]
    assert (ctrl.size, treat.size, int(ctrl.sum()), int(treat.sum())) == (10_000, 10_000, 38, 42)
    _check_ztest(int(ctrl.sum()), ctrl.size, int(treat.sum()), treat.size)
    _check_welch(ctrl.astype(float), treat.astype(float))
    r = ztest(Sample.from_counts("random", 38, 10_000), Sample.from_counts("bts", 42, 10_000))
    assert r.p_value > 0.5  # 0.38% vs 0.42%: far too few clicks to tell the policies apart


@pytest.mark.parametrize("seed", range(5))
def test_synthetic_equals_statsmodels(seed: int) -> None:
    rng = np.random.default_rng(seed)
    na, nb = rng.integers(50, 50_000, size=2)
    pa, pb = rng.uniform(0.01, 0.6, size=2)
    _check_ztest(int(rng.binomial(na, pa)), int(na), int(rng.binomial(nb, pb)), int(nb))
    a = rng.lognormal(1.0, 1.0, size=int(rng.integers(20, 5000)))
    b = rng.lognormal(1.1, 1.3, size=int(rng.integers(20, 5000)))
    _check_welch(a, b)


@settings(max_examples=60, deadline=None)
@given(hs.integers(1, 5000), hs.integers(1, 5000), hs.data())
def test_ztest_equals_statsmodels_and_is_antisymmetric(na: int, nb: int, data: hs.DataObject) -> None:
    xa = data.draw(hs.integers(1, na - 1)) if na > 1 else 0
    xb = data.draw(hs.integers(1, nb - 1)) if nb > 1 else 0
    if xa + xb == 0:
        return
    a, b = Sample.from_counts("A", xa, na), Sample.from_counts("B", xb, nb)
    ab, ba = ztest(a, b), ztest(b, a)
    z, p = proportions_ztest([xa, xb], [na, nb])
    assert ab.statistic == pytest.approx(z, rel=TOL, abs=TOL)
    assert ab.p_value == pytest.approx(p, rel=TOL, abs=TOL)
    assert ba.statistic == pytest.approx(-ab.statistic, abs=1e-12)
    assert ba.p_value == pytest.approx(ab.p_value, abs=1e-12)
    assert ba.lift_abs == pytest.approx(-ab.lift_abs, abs=1e-15)
    assert ab.ci_abs[0] <= ab.lift_abs <= ab.ci_abs[1]
    assert 0.0 <= ab.p_value <= 1.0


finite = hs.floats(-1e3, 1e3, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(hs.lists(finite, min_size=3, max_size=40), hs.lists(finite, min_size=3, max_size=40))
def test_welch_properties(a: list[float], b: list[float]) -> None:
    if np.var(a) < 1e-6 or np.var(b) < 1e-6:
        return
    sa, sb = Sample.from_values("A", a), Sample.from_values("B", b)
    ab, ba = welch_ttest(sa, sb), welch_ttest(sb, sa)
    assert ba.statistic == pytest.approx(-ab.statistic, rel=1e-9, abs=1e-12)
    assert ba.p_value == pytest.approx(ab.p_value, rel=1e-9, abs=1e-12)
    assert ab.ci_abs[0] <= ab.lift_abs <= ab.ci_abs[1]
    seq = sequential_test(sa, sb)
    assert seq.ci_abs[0] <= seq.lift_abs <= seq.ci_abs[1]
    assert 0.0 <= seq.p_value <= 1.0
    t, p, _ = ttest_ind(np.asarray(a), np.asarray(b), usevar="unequal")
    assert ab.statistic == pytest.approx(t, rel=1e-7, abs=1e-9)
    assert ab.p_value == pytest.approx(p, rel=1e-7, abs=1e-9)


def test_wider_ci_at_lower_alpha() -> None:
    a, b = Sample.from_counts("A", 100, 1000), Sample.from_counts("B", 130, 1000)
    r95, r99 = ztest(a, b, alpha=0.05), ztest(a, b, alpha=0.01)
    assert r99.ci_abs[0] < r95.ci_abs[0] < r95.lift_abs < r95.ci_abs[1] < r99.ci_abs[1]
    assert r95.ci_rel[0] < r95.lift_rel < r95.ci_rel[1]
    with pytest.raises(InputError, match="alpha"):
        ztest(a, b, alpha=1.5)
    with pytest.raises(InputError, match="0/1 metric"):
        ztest(Sample.from_values("A", [1.0, 2.0]), b)


def test_srm_flags_52_48_of_100k() -> None:
    p = srm_test([52_000, 48_000], [0.5, 0.5])
    assert p < 1e-30  # chi-square of 160 on one degree of freedom
    assert srm_test([50_100, 49_900], [50, 50]) > 0.5
    assert srm_test([90_000, 10_000], [90, 10]) == pytest.approx(1.0)
    assert srm_test([90_000, 10_000]) < 1e-300  # equal weights assumed when none are given
    with pytest.raises(InputError):
        srm_test([10])


def test_cuped_reduces_variance_and_keeps_the_effect() -> None:
    rng = np.random.default_rng(7)
    n = 20_000
    pre = rng.normal(10, 3, size=2 * n)
    y = 0.8 * pre + rng.normal(0, 2, size=2 * n)
    y[n:] += 0.1  # the true effect of the treatment
    adj = cuped(y, pre)
    expected = np.corrcoef(y, pre)[0, 1] ** 2
    assert adj.variance_reduction == pytest.approx(expected, rel=1e-9)
    assert adj.variance_reduction > 0.5
    raw = welch_ttest(Sample.from_values("A", y[:n]), Sample.from_values("B", y[n:]))
    cup = welch_ttest(Sample.from_values("A", adj.adjusted[:n]), Sample.from_values("B", adj.adjusted[n:]))
    width_raw = raw.ci_abs[1] - raw.ci_abs[0]
    width_cup = cup.ci_abs[1] - cup.ci_abs[0]
    print(f"CUPED variance reduction {adj.variance_reduction:.1%}; CI width {width_raw:.4f} -> {width_cup:.4f}")
    assert width_cup < 0.75 * width_raw
    assert cup.ci_abs[0] < 0.1 < cup.ci_abs[1]
    assert cup.p_value < raw.p_value


def test_aa_simulation_peeking_inflates_naive_but_not_sequential() -> None:
    """1,000 A/A experiments, each looked at after every one of 28 days."""
    rng = np.random.default_rng(2024)
    experiments, days, per_day, p = 1000, 28, 500, 0.1
    clicks = rng.binomial(per_day, p, size=(experiments, days, 2)).cumsum(axis=1)
    n = per_day * np.arange(1, days + 1)[None, :]
    pa, pb = clicks[..., 0] / n, clicks[..., 1] / n
    pooled = (clicks[..., 0] + clicks[..., 1]) / (2 * n)
    var0 = pooled * (1 - pooled) * (2 / n)
    z = (pa - pb) / np.sqrt(var0)
    from scipy.stats import norm

    naive_p = 2 * norm.sf(np.abs(z))
    naive_any = float((naive_p < 0.05).any(axis=1).mean())
    naive_last = float((naive_p[:, -1] < 0.05).mean())
    tau2 = (0.1 * np.sqrt(pooled * (1 - pooled))) ** 2
    seq_p = always_valid_p(pb - pa, var0, tau2)
    seq_any = float((seq_p < 0.05).any(axis=1).mean())
    print(f"A/A false positives: naive at the last look {naive_last:.3f}, naive with daily peeking "
          f"{naive_any:.3f}, mSPRT with daily peeking {seq_any:.3f}")
    assert 0.03 < naive_last < 0.07
    assert naive_any > 0.15  # peeking daily roughly triples the error rate
    assert seq_any <= 0.05
    # The vectorised path and the one-look function agree.
    one = sequential_test(Sample.from_counts("A", int(clicks[0, -1, 0]), int(n[0, -1])),
                          Sample.from_counts("B", int(clicks[0, -1, 1]), int(n[0, -1])))
    assert one.p_value == pytest.approx(always_valid_p(pb[0, -1] - pa[0, -1], var0[0, -1], tau2[0, -1]))


def test_sequential_detects_a_real_effect_and_p_never_rises() -> None:
    rng = np.random.default_rng(3)
    clicks_a = rng.binomial(2000, 0.10, size=30).cumsum()
    clicks_b = rng.binomial(2000, 0.12, size=30).cumsum()
    n = 2000 * np.arange(1, 31)
    pa, pb = clicks_a / n, clicks_b / n
    pooled = (clicks_a + clicks_b) / (2 * n)
    var0 = pooled * (1 - pooled) * 2 / n
    p = always_valid_p(pb - pa, var0, 0.01**2)
    assert (np.diff(p) <= 0).all()
    assert p[-1] < 1e-4


def test_sample_size_and_power() -> None:
    for sd, mde in ((1.0, 0.1), (3.0, 0.5), (20.0, 1.0)):
        n = sample_size_means(sd, mde)
        assert n == math.ceil(NormalIndPower().solve_power(effect_size=mde / sd, alpha=0.05, power=0.8))
        assert power_means(sd, mde, n) >= 0.8 > power_means(sd, mde, n - 5)
    n = sample_size_proportions(0.10, 0.01)
    assert power_proportions(0.10, 0.01, n) == pytest.approx(0.8, abs=1e-3)
    # Simulated power of the pooled z-test at that size is 80%.
    rng = np.random.default_rng(11)
    xa, xb = rng.binomial(n, 0.10, size=4000), rng.binomial(n, 0.11, size=4000)
    pooled = (xa + xb) / (2 * n)
    z = (xb - xa) / n / np.sqrt(pooled * (1 - pooled) * 2 / n)
    assert float((np.abs(z) > 1.959964).mean()) == pytest.approx(0.8, abs=0.025)
    assert sample_size_proportions(0.10, 0.10, relative=True) == n
    with pytest.raises(InputError):
        sample_size_proportions(0.5, 0.6)


def test_prob_beat_control_matches_monte_carlo() -> None:
    rng = np.random.default_rng(5)
    for (xa, na, xb, nb) in ((38, 10_000, 42, 10_000), (100, 1000, 130, 1000), (5, 50, 3, 40)):
        exact = prob_beat_control(Sample.from_counts("A", xa, na), Sample.from_counts("B", xb, nb))
        draws_a = rng.beta(1 + xa, 1 + na - xa, size=400_000)
        draws_b = rng.beta(1 + xb, 1 + nb - xb, size=400_000)
        assert exact == pytest.approx(float((draws_b > draws_a).mean()), abs=0.004)
        other = prob_beat_control(Sample.from_counts("B", xb, nb), Sample.from_counts("A", xa, na))
        assert exact + other == pytest.approx(1.0, abs=1e-9)
    a, b = Sample.from_values("A", [1.0, 2.0, 3.0]), Sample.from_values("B", [1.0, 2.0, 3.0])
    assert prob_beat_control(a, b) == 0.5
