"""Statistics of an A/B test, on per-variant summaries so that logs of any size reduce to a few numbers.

Sign conventions, chosen once:

- ``statistic`` follows the system description's formula
  ``z = (p̂_A − p̂_B) / sqrt(p̂(1−p̂)/n_A + p̂(1−p̂)/n_B)`` with A the control, so
  ``proportions_ztest([x_A, x_B], [n_A, n_B])`` and ``ttest_ind(a, b)`` of
  statsmodels give the same number; a better treatment has a negative statistic.
- ``lift_abs = mean_B − mean_A`` and ``lift_rel = mean_B / mean_A − 1``, with
  their confidence intervals, point the way a reader expects: positive when B is higher.

    >>> a, b = Sample.from_counts("A", 380, 10_000), Sample.from_counts("B", 450, 10_000)
    >>> r = ztest(a, b)
    >>> round(r.statistic, 4), round(r.p_value, 4), round(r.lift_abs, 4)
    (-2.4818, 0.0131, 0.007)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import special
from scipy import stats as st

from modelmill.errors import InputError

__all__ = [
    "CORRECTIONS",
    "Comparison",
    "Cuped",
    "Sample",
    "adjust_p_values",
    "always_valid_p",
    "benjamini_hochberg",
    "check_correction",
    "cuped",
    "holm",
    "power_means",
    "power_proportions",
    "prob_beat_control",
    "proportion_confint",
    "sample_size_means",
    "sample_size_proportions",
    "sequential_test",
    "srm_test",
    "welch_ttest",
    "ztest",
    "ztest_means",
]


@dataclasses.dataclass(frozen=True)
class Sample:
    """One variant reduced to its size, its metric mean and the per-unit variance (``se² = variance / n``).

    ``successes`` is kept for 0/1 metrics so that proportion tests use exact counts.
    """

    name: str
    n: int
    mean: float
    variance: float
    successes: int | None = None

    @classmethod
    def from_counts(cls, name: str, successes: int, n: int) -> Sample:
        """A 0/1 metric: ``successes`` out of ``n`` units (variance ``p(1-p)``, as the z-test uses)."""
        if n <= 0:
            raise InputError(f"{name}.n", "must be a positive number of units", n)
        if not 0 <= successes <= n:
            raise InputError(f"{name}.successes", f"must lie between 0 and n={n}", successes)
        p = successes / n
        return cls(name, int(n), p, p * (1 - p), int(successes))

    @classmethod
    def from_values(cls, name: str, values: ArrayLike) -> Sample:
        """A numeric metric, one value per unit (sample variance with ``ddof=1``)."""
        x = np.asarray(values, dtype=np.float64)
        if x.ndim != 1 or x.size == 0:
            raise InputError(f"{name}.values", "must be a non-empty one-dimensional sequence of numbers")
        if not np.isfinite(x).all():
            raise InputError(f"{name}.values", "contains NaN or infinite values")
        var = float(x.var(ddof=1)) if x.size > 1 else 0.0
        return cls(name, int(x.size), float(x.mean()), var)

    @property
    def sem2(self) -> float:
        """Squared standard error of the mean."""
        return self.variance / self.n


@dataclasses.dataclass(frozen=True)
class Comparison:
    """A treatment compared with the control; see the module docstring for the sign conventions."""

    test: str
    control: Sample
    treatment: Sample
    statistic: float
    p_value: float
    lift_abs: float
    lift_rel: float
    ci_abs: tuple[float, float]
    ci_rel: tuple[float, float]
    alpha: float
    df: float | None = None


def _check_alpha(alpha: float) -> float:
    if not 0 < alpha < 1:
        raise InputError("alpha", "must lie strictly between 0 and 1", alpha)
    return float(alpha)


def _two_sided_normal(stat: float) -> float:
    return float(2 * st.norm.sf(abs(stat)))


def _ratio(num: float, den: float) -> float:
    return num / den if den != 0 else math.nan


def _stat(diff: float, se: float) -> float:
    """``diff / se`` with the degenerate cases (no variance at all) made explicit instead of NaN."""
    if se > 0:
        return diff / se
    return 0.0 if diff == 0 else math.copysign(math.inf, diff)


def _rel_ci_delta(a: Sample, b: Sample, alpha: float, crit: float | None = None) -> tuple[float, float]:
    """CI of ``mean_B / mean_A − 1`` by the delta method on the ratio of two independent means."""
    if a.mean == 0:
        return (math.nan, math.nan)
    r = b.mean / a.mean
    se = math.sqrt(b.sem2 / a.mean**2 + (b.mean**2) * a.sem2 / a.mean**4)
    z = crit if crit is not None else float(st.norm.isf(alpha / 2))
    return (r - 1 - z * se, r - 1 + z * se)


def ztest(control: Sample, treatment: Sample, *, alpha: float = 0.05) -> Comparison:
    """The two-proportion z-test with the pooled proportion (the system description's formula).

    The absolute-lift CI is the unpooled Wald interval; the relative-lift CI is
    the log (Katz) interval of the risk ratio, both as in statsmodels'
    ``confint_proportions_2indep``.
    """
    alpha = _check_alpha(alpha)
    a, b = control, treatment
    if a.successes is None or b.successes is None:
        raise InputError("metric", "the pooled z-test needs a 0/1 metric; use welch_ttest for numeric metrics")
    pooled = (a.successes + b.successes) / (a.n + b.n)
    se0 = math.sqrt(pooled * (1 - pooled) * (1 / a.n + 1 / b.n))
    stat = _stat(a.mean - b.mean, se0)
    p = _two_sided_normal(stat)
    z = float(st.norm.isf(alpha / 2))
    diff = b.mean - a.mean
    se1 = math.sqrt(a.sem2 + b.sem2)
    ci_abs = (diff - z * se1, diff + z * se1)
    if a.successes > 0 and b.successes > 0:
        log_rr = math.log(b.mean / a.mean)
        se_log = math.sqrt(1 / b.successes - 1 / b.n + 1 / a.successes - 1 / a.n)
        ci_rel = (math.exp(log_rr - z * se_log) - 1, math.exp(log_rr + z * se_log) - 1)
    else:
        ci_rel = (math.nan, math.nan)
    return Comparison("ztest", a, b, stat, p, diff, _ratio(diff, a.mean), ci_abs, ci_rel, alpha)


def welch_ttest(control: Sample, treatment: Sample, *, alpha: float = 0.05) -> Comparison:
    """Welch's t-test (unequal variances, Welch–Satterthwaite degrees of freedom)."""
    alpha = _check_alpha(alpha)
    a, b = control, treatment
    for s in (a, b):
        if s.n < 2:
            raise InputError(f"{s.name}.n", "Welch's t-test needs at least 2 units per variant", s.n)
    va, vb = a.sem2, b.sem2
    se = math.sqrt(va + vb)
    denom = va**2 / (a.n - 1) + vb**2 / (b.n - 1)
    df = (va + vb) ** 2 / denom if denom > 0 else float(a.n + b.n - 2)
    stat = _stat(a.mean - b.mean, se)
    p = float(2 * st.t.sf(abs(stat), df))
    t = float(st.t.isf(alpha / 2, df))
    diff = b.mean - a.mean
    return Comparison("welch", a, b, stat, p, diff, _ratio(diff, a.mean), (diff - t * se, diff + t * se),
                      _rel_ci_delta(a, b, alpha, t), alpha, df)


def ztest_means(control: Sample, treatment: Sample, *, alpha: float = 0.05, test: str = "delta") -> Comparison:
    """A normal (large-sample) test of two means with unpooled variances: used for ratio metrics (delta method)."""
    alpha = _check_alpha(alpha)
    a, b = control, treatment
    se = math.sqrt(a.sem2 + b.sem2)
    stat = _stat(a.mean - b.mean, se)
    z = float(st.norm.isf(alpha / 2))
    diff = b.mean - a.mean
    return Comparison(test, a, b, stat, _two_sided_normal(stat), diff, _ratio(diff, a.mean),
                      (diff - z * se, diff + z * se), _rel_ci_delta(a, b, alpha), alpha)


# ---- sequential testing ------------------------------------------------------------------------


def always_valid_p(diff: ArrayLike, var: ArrayLike, tau2: ArrayLike) -> NDArray[np.float64]:
    """Always-valid p-values of the mixture SPRT (Johari, Pekelis & Walsh 2017), looks on the last axis.

    ``diff`` is the estimated difference at each look, ``var`` its variance and
    ``tau2`` the variance of the normal mixing distribution. The likelihood ratio is
    ``Λ = sqrt(V/(V+τ²)) · exp(τ² d² / (2 V (V+τ²)))`` and the p-value is the running
    minimum of ``1/Λ``, so it can be read after every look without inflating the
    false-positive rate.

        >>> always_valid_p([0.0, 0.5, 0.1], [1.0, 0.01, 0.005], 0.01).round(4).tolist()
        [1.0, 0.0027, 0.0027]
    """
    d = np.asarray(diff, dtype=np.float64)
    v = np.asarray(var, dtype=np.float64)
    t2 = np.asarray(tau2, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_lr = 0.5 * np.log(v / (v + t2)) + t2 * d**2 / (2 * v * (v + t2))
        p = np.minimum(1.0, np.exp(-log_lr))
    p = np.where(np.isfinite(p), p, 1.0)
    return np.minimum.accumulate(p, axis=-1) if p.ndim else p


def sequential_test(control: Sample, treatment: Sample, *, alpha: float = 0.05, tau: float | None = None,
                    previous_p: float = 1.0) -> Comparison:
    """mSPRT on the difference of means; the p-value is always valid (see :func:`always_valid_p`).

    ``tau`` is the standard deviation of the mixing distribution in metric units; by
    default a tenth of the pooled per-unit standard deviation. ``previous_p`` is the
    p-value of the last look, for the running minimum. The CI is the matching
    always-valid confidence sequence.
    """
    alpha = _check_alpha(alpha)
    a, b = control, treatment
    if a.successes is not None and b.successes is not None:
        pooled = (a.successes + b.successes) / (a.n + b.n)
        unit_var = pooled * (1 - pooled)
        v0 = unit_var * (1 / a.n + 1 / b.n)
    else:
        unit_var = ((a.n - 1) * a.variance + (b.n - 1) * b.variance) / max(1, a.n + b.n - 2)
        v0 = a.sem2 + b.sem2
    tau2 = (0.1 * math.sqrt(unit_var)) ** 2 if tau is None else float(tau) ** 2
    diff = b.mean - a.mean
    p = min(previous_p, float(always_valid_p(diff, v0, tau2))) if v0 > 0 and tau2 > 0 else min(previous_p, 1.0)
    v1 = a.sem2 + b.sem2
    if v1 > 0 and tau2 > 0:
        # Confidence sequence: every d with Λ(d) < 1/alpha.
        half = math.sqrt(v1 * (v1 + tau2) / tau2 * (2 * math.log(1 / alpha) + math.log((v1 + tau2) / v1)))
    else:
        half = 0.0
    return Comparison("sequential", a, b, _stat(a.mean - b.mean, math.sqrt(v0)), p, diff, _ratio(diff, a.mean),
                      (diff - half, diff + half), _rel_ci_delta(a, b, alpha), alpha)


# ---- intervals, sample ratio, power ------------------------------------------------------------


def proportion_confint(successes: int, n: int, *, alpha: float = 0.05, method: str = "normal") -> tuple[float, float]:
    """CI of one proportion: ``normal`` (Wald) or ``wilson``, as statsmodels' ``proportion_confint``."""
    alpha = _check_alpha(alpha)
    if n <= 0 or not 0 <= successes <= n:
        raise InputError("successes", f"must lie between 0 and n={n} with n > 0", successes)
    p = successes / n
    z = float(st.norm.isf(alpha / 2))
    if method == "normal":
        half = z * math.sqrt(p * (1 - p) / n)
        return (p - half, p + half)
    if method == "wilson":
        z2 = z * z
        center = (p + z2 / (2 * n)) / (1 + z2 / n)
        half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
        return (center - half, center + half)
    raise InputError("method", "must be 'normal' or 'wilson'", method)


def srm_test(counts: Sequence[int], weights: Sequence[float] | None = None) -> float:
    """Sample-ratio-mismatch p-value: chi-square goodness of fit of the observed units to the planned weights.

        >>> srm_test([52_000, 48_000], [0.5, 0.5]) < 1e-3
        True
    """
    obs = np.asarray(counts, dtype=np.float64)
    if obs.ndim != 1 or obs.size < 2 or (obs < 0).any():
        raise InputError("counts", "need at least two non-negative variant counts", list(counts))
    w = np.ones_like(obs) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != obs.shape or (w <= 0).any():
        raise InputError("weights", f"need {obs.size} positive weights", None if weights is None else list(weights))
    total = obs.sum()
    if total == 0:
        return 1.0
    expected = total * w / w.sum()
    chi2 = float(((obs - expected) ** 2 / expected).sum())
    return float(st.chi2.sf(chi2, obs.size - 1))


def _z(alpha: float, power: float) -> tuple[float, float]:
    _check_alpha(alpha)
    if not 0 < power < 1:
        raise InputError("power", "must lie strictly between 0 and 1", power)
    return float(st.norm.isf(alpha / 2)), float(st.norm.ppf(power))


def sample_size_proportions(baseline: float, mde: float, *, alpha: float = 0.05, power: float = 0.8,
                            relative: bool = False) -> int:
    """Units per variant for the pooled z-test to detect ``baseline → baseline + mde`` (equal split).

        >>> sample_size_proportions(0.10, 0.01)
        14751
    """
    za, zb = _z(alpha, power)
    p1 = baseline
    p2 = baseline * (1 + mde) if relative else baseline + mde
    if not (0 < p1 < 1 and 0 < p2 < 1) or p1 == p2:
        raise InputError("mde", "baseline and baseline+mde must be distinct proportions in (0, 1)", mde)
    pbar = (p1 + p2) / 2
    n = (za * math.sqrt(2 * pbar * (1 - pbar)) + zb * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))) ** 2 / (p2 - p1) ** 2
    return math.ceil(n)


def power_proportions(baseline: float, mde: float, n: int, *, alpha: float = 0.05, relative: bool = False) -> float:
    """Power of the pooled z-test with ``n`` units per variant (the inverse of :func:`sample_size_proportions`)."""
    za, _ = _z(alpha, 0.5)
    p1 = baseline
    p2 = baseline * (1 + mde) if relative else baseline + mde
    pbar = (p1 + p2) / 2
    se0 = math.sqrt(2 * pbar * (1 - pbar) / n)
    se1 = math.sqrt((p1 * (1 - p1) + p2 * (1 - p2)) / n)
    return float(st.norm.cdf((abs(p2 - p1) - za * se0) / se1) + st.norm.cdf((-abs(p2 - p1) - za * se0) / se1))


def sample_size_means(sd: float, mde: float, *, alpha: float = 0.05, power: float = 0.8) -> int:
    """Units per variant to detect a difference ``mde`` of means with per-unit standard deviation ``sd``.

    Equal to statsmodels' ``NormalIndPower().solve_power(mde / sd, alpha=alpha, power=power)``, rounded up.
    """
    za, zb = _z(alpha, power)
    if sd <= 0 or mde == 0:
        raise InputError("mde", "needs sd > 0 and a non-zero mde", mde)
    return math.ceil(2 * ((za + zb) * sd / mde) ** 2)


def power_means(sd: float, mde: float, n: int, *, alpha: float = 0.05) -> float:
    """Power of the two-sided normal test of means with ``n`` units per variant."""
    za, _ = _z(alpha, 0.5)
    shift = abs(mde) / (sd * math.sqrt(2 / n))
    return float(st.norm.sf(za - shift) + st.norm.cdf(-za - shift))


# ---- variance reduction and Bayes --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Cuped:
    """CUPED-adjusted values ``y − θ(x − mean x)``; ``variance_reduction`` is ``1 − var(adjusted)/var(y)``."""

    adjusted: NDArray[np.float64]
    theta: float
    variance_reduction: float


def cuped(y: ArrayLike, x: ArrayLike) -> Cuped:
    """CUPED (Deng et al. 2013): remove the part of the metric explained by a pre-period covariate.

    ``θ`` is estimated on all units together (both variants), which keeps the
    adjusted difference of means unbiased because assignment is random.

        >>> rng = np.random.default_rng(0); x = rng.normal(size=1000); y = x + rng.normal(size=1000)
        >>> round(cuped(y, x).variance_reduction, 2)
        0.51
    """
    yy = np.asarray(y, dtype=np.float64)
    xx = np.asarray(x, dtype=np.float64)
    if yy.shape != xx.shape or yy.ndim != 1 or yy.size < 2:
        raise InputError("covariate", "needs one covariate value per unit (at least two units)")
    vx = float(xx.var(ddof=1))
    theta = float(np.cov(yy, xx, ddof=1)[0, 1] / vx) if vx > 0 else 0.0
    adjusted = yy - theta * (xx - xx.mean())
    vy = float(yy.var(ddof=1))
    reduction = 1 - float(adjusted.var(ddof=1)) / vy if vy > 0 else 0.0
    return Cuped(adjusted, theta, reduction)


def prob_beat_control(control: Sample, treatment: Sample, *, prior: tuple[float, float] = (1.0, 1.0)) -> float:
    """Posterior probability that the treatment's mean is higher than the control's.

    0/1 metrics use Beta posteriors (``prior`` = Beta(a, b)) and the exact sum of
    Evan Miller's closed form; other metrics a normal approximation with a flat prior.

        >>> round(prob_beat_control(Sample.from_counts("A", 100, 1000), Sample.from_counts("B", 130, 1000)), 3)
        0.982
    """
    a, b = control, treatment
    if a.successes is None or b.successes is None:
        se = math.sqrt(a.sem2 + b.sem2)
        return 0.5 if se == 0 else float(st.norm.cdf((b.mean - a.mean) / se))
    alpha_a, beta_a = prior[0] + a.successes, prior[1] + a.n - a.successes
    alpha_b, beta_b = prior[0] + b.successes, prior[1] + b.n - b.successes
    if float(alpha_b).is_integer() and alpha_b <= 1_000_000:
        i = np.arange(int(alpha_b), dtype=np.float64)
        terms = (special.betaln(alpha_a + i, beta_a + beta_b) - np.log(beta_b + i)
                 - special.betaln(1 + i, beta_b) - special.betaln(alpha_a, beta_a))
        return float(min(1.0, max(0.0, np.exp(terms).sum())))
    ma, mb = alpha_a / (alpha_a + beta_a), alpha_b / (alpha_b + beta_b)
    va = ma * (1 - ma) / (alpha_a + beta_a + 1)
    vb = mb * (1 - mb) / (alpha_b + beta_b + 1)
    return float(st.norm.cdf((mb - ma) / math.sqrt(va + vb)))


# ---- multiple testing --------------------------------------------------------------------------

#: The corrections an experiment can apply across its comparisons (treatments × metrics).
CORRECTIONS = ("holm", "bh", "none")


def _p_values(p_values: ArrayLike) -> NDArray[np.float64]:
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim == 0:
        p = p.reshape(1)
    if not np.all((p >= 0) & (p <= 1)):  # NaN fails this too
        raise InputError("p_values", "must all be numbers between 0 and 1", p.tolist())
    return p


def holm(p_values: ArrayLike) -> NDArray[np.float64]:
    """Holm's step-down adjusted p-values, controlling the family-wise error rate, on the last axis.

    The i-th smallest of m p-values is multiplied by ``m − i + 1``, then a running maximum
    keeps the order, and the result is capped at 1: reject where the adjusted value is
    below alpha. Valid under any dependence between the tests; uniformly more powerful
    than Bonferroni. Equal to statsmodels' ``multipletests(p, method="holm")[1]``; a
    two-dimensional input adjusts each row (one family per row).

        >>> holm([0.01, 0.04, 0.03, 0.005]).round(6).tolist()
        [0.03, 0.06, 0.06, 0.02]
    """
    p = _p_values(p_values)
    m = p.shape[-1]
    order = np.argsort(p, axis=-1, kind="stable")
    ranked = np.take_along_axis(p, order, axis=-1) * (m - np.arange(m))
    ranked = np.minimum(1.0, np.maximum.accumulate(ranked, axis=-1))
    out = np.empty_like(p)
    np.put_along_axis(out, order, ranked, axis=-1)
    return out


def benjamini_hochberg(p_values: ArrayLike) -> NDArray[np.float64]:
    """Benjamini–Hochberg adjusted p-values ("q-values"), controlling the false discovery rate, on the last axis.

    The i-th smallest of m p-values is multiplied by ``m / i``, then a running minimum
    from the largest down keeps the order, and the result is capped at 1. It controls
    the expected share of false discoveries among the rejections (for independent or
    positively dependent tests); when every hypothesis is null that is the family-wise
    rate. Equal to statsmodels' ``multipletests(p, method="fdr_bh")[1]``.

        >>> benjamini_hochberg([0.01, 0.04, 0.03, 0.005]).round(6).tolist()
        [0.02, 0.04, 0.04, 0.02]
    """
    p = _p_values(p_values)
    m = p.shape[-1]
    order = np.argsort(p, axis=-1, kind="stable")
    ranked = np.take_along_axis(p, order, axis=-1) * (m / np.arange(1, m + 1))
    ranked = np.minimum(1.0, np.flip(np.minimum.accumulate(np.flip(ranked, axis=-1), axis=-1), axis=-1))
    out = np.empty_like(p)
    np.put_along_axis(out, order, ranked, axis=-1)
    return out


def check_correction(correction: str) -> str:
    """``correction`` when it is one of :data:`CORRECTIONS`; an :class:`InputError` naming the field otherwise."""
    if correction not in CORRECTIONS:
        raise InputError("correction", f"must be one of {', '.join(CORRECTIONS)}", correction)
    return correction


def adjust_p_values(p_values: ArrayLike, correction: str) -> NDArray[np.float64]:
    """The p-values adjusted by ``correction``: ``holm`` (:func:`holm`), ``bh`` (:func:`benjamini_hochberg`)
    or ``none`` (unchanged).

        >>> adjust_p_values([0.02, 0.03], "bh").round(6).tolist(), adjust_p_values([0.02, 0.03], "none").tolist()
        ([0.03, 0.03], [0.02, 0.03])
    """
    check_correction(correction)
    if correction == "holm":
        return holm(p_values)
    if correction == "bh":
        return benjamini_hochberg(p_values)
    return _p_values(p_values).copy()
