"""A/B statistics against reference implementations (statsmodels, scipy, simulation), function by function.

``make mutation`` showed these functions of ``experiments/stats.py`` passing tests with an operator or constant
changed; each test here compares the module with an independent computation of what its docstring promises.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from scipy import stats as st
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest
from statsmodels.stats.proportion import proportion_confint as sm_confint
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

from modelmill.errors import InputError
from modelmill.experiments.stats import (
    Sample,
    always_valid_p,
    cuped,
    power_means,
    power_proportions,
    prob_beat_control,
    proportion_confint,
    sample_size_means,
    sample_size_proportions,
    sequential_test,
    srm_test,
    welch_ttest,
    ztest,
    ztest_means,
)


@pytest.mark.parametrize("alpha", [0.05, 0.1])
def test_the_normal_test_of_means_is_statsmodels_unequal_variance_z_test(alpha: float) -> None:
    rng = np.random.default_rng(3)
    a_vals, b_vals = rng.normal(10.0, 2.0, 400), rng.normal(10.4, 3.0, 300)
    a, b = Sample.from_values("A", a_vals), Sample.from_values("B", b_vals)
    result = ztest_means(a, b, alpha=alpha)
    compare = CompareMeans(DescrStatsW(b_vals, ddof=1), DescrStatsW(a_vals, ddof=1))
    z, p = compare.ztest_ind(usevar="unequal")
    assert result.test == "delta" and ztest_means(a, b, test="ratio").test == "ratio"
    assert result.statistic == pytest.approx(-z, rel=1e-9)  # control minus treatment (module docstring)
    assert result.p_value == pytest.approx(p, rel=1e-9)
    assert result.lift_abs == pytest.approx(b_vals.mean() - a_vals.mean())
    assert result.lift_rel == pytest.approx(b_vals.mean() / a_vals.mean() - 1)
    assert result.ci_abs == pytest.approx(compare.zconfint_diff(alpha=alpha, usevar="unequal"), rel=1e-9)
    assert result.alpha == alpha and result.df is None
    lo, hi = result.ci_rel
    assert lo < result.lift_rel < hi


def test_the_pooled_z_test_and_its_intervals_are_statsmodels() -> None:
    a, b = Sample.from_counts("A", 120, 1000), Sample.from_counts("B", 150, 1100)
    result = ztest(a, b, alpha=0.1)
    z, p = proportions_ztest([120, 150], [1000, 1100])
    assert result.statistic == pytest.approx(z, rel=1e-9) and result.p_value == pytest.approx(p, rel=1e-9)
    assert result.ci_abs == pytest.approx(confint_proportions_2indep(150, 1100, 120, 1000, method="wald",
                                                                     compare="diff", alpha=0.1), rel=1e-9)
    low, high = confint_proportions_2indep(150, 1100, 120, 1000, method="log", compare="ratio", alpha=0.1)
    assert result.ci_rel == pytest.approx((low - 1, high - 1), rel=1e-9)
    none = ztest(Sample.from_counts("A", 0, 100), Sample.from_counts("B", 5, 100))
    assert all(math.isnan(x) for x in none.ci_rel)


@pytest.mark.parametrize("method", ["normal", "wilson"])
@pytest.mark.parametrize(("successes", "n"), [(0, 20), (7, 20), (20, 20), (130, 1000)])
def test_one_proportion_interval_is_statsmodels(method: str, successes: int, n: int) -> None:
    for alpha in (0.05, 0.2):
        ours = proportion_confint(successes, n, alpha=alpha, method=method)
        assert ours == pytest.approx(sm_confint(successes, n, alpha=alpha, method=method), abs=1e-12)


def test_one_proportion_interval_refuses_what_it_cannot_compute() -> None:
    with pytest.raises(InputError) as info:
        proportion_confint(3, 10, method="exact")
    assert (info.value.field, info.value.problem, info.value.value) == ("method", "must be 'normal' or 'wilson'",
                                                                        "exact")
    for successes, n in ((11, 10), (-1, 10), (0, 0)):
        with pytest.raises(InputError) as bad:
            proportion_confint(successes, n)
        assert bad.value.field == "successes" and bad.value.value == successes
        assert bad.value.problem == f"must lie between 0 and n={n} with n > 0"


@pytest.mark.parametrize(("counts", "weights"), [
    ([52_000, 48_000], None), ([500, 480, 530], None), ([210, 790], [0.2, 0.8]), ([100, 300], [1, 2]),
])
def test_the_sample_ratio_test_is_the_chi_square_goodness_of_fit(counts: list[int], weights: list[float] | None
                                                                 ) -> None:
    obs = np.asarray(counts, dtype=float)
    w = np.ones_like(obs) if weights is None else np.asarray(weights, dtype=float)
    reference = st.chisquare(obs, obs.sum() * w / w.sum()).pvalue
    assert srm_test(counts, weights) == pytest.approx(reference, rel=1e-9)


def test_the_sample_ratio_test_refuses_malformed_counts_and_weights() -> None:
    assert srm_test([0, 0]) == 1.0  # nothing observed: no evidence of a mismatch
    for counts in ([5], [3, -1], [[1, 2], [3, 4]]):
        with pytest.raises(InputError) as info:
            srm_test(counts)  # type: ignore[arg-type]
        assert info.value.field == "counts" and info.value.problem == "need at least two non-negative variant counts"
    for weights in ([1.0], [1.0, 0.0], [1.0, -2.0]):
        with pytest.raises(InputError) as bad:
            srm_test([10, 10], weights)
        assert (bad.value.field, bad.value.problem, bad.value.value) == ("weights", "need 2 positive weights",
                                                                         weights)


def test_sample_sizes_and_powers_of_means_are_statsmodels_normal_power() -> None:
    solver = NormalIndPower()
    for sd, mde, alpha, power in ((1.0, 0.1, 0.05, 0.8), (3.0, 0.5, 0.1, 0.9), (2.0, -0.3, 0.01, 0.7)):
        n = sample_size_means(sd, mde, alpha=alpha, power=power)
        assert n == math.ceil(solver.solve_power(abs(mde) / sd, alpha=alpha, power=power))
        assert power_means(sd, mde, n, alpha=alpha) == pytest.approx(
            solver.power(abs(mde) / sd, nobs1=n, alpha=alpha), rel=1e-9)
    with pytest.raises(InputError):
        sample_size_means(0.0, 0.1)
    with pytest.raises(InputError):
        sample_size_means(1.0, 0.0)


@pytest.mark.parametrize(("baseline", "mde"), [(0.10, 0.01), (0.30, -0.05), (0.02, 0.004)])
def test_a_proportion_sample_size_is_the_least_n_with_the_power_asked_for(baseline: float, mde: float) -> None:
    for alpha, power in ((0.05, 0.8), (0.1, 0.9)):
        n = sample_size_proportions(baseline, mde, alpha=alpha, power=power)
        assert power_proportions(baseline, mde, n, alpha=alpha) >= power - 1e-9
        assert power_proportions(baseline, mde, n - 2, alpha=alpha) < power
    # a relative effect is a fraction of the baseline
    assert sample_size_proportions(baseline, mde / baseline, relative=True) == sample_size_proportions(baseline, mde)
    assert power_proportions(baseline, mde / baseline, 5000, relative=True) == pytest.approx(
        power_proportions(baseline, mde, 5000))
    # power by simulation of the pooled z-test at that size
    n = sample_size_proportions(baseline, mde)
    rng = np.random.default_rng(5)
    xa, xb = rng.binomial(n, baseline, 4000), rng.binomial(n, baseline + mde, 4000)
    pooled = (xa + xb) / (2 * n)
    z = (xb - xa) / n / np.sqrt(pooled * (1 - pooled) * 2 / n)
    assert np.mean(np.abs(z) > st.norm.isf(0.025)) == pytest.approx(0.8, abs=0.03)


def test_a_proportion_sample_size_refuses_proportions_outside_zero_and_one() -> None:
    for baseline, mde in ((0.5, 0.6), (0.5, -0.5), (0.0, 0.1), (0.3, 0.0)):
        with pytest.raises(InputError) as info:
            sample_size_proportions(baseline, mde)
        assert info.value.field == "mde"
    with pytest.raises(InputError) as power:
        sample_size_proportions(0.1, 0.01, power=1.0)
    assert (power.value.field, power.value.problem) == ("power", "must lie strictly between 0 and 1")


def test_cuped_removes_the_regression_on_the_covariate() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(5.0, 2.0, 2000)
    y = 3.0 + 0.7 * x + rng.normal(0.0, 1.0, 2000)
    result = cuped(y, x)
    slope = np.polyfit(x, y, 1)[0]
    assert result.theta == pytest.approx(slope, rel=1e-9)
    assert result.adjusted == pytest.approx(y - slope * (x - x.mean()), rel=1e-9)
    assert result.adjusted.mean() == pytest.approx(y.mean())
    assert result.variance_reduction == pytest.approx(np.corrcoef(x, y)[0, 1] ** 2, rel=1e-9)
    # a constant covariate explains nothing; a constant metric has no variance to reduce
    flat_x = cuped(y, np.full(2000, 1.0))
    assert flat_x.theta == 0.0 and flat_x.variance_reduction == 0.0 and np.array_equal(flat_x.adjusted, y)
    assert cuped(np.full(10, 2.0), rng.normal(size=10)).variance_reduction == 0.0
    with pytest.raises(InputError) as info:
        cuped(y, x[:-1])
    assert info.value.field == "covariate"
    with pytest.raises(InputError):
        cuped([1.0], [1.0])


def _simulated_beat(a: Sample, b: Sample, prior: tuple[float, float] = (1.0, 1.0), draws: int = 400_000) -> float:
    rng = np.random.default_rng(9)
    assert a.successes is not None and b.successes is not None
    pa = rng.beta(prior[0] + a.successes, prior[1] + a.n - a.successes, draws)
    pb = rng.beta(prior[0] + b.successes, prior[1] + b.n - b.successes, draws)
    return float(np.mean(pb > pa))


@pytest.mark.parametrize(("a", "b"), [((100, 1000), (130, 1000)), ((30, 200), (20, 150)), ((5, 40), (5, 40)),
                                      ((0, 50), (3, 60))])
def test_the_probability_to_beat_control_is_the_beta_posteriors(a: tuple[int, int], b: tuple[int, int]) -> None:
    control, treatment = Sample.from_counts("A", *a), Sample.from_counts("B", *b)
    assert prob_beat_control(control, treatment) == pytest.approx(_simulated_beat(control, treatment), abs=4e-3)
    # a prior that is not a whole number takes the normal approximation of the two Betas (close once both
    # variants have a few dozen successes)
    jeffreys = (0.5, 0.5)
    if min(a[0], b[0]) >= 20:
        assert prob_beat_control(control, treatment, prior=jeffreys) == pytest.approx(
            _simulated_beat(control, treatment, jeffreys), abs=0.01)
    flipped = prob_beat_control(treatment, control)
    assert flipped == pytest.approx(1 - prob_beat_control(control, treatment), abs=0.02)


def test_the_probability_to_beat_control_of_numeric_metrics_is_the_normal_posterior() -> None:
    rng = np.random.default_rng(4)
    a_vals, b_vals = rng.normal(1.0, 1.0, 500), rng.normal(1.1, 1.5, 400)
    a, b = Sample.from_values("A", a_vals), Sample.from_values("B", b_vals)
    draws_a = rng.normal(a.mean, math.sqrt(a.sem2), 400_000)
    draws_b = rng.normal(b.mean, math.sqrt(b.sem2), 400_000)
    assert prob_beat_control(a, b) == pytest.approx(float(np.mean(draws_b > draws_a)), abs=4e-3)
    same = Sample.from_values("A", [2.0, 2.0, 2.0])
    assert prob_beat_control(same, Sample.from_values("B", [2.0, 2.0])) == 0.5


@pytest.mark.parametrize("alpha", [0.05, 0.2])
def test_welch_is_scipy_unequal_variance_t_test_with_its_interval(alpha: float) -> None:
    rng = np.random.default_rng(8)
    a_vals, b_vals = rng.normal(5.0, 1.0, 40), rng.normal(5.6, 2.5, 25)
    result = welch_ttest(Sample.from_values("A", a_vals), Sample.from_values("B", b_vals), alpha=alpha)
    reference = st.ttest_ind(a_vals, b_vals, equal_var=False)
    assert result.statistic == pytest.approx(reference.statistic, rel=1e-9)
    assert result.p_value == pytest.approx(reference.pvalue, rel=1e-9)
    assert result.df == pytest.approx(reference.df, rel=1e-9)
    ci = st.ttest_ind(b_vals, a_vals, equal_var=False).confidence_interval(confidence_level=1 - alpha)
    assert result.ci_abs == pytest.approx((ci.low, ci.high), rel=1e-9)
    lo, hi = result.ci_rel
    assert lo < result.lift_rel < hi
    with pytest.raises(InputError) as info:
        welch_ttest(Sample.from_values("A", [1.0]), Sample.from_values("B", b_vals))
    assert (info.value.field, info.value.value) == ("A.n", 1)


def test_the_sequential_interval_ends_where_the_always_valid_p_reaches_alpha() -> None:
    a, b = Sample.from_counts("A", 400, 5000), Sample.from_counts("B", 470, 5000)
    tau = 0.02
    result = sequential_test(a, b, alpha=0.05, tau=tau)
    v1 = a.sem2 + b.sem2
    for edge in result.ci_abs:
        assert float(always_valid_p(result.lift_abs - edge, v1, tau**2)) == pytest.approx(0.05, rel=1e-9)
    pooled = 870 / 10_000
    v0 = pooled * (1 - pooled) * (2 / 5000)
    assert result.p_value == pytest.approx(float(always_valid_p(0.014, v0, tau**2)), rel=1e-9)
    assert result.statistic == pytest.approx(-0.014 / math.sqrt(v0), rel=1e-9)
    assert sequential_test(a, b, tau=tau, previous_p=1e-6).p_value == 1e-6  # the running minimum
    # the default mixing sd is a tenth of the pooled per-unit sd
    assert sequential_test(a, b).p_value == pytest.approx(
        sequential_test(a, b, tau=0.1 * math.sqrt(pooled * (1 - pooled))).p_value, rel=1e-12)
    rng = np.random.default_rng(2)
    xa, xb = rng.normal(1.0, 2.0, 300), rng.normal(1.3, 1.0, 200)
    na, nb = Sample.from_values("A", xa), Sample.from_values("B", xb)
    unit_sd = math.sqrt((299 * xa.var(ddof=1) + 199 * xb.var(ddof=1)) / 498)
    assert sequential_test(na, nb).p_value == pytest.approx(
        float(always_valid_p(xb.mean() - xa.mean(), na.sem2 + nb.sem2, (0.1 * unit_sd) ** 2)), rel=1e-9)
    # no variance: no evidence, and an interval of one point
    flat = sequential_test(Sample.from_values("A", [1.0, 1.0]), Sample.from_values("B", [1.0, 1.0]))
    assert flat.p_value == 1.0 and flat.ci_abs == (0.0, 0.0)


def test_always_valid_p_is_one_over_the_mixture_likelihood_ratio_and_never_rises() -> None:
    d, v, t2 = np.array([0.0, 0.3, 0.05, 0.4]), np.array([1.0, 0.02, 0.01, 0.01]), 0.05
    lr = np.sqrt(v / (v + t2)) * np.exp(t2 * d**2 / (2 * v * (v + t2)))
    assert always_valid_p(d, v, t2) == pytest.approx(np.minimum.accumulate(np.minimum(1.0, 1 / lr)), rel=1e-9)
    assert float(always_valid_p(0.0, 0.0, t2)) == 1.0  # no variance: undefined, read as no evidence


def test_samples_refuse_what_is_not_a_sample_naming_the_variant() -> None:
    s = Sample.from_counts("B", 3, 12)
    assert (s.n, s.mean, s.variance, s.successes) == (12, 0.25, 0.1875, 3) and s.sem2 == pytest.approx(0.1875 / 12)
    for successes, n, field in ((1, 0, "B.n"), (13, 12, "B.successes"), (-1, 12, "B.successes")):
        with pytest.raises(InputError) as info:
            Sample.from_counts("B", successes, n)
        assert info.value.field == field
    v = Sample.from_values("A", [1.0, 2.0, 4.0])
    assert (v.n, v.mean, v.variance, v.successes) == (3, pytest.approx(7 / 3), pytest.approx(7 / 3), None)
    assert Sample.from_values("A", [5.0]).variance == 0.0
    for bad, problem in (([], "must be a non-empty one-dimensional sequence of numbers"),
                         ([[1.0, 2.0]], "must be a non-empty one-dimensional sequence of numbers"),
                         ([1.0, math.nan], "contains NaN or infinite values"),
                         ([1.0, math.inf], "contains NaN or infinite values")):
        with pytest.raises(InputError) as info:
            Sample.from_values("A", bad)
        assert (info.value.field, info.value.problem) == ("A.values", problem)
    for alpha in (0.0, 1.0, -0.5):
        with pytest.raises(InputError) as info:
            ztest(s, s, alpha=alpha)
        assert (info.value.field, info.value.problem) == ("alpha", "must lie strictly between 0 and 1")


def test_every_comparison_carries_its_samples_name_lifts_and_level() -> None:
    rng = np.random.default_rng(6)
    a, b = Sample.from_values("A", rng.normal(4.0, 1.0, 80)), Sample.from_values("B", rng.normal(4.5, 1.0, 90))
    for result, name in ((ztest_means(a, b, alpha=0.1), "delta"), (welch_ttest(a, b, alpha=0.1), "welch"),
                         (sequential_test(a, b, alpha=0.1), "sequential")):
        assert (result.test, result.control, result.treatment, result.alpha) == (name, a, b, 0.1)
        assert result.lift_abs == pytest.approx(b.mean - a.mean) and result.lift_rel == pytest.approx(b.mean / a.mean - 1)
        lo, hi = result.ci_rel
        assert lo < result.lift_rel < hi
    p, q = Sample.from_counts("A", 40, 100), Sample.from_counts("B", 50, 100)
    z = ztest(p, q, alpha=0.1)
    assert (z.test, z.control, z.treatment, z.alpha, z.lift_rel) == ("ztest", p, q, 0.1, pytest.approx(0.25))


def test_a_sequential_test_without_mixing_or_variance_has_no_evidence() -> None:
    a, b = Sample.from_counts("A", 40, 100), Sample.from_counts("B", 60, 100)
    none = sequential_test(a, b, tau=0.0)
    assert none.p_value == 1.0 and none.ci_abs == pytest.approx((0.2, 0.2))
    assert sequential_test(a, b).p_value <= 1.0  # a first look: no previous p-value to carry
    # one 0/1 variant and one numeric variant: the numeric formula (pooled per-unit variance)
    numeric = Sample.from_values("A", [0.0, 1.0, 1.0, 0.0])
    unit_var = (3 * numeric.variance + 99 * b.variance) / 102
    assert sequential_test(numeric, b).p_value == pytest.approx(float(always_valid_p(
        0.1, numeric.sem2 + b.sem2, (0.1 * math.sqrt(unit_var)) ** 2)), rel=1e-9)


def test_cuped_works_on_small_variances_too() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(0.0, 0.1, 500)  # variance 0.01
    y = 2.0 * x + rng.normal(0.0, 0.05, 500)  # variance about 0.04
    result = cuped(y, x)
    assert result.theta == pytest.approx(np.polyfit(x, y, 1)[0], rel=1e-9)
    assert result.variance_reduction == pytest.approx(np.corrcoef(x, y)[0, 1] ** 2, rel=1e-9)
    assert cuped([1.0, 2.0], [0.0, 1.0]).theta == pytest.approx(1.0)  # two units are enough


def test_one_proportion_interval_defaults_to_wald_and_takes_a_single_unit() -> None:
    assert proportion_confint(7, 20) == proportion_confint(7, 20, method="normal")
    assert proportion_confint(1, 1, method="wilson") == pytest.approx(sm_confint(1, 1, method="wilson"))


# ---- what each refusal names, and where each boundary lies -----------------------------------------------


def _refusal(call: Any) -> tuple[str, str, Any]:
    with pytest.raises(InputError) as info:
        call()
    return info.value.field, info.value.problem, info.value.value


def test_each_refusal_names_the_field_the_problem_and_the_value_given() -> None:
    numbers = Sample.from_values("A", [1.0, 2.0, 3.0])
    assert _refusal(lambda: Sample.from_counts("B", 1, 0)) == ("B.n", "must be a positive number of units", 0)
    assert _refusal(lambda: Sample.from_counts("B", 11, 10)) == ("B.successes", "must lie between 0 and n=10", 11)
    assert _refusal(lambda: Sample.from_counts("B", -1, 10)) == ("B.successes", "must lie between 0 and n=10", -1)
    assert _refusal(lambda: ztest(numbers, numbers)) == (
        "metric", "the pooled z-test needs a 0/1 metric; use welch_ttest for numeric metrics", None)
    assert _refusal(lambda: welch_ttest(numbers, Sample.from_values("B", [1.0]))) == (
        "B.n", "Welch's t-test needs at least 2 units per variant", 1)
    assert _refusal(lambda: cuped([1.0, 2.0], [1.0])) == (
        "covariate", "needs one covariate value per unit (at least two units)", None)
    assert _refusal(lambda: srm_test([5])) == ("counts", "need at least two non-negative variant counts", [5])
    assert _refusal(lambda: srm_test([5, -1])) == ("counts", "need at least two non-negative variant counts", [5, -1])
    assert _refusal(lambda: srm_test([5, 5], [1.0, 0.0])) == ("weights", "need 2 positive weights", [1.0, 0.0])
    assert _refusal(lambda: ztest_means(numbers, numbers, alpha=1.5)) == (
        "alpha", "must lie strictly between 0 and 1", 1.5)
    assert _refusal(lambda: sample_size_means(1.0, 0.1, power=1.0)) == (
        "power", "must lie strictly between 0 and 1", 1.0)
    assert _refusal(lambda: sample_size_means(1.0, 0.1, power=0.0))[0] == "power"
    assert _refusal(lambda: sample_size_means(0.0, 0.1)) == ("mde", "needs sd > 0 and a non-zero mde", 0.1)
    outside = "baseline and baseline+mde must be distinct proportions in (0, 1)"
    assert _refusal(lambda: sample_size_proportions(0.5, 0.6)) == ("mde", outside, 0.6)
    # each proportion must lie strictly inside (0, 1), the baseline as much as the target
    assert _refusal(lambda: sample_size_proportions(0.5, 0.5)) == ("mde", outside, 0.5)  # target exactly 1
    assert _refusal(lambda: sample_size_proportions(1.0, -0.5)) == ("mde", outside, -0.5)  # baseline exactly 1
    assert _refusal(lambda: sample_size_proportions(1.5, -1.0)) == ("mde", outside, -1.0)


def test_the_bounds_of_a_sample_are_inclusive() -> None:
    assert Sample.from_counts("A", 0, 10).mean == 0.0 and Sample.from_counts("A", 10, 10).mean == 1.0
    assert Sample.from_values("A", [1.0, 3.0]).variance == 2.0  # two values have a sample variance
    two = welch_ttest(Sample.from_values("A", [1.0, 3.0]), Sample.from_values("B", [2.0, 5.0]))  # 2 units suffice
    reference = st.ttest_ind([1.0, 3.0], [2.0, 5.0], equal_var=False)
    assert two.statistic == pytest.approx(reference.statistic, rel=1e-9)
    assert two.p_value == pytest.approx(reference.pvalue, rel=1e-9)


def test_the_relative_interval_of_a_single_success_is_statsmodels() -> None:
    for (xa, na), (xb, nb) in (((1, 200), (4, 180)), ((6, 200), (1, 180))):
        result = ztest(Sample.from_counts("A", xa, na), Sample.from_counts("B", xb, nb))
        low, high = confint_proportions_2indep(xb, nb, xa, na, method="log", compare="ratio")
        assert result.ci_rel == pytest.approx((low - 1, high - 1), rel=1e-9)


def test_welch_on_constant_samples_is_certain_and_keeps_the_pooled_degrees_of_freedom() -> None:
    low, high = Sample.from_values("A", [2.0] * 4), Sample.from_values("B", [3.0] * 6)
    apart = welch_ttest(low, high)
    assert (apart.statistic, apart.p_value, apart.df) == (-math.inf, 0.0, 8.0)
    assert apart.ci_abs == (1.0, 1.0) and apart.ci_rel == (0.5, 0.5)
    assert welch_ttest(high, low).statistic == math.inf
    same = welch_ttest(low, Sample.from_values("B", [2.0] * 6))
    assert (same.statistic, same.p_value, same.df) == (0.0, 1.0, 8.0)


def test_the_relative_interval_is_the_delta_method_on_the_ratio_of_means() -> None:
    """Var(B/A) ≈ (B/A)² (se_B²/B² + se_A²/A²); Welch uses its t quantile, the normal tests z."""
    rng = np.random.default_rng(11)
    a_vals, b_vals = rng.normal(2.0, 0.3, 60), rng.normal(2.2, 0.5, 45)  # a standard error well below 1
    a, b = Sample.from_values("A", a_vals), Sample.from_values("B", b_vals)
    ratio = b.mean / a.mean
    se = ratio * math.sqrt(b.sem2 / b.mean**2 + a.sem2 / a.mean**2)
    welch = welch_ttest(a, b, alpha=0.1)
    t = st.t.isf(0.05, st.ttest_ind(a_vals, b_vals, equal_var=False).df)
    assert welch.ci_rel == pytest.approx((ratio - 1 - t * se, ratio - 1 + t * se), rel=1e-9)
    z = st.norm.isf(0.05)
    for result in (ztest_means(a, b, alpha=0.1), sequential_test(a, b, alpha=0.1)):
        assert result.ci_rel == pytest.approx((ratio - 1 - z * se, ratio - 1 + z * se), rel=1e-9)
    assert welch.statistic == pytest.approx(st.ttest_ind(a_vals, b_vals, equal_var=False).statistic, rel=1e-9)
    centred = Sample.from_values("A", [-1.0, 1.0, -2.0, 2.0])  # a control mean of 0: no relative lift
    nothing = welch_ttest(centred, b)
    assert math.isnan(nothing.lift_rel) and all(math.isnan(x) for x in nothing.ci_rel)


def _exact_beat(a: Sample, b: Sample, prior: tuple[float, float]) -> float:
    """P(p_B > p_A) for Beta posteriors, by numerical integration of f_B · F_A."""
    from scipy import integrate

    assert a.successes is not None and b.successes is not None
    pa = st.beta(prior[0] + a.successes, prior[1] + a.n - a.successes)
    pb = st.beta(prior[0] + b.successes, prior[1] + b.n - b.successes)
    return float(integrate.quad(lambda x: pb.pdf(x) * pa.cdf(x), 0, 1, epsabs=1e-12, limit=200)[0])


@pytest.mark.parametrize("prior", [(2.0, 5.0), (3.0, 1.0)])
def test_an_asymmetric_prior_is_beta_a_b(prior: tuple[float, float]) -> None:
    a, b = Sample.from_counts("A", 4, 30), Sample.from_counts("B", 9, 35)
    assert prob_beat_control(a, b, prior=prior) == pytest.approx(_exact_beat(a, b, prior), abs=1e-7)


def test_a_fractional_prior_uses_the_normal_law_with_each_beta_posteriors_mean_and_variance() -> None:
    a, b = Sample.from_counts("A", 3, 10), Sample.from_counts("B", 5, 12)
    pa, pb = st.beta(0.5 + 3, 0.5 + 7), st.beta(0.5 + 5, 0.5 + 7)
    expected = st.norm.cdf((pb.mean() - pa.mean()) / math.sqrt(pa.var() + pb.var()))
    assert prob_beat_control(a, b, prior=(0.5, 0.5)) == pytest.approx(expected, rel=1e-12)


def test_with_no_effect_the_power_of_a_proportion_test_is_its_significance_level() -> None:
    for alpha in (0.05, 0.2):
        assert power_proportions(0.3, 0.0, 500, alpha=alpha) == pytest.approx(alpha, rel=1e-12)
    assert power_means(1.0, 0.0, 500, alpha=0.05) == pytest.approx(0.05, rel=1e-12)


def test_the_default_mixing_sd_pools_the_variances_of_the_smallest_samples() -> None:
    a, b = Sample.from_values("A", [1.0]), Sample.from_values("B", [2.0, 4.0])
    pooled = (0 * a.variance + 1 * b.variance) / 1  # (n_a - 1) s_a² + (n_b - 1) s_b² over n_a + n_b - 2 = 1
    assert sequential_test(a, b).p_value == pytest.approx(
        sequential_test(a, b, tau=0.1 * math.sqrt(pooled)).p_value, rel=1e-12)
    assert sequential_test(a, b).ci_abs == pytest.approx(
        sequential_test(a, b, tau=0.1 * math.sqrt(pooled)).ci_abs, rel=1e-12)


def test_a_sample_keeps_its_name_and_a_missing_value_is_refused_naming_it() -> None:
    assert Sample.from_counts("B", 3, 12).name == "B" and Sample.from_values("A", [1.0, 2.0]).name == "A"
    missing: Any = [1.0, None]  # a JSON null in the metric column
    assert _refusal(lambda: Sample.from_values("A", missing)) == ("A.values", "contains NaN or infinite values",
                                                                      None)


def test_the_probability_to_beat_control_of_a_0_1_and_a_numeric_variant_is_the_normal_posterior() -> None:
    counts, values = Sample.from_counts("A", 40, 100), Sample.from_values("B", [0.2, 0.9, 0.4, 0.7, 0.5])
    expected = st.norm.cdf((values.mean - counts.mean) / math.sqrt(counts.sem2 + values.sem2))
    assert prob_beat_control(counts, values) == pytest.approx(expected, rel=1e-12)
    assert prob_beat_control(values, counts) == pytest.approx(1 - expected, rel=1e-12)
