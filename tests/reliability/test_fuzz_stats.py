"""Hypothesis over the experiment statistics, for what tests/experiments/test_stats.py does not fuzz yet.

Already fuzzed there: the two-proportion z-test against statsmodels and its antisymmetry
(test_ztest_equals_statsmodels_and_is_antisymmetric), Welch's t-test against statsmodels, its CI and the
sequential test's CI and p range (test_welch_properties). Here: always-valid p-values, the sequential
test's running minimum, SRM, one-proportion intervals, CUPED and the Bayesian probability to beat control;
each must stay in range, keep its invariants, and never raise on valid input, however extreme.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as hs

from modelmill.experiments import (
    Sample,
    always_valid_p,
    cuped,
    prob_beat_control,
    proportion_confint,
    sequential_test,
    srm_test,
)

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True, database=None)
counts = hs.integers(0, 10**7)


@SETTINGS
@given(hs.lists(hs.tuples(hs.floats(-1e6, 1e6), hs.floats(1e-12, 1e6)), min_size=1, max_size=30),
       hs.floats(1e-12, 1e6))
def test_always_valid_p_is_a_probability_that_never_rises(looks: list[tuple[float, float]], tau2: float) -> None:
    diff, var = np.array(looks).T
    p = always_valid_p(diff, var, tau2)
    assert p.shape == diff.shape
    assert ((p >= 0.0) & (p <= 1.0)).all()
    assert (np.diff(p) <= 0).all()  # the running minimum: peeking cannot make it rise


@SETTINGS
@given(hs.lists(hs.tuples(hs.integers(0, 500), hs.integers(0, 500)), min_size=2, max_size=15))
def test_sequential_p_never_rises_across_looks(increments: list[tuple[int, int]]) -> None:
    rng = np.random.default_rng(len(increments))
    na = nb = xa = xb = 0
    p = 1.0
    for da, db in increments:
        na, nb = na + da + 1, nb + db + 1
        xa = min(na, xa + int(rng.integers(0, da + 2)))
        xb = min(nb, xb + int(rng.integers(0, db + 2)))
        result = sequential_test(Sample.from_counts("A", xa, na), Sample.from_counts("B", xb, nb), previous_p=p)
        assert 0.0 <= result.p_value <= p
        assert result.ci_abs[0] <= result.lift_abs <= result.ci_abs[1]
        p = result.p_value


@SETTINGS
@given(hs.lists(counts, min_size=2, max_size=6), hs.data())
def test_srm_is_a_probability_and_one_when_the_split_is_exact(obs: list[int], data: hs.DataObject) -> None:
    weights = data.draw(hs.lists(hs.floats(0.01, 100), min_size=len(obs), max_size=len(obs)))
    p = srm_test(obs, weights)
    assert 0.0 <= p <= 1.0 and not math.isnan(p)
    n = data.draw(hs.integers(0, 10**6))
    assert srm_test([n] * len(obs)) == pytest.approx(1.0)  # equal counts, equal weights: no mismatch


@SETTINGS
@given(hs.integers(1, 10**9), hs.data(), hs.sampled_from(["normal", "wilson"]), hs.floats(1e-6, 0.5))
def test_proportion_interval_contains_its_estimate(n: int, data: hs.DataObject, method: str, alpha: float) -> None:
    x = data.draw(hs.integers(0, n))
    lo, hi = proportion_confint(x, n, alpha=alpha, method=method)
    assert lo <= x / n + 1e-12 and x / n - 1e-12 <= hi
    if method == "wilson":
        assert -1e-12 <= lo <= hi <= 1 + 1e-12  # Wilson stays inside [0, 1]
    wider = proportion_confint(x, n, alpha=alpha / 2, method=method)
    assert wider[0] <= lo + 1e-12 and hi <= wider[1] + 1e-12


@SETTINGS
@given(hs.integers(2, 300), hs.floats(-5, 5), hs.floats(0, 3), hs.integers(0, 2**32 - 1))
def test_cuped_never_adds_variance_and_keeps_the_mean(n: int, slope: float, noise: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    y = slope * x + noise * rng.normal(size=n)
    result = cuped(y, x)
    assert result.adjusted.mean() == pytest.approx(y.mean(), abs=1e-9 * (1 + abs(y).max()))
    assert result.variance_reduction >= -1e-9  # the optimal theta never makes things worse
    assert result.variance_reduction <= 1 + 1e-9


@SETTINGS
@given(hs.integers(1, 20_000), hs.integers(1, 20_000), hs.data())
def test_prob_beat_control_is_a_probability_and_complementary(na: int, nb: int, data: hs.DataObject) -> None:
    xa, xb = data.draw(hs.integers(0, na)), data.draw(hs.integers(0, nb))
    a, b = Sample.from_counts("A", xa, na), Sample.from_counts("B", xb, nb)
    ab, ba = prob_beat_control(a, b), prob_beat_control(b, a)
    assert 0.0 <= ab <= 1.0 and 0.0 <= ba <= 1.0
    assume(not (xa == xb and na == nb))
    assert ab + ba == pytest.approx(1.0, abs=1e-6)  # continuous posteriors: ties have probability zero
