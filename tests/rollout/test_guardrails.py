"""The guardrail checks on their own: each verdict, each boundary, and what a rollout's history records.

Written against what mutation testing (``make mutation``) found untested in ``rollout/guardrails.py``; each test
states a promise of the module's docstring (docs/mutation.md lists the mutants left and why they cannot matter).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as st
from statsmodels.stats.proportion import proportions_ztest

from modelmill.errors import InputError
from modelmill.rollout.guardrails import (
    CHECKS,
    Breach,
    Guardrails,
    Observation,
    Verdict,
    _one_sided_worse,
    check,
    evaluate,
)

ONLY_ERRORS = Guardrails(max_latency_ratio=None, max_output_shift=None, max_label_loss_increase=None)
ONLY_LATENCY = Guardrails(max_error_rate_increase=None, max_output_shift=None, max_label_loss_increase=None)
ONLY_SHIFT = Guardrails(max_error_rate_increase=None, max_latency_ratio=None, max_label_loss_increase=None)
ONLY_LABELS = Guardrails(max_error_rate_increase=None, max_latency_ratio=None, max_output_shift=None)


def _one(candidate: Observation, baseline: Observation, g: Guardrails) -> Verdict:
    (verdict,) = check(candidate, baseline, g)
    return verdict


@pytest.mark.parametrize(("x_c", "n_c", "x_b", "n_b"), [
    (12, 100, 0, 1000), (5, 200, 3, 300), (40, 1000, 10, 1000), (1, 60, 2, 500), (3, 50, 3, 50), (0, 80, 4, 90),
])
def test_the_error_p_value_is_the_one_sided_pooled_z_test(x_c: int, n_c: int, x_b: int, n_b: int) -> None:
    _, reference = proportions_ztest([x_c, x_b], [n_c, n_b], alternative="larger")
    assert _one_sided_worse(x_c, n_c, x_b, n_b) == pytest.approx(float(reference), rel=1e-9)


def test_errors_against_a_baseline_that_served_nothing_are_significant() -> None:
    g = Guardrails(min_errors=1, max_latency_ratio=None, max_output_shift=None, max_label_loss_increase=None)
    one = _one(Observation(requests=50, errors=1), Observation(requests=0), g)
    assert one.status == "fail" and one.breach is not None and "one-sided p=0" in one.message
    # no errors against nothing: not a failure, and no verdict either
    none = _one(Observation(requests=50, errors=0), Observation(requests=0), g)
    assert (none.status, none.message) == ("no_data", "error_rate: 0 of the 50 baseline requests it needs")


def test_an_error_rate_failure_records_the_rates_the_limit_and_the_counts() -> None:
    cand, base = Observation(requests=100, errors=12), Observation(requests=1000, errors=10)
    verdict = _one(cand, base, ONLY_ERRORS)
    p = _one_sided_worse(12, 100, 10, 1000)
    assert verdict == Verdict("error_rate", "fail", verdict.message, verdict.breach)
    assert verdict.breach == Breach("error_rate", 0.12, 0.01, pytest.approx(0.02),
                                    f"error rate 12.00% against 1.00% (12/100, one-sided p={p:.2g})")
    assert verdict.message == verdict.breach.message
    assert verdict.as_dict() == {"check": "error_rate", "status": "fail", "message": verdict.breach.message}
    assert evaluate(cand, base, ONLY_ERRORS) == [verdict.breach]


def test_a_significant_rise_no_larger_than_the_allowed_increase_passes() -> None:
    # 5.0% against 4.5% over 100 000 requests each is significant, but under the 1-point increase allowed
    cand, base = Observation(requests=100_000, errors=5_000), Observation(requests=100_000, errors=4_500)
    assert _one_sided_worse(5_000, 100_000, 4_500, 100_000) < 1e-6
    verdict = _one(cand, base, ONLY_ERRORS)
    assert verdict == Verdict("error_rate", "pass", "error rate 5.00% against 4.50%")
    # exactly the allowed increase is not "more than" it
    exact = _one(Observation(requests=1000, errors=500), Observation(requests=1000, errors=250),
                 Guardrails(max_error_rate_increase=0.25, max_latency_ratio=None, max_output_shift=None,
                            max_label_loss_increase=None))
    assert exact.status == "pass"


def test_exactly_min_errors_is_enough_for_an_early_failure() -> None:
    # 3 errors in 20 requests: short of the 50-request sample, but the errors already are a verdict
    verdict = _one(Observation(requests=20, errors=3), Observation(requests=1000, errors=0), ONLY_ERRORS)
    assert verdict.status == "fail"
    two = _one(Observation(requests=20, errors=2), Observation(requests=1000, errors=0), ONLY_ERRORS)
    assert (two.status, two.message) == ("no_data", "error_rate: 20 of the 50 candidate requests it needs")


def test_a_p_value_equal_to_the_significance_level_is_not_significant() -> None:
    p = _one_sided_worse(12, 100, 4, 100)
    g = Guardrails(significance=p, max_latency_ratio=None, max_output_shift=None, max_label_loss_increase=None)
    assert 0 < p < 1 and _one(Observation(requests=100, errors=12), Observation(requests=100, errors=4), g).status \
        == "pass"


def test_latency_limit_is_ratio_times_baseline_p95_plus_slack_and_reaching_it_passes() -> None:
    base = Observation(requests=100, latencies_ms=np.full(100, 10.0))
    at_limit = _one(Observation(requests=100, latencies_ms=np.full(100, 20.0)), base, ONLY_LATENCY)
    assert at_limit == Verdict("latency_p95", "pass", "latency p95 20.0 ms against the limit 20.0 ms")
    over = _one(Observation(requests=100, latencies_ms=np.full(100, 20.5)), base, ONLY_LATENCY)
    assert over.status == "fail" and over.message == "latency p95 20.5 ms above the limit 20.0 ms"
    assert over.breach == Breach("latency_p95", 20.5, 10.0, 20.0, over.message)
    assert over.as_dict() == {"check": "latency_p95", "status": "fail", "message": over.message}


def test_short_samples_answer_no_data_saying_what_is_lacking() -> None:
    few = Observation(requests=10, errors=0, latencies_ms=np.ones(10), outputs=np.ones(10), label_losses=np.ones(10))
    many = Observation(requests=100, errors=0, latencies_ms=np.ones(100), outputs=np.ones(100),
                       label_losses=np.ones(100))
    assert [v.as_dict() for v in check(few, many, Guardrails())] == [
        {"check": "error_rate", "status": "no_data", "message": "error_rate: 10 of the 50 candidate requests it needs"},
        {"check": "latency_p95", "status": "no_data",
         "message": "latency_p95: 10 of the 50 latencies per variant it needs"},
        {"check": "output_shift", "status": "no_data",
         "message": "output_shift: 10 of the 50 outputs per variant it needs"},
        {"check": "label_loss", "status": "no_data",
         "message": "label_loss: 10 of the 50 labelled requests per variant it needs"},
    ]
    assert check(many, few, Guardrails())[0].message == "error_rate: 10 of the 50 baseline requests it needs"
    assert [v.check for v in check(many, many, Guardrails())] == list(CHECKS)
    assert evaluate(few, many, Guardrails()) == []


def test_output_shift_needs_a_distance_above_the_limit_and_significance_both() -> None:
    rng = np.random.default_rng(7)
    base = Observation(requests=20_000, outputs=rng.uniform(0, 1, 20_000))
    # a small shift over many outputs is significant, but no larger than the allowed distance
    slight = _one(Observation(requests=20_000, outputs=rng.uniform(0.05, 1.05, 20_000)), base, ONLY_SHIFT)
    assert slight.status == "pass" and slight.message.startswith("KS distance of outputs 0.0")
    # a distance of exactly the limit is not above it
    c, b = np.arange(100.0), np.arange(50.0, 150.0)
    ks = st.ks_2samp(c, b)
    assert ks.statistic == 0.5 and ks.pvalue < 1e-6
    exact = Guardrails(max_output_shift=0.5, max_error_rate_increase=None, max_latency_ratio=None,
                       max_label_loss_increase=None)
    assert _one(Observation(requests=100, outputs=c), Observation(requests=100, outputs=b), exact) == \
        Verdict("output_shift", "pass", "KS distance of outputs 0.500")
    failed = _one(Observation(requests=100, outputs=c), Observation(requests=100, outputs=b), ONLY_SHIFT)
    assert (failed.check, failed.status) == ("output_shift", "fail") and failed.message.startswith("prediction distribution shifted: KS distance 0.500")
    assert failed.breach == Breach("output_shift", 0.5, 0.0, 0.2, failed.message)
    # a p-value equal to the significance level is not significant
    at_p = Guardrails(significance=float(ks.pvalue), max_error_rate_increase=None, max_latency_ratio=None,
                      max_label_loss_increase=None)
    assert _one(Observation(requests=100, outputs=c), Observation(requests=100, outputs=b), at_p).status == "pass"


def test_label_loss_fails_on_a_significant_rise_above_the_allowed_increase_only() -> None:
    rng = np.random.default_rng(11)
    base_losses = rng.normal(0.30, 0.05, 400)
    base = Observation(requests=400, label_losses=base_losses)
    worse = _one(Observation(requests=400, label_losses=base_losses + 0.05), base, ONLY_LABELS)
    assert (worse.check, worse.status) == ("label_loss", "fail") and worse.breach is not None
    assert worse.message == worse.breach.message and worse.breach.check == "label_loss"
    assert worse.breach.candidate == pytest.approx(base_losses.mean() + 0.05)
    assert worse.breach.baseline == pytest.approx(base_losses.mean())
    assert worse.breach.limit == pytest.approx(base_losses.mean() + 0.02)
    assert worse.message.startswith(f"loss on delayed labels {base_losses.mean() + 0.05:.4f} against "
                                    f"{base_losses.mean():.4f} (p=")
    # significant, but within the allowed increase
    slight = _one(Observation(requests=400, label_losses=base_losses + 0.015), base, ONLY_LABELS)
    assert slight == Verdict("label_loss", "pass", f"loss on delayed labels {base_losses.mean() + 0.015:.4f} "
                                                   f"against {base_losses.mean():.4f}")
    # above the allowed increase, but noise: not significant
    noisy = rng.normal(0.30, 2.0, 60)
    assert _one(Observation(requests=60, label_losses=noisy + 0.03),
                Observation(requests=60, label_losses=rng.normal(0.30, 2.0, 60)), ONLY_LABELS).status == "pass"
    # constant losses (no variance; binary fractions, so the variance is exactly 0): any rise above the
    # allowance is a failure, none is a pass
    flat = Observation(requests=100, label_losses=np.full(100, 0.25))
    assert _one(Observation(requests=100, label_losses=np.full(100, 0.5)), flat, ONLY_LABELS).status == "fail"
    assert _one(flat, flat, ONLY_LABELS).status == "pass"
    # exactly the allowed increase is not "more than" it
    allowance = Guardrails(max_label_loss_increase=0.25, max_error_rate_increase=None, max_latency_ratio=None,
                           max_output_shift=None)
    assert _one(Observation(requests=100, label_losses=np.full(100, 0.5)),
                Observation(requests=100, label_losses=np.full(100, 0.25)), allowance).status == "pass"


def test_the_observed_summary_reports_no_latency_and_no_loss_as_none() -> None:
    empty = Observation(requests=0)
    assert empty.summary() == {"requests": 0, "errors": 0, "error_rate": 0.0, "latency_p95_ms": None,
                               "labeled": 0, "label_loss": None}
    full = Observation(requests=4, errors=1, latencies_ms=np.array([1.0, 2.0, 3.0, 4.0]),
                       label_losses=np.array([0.5, 1.5]))
    assert full.summary() == {"requests": 4, "errors": 1, "error_rate": 0.25,
                              "latency_p95_ms": pytest.approx(3.85), "labeled": 2, "label_loss": 1.0}


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5])
def test_a_significance_outside_zero_and_one_is_refused(bad: float) -> None:
    with pytest.raises(InputError) as info:
        Guardrails(significance=bad)
    assert (info.value.field, info.value.problem, info.value.value) == ("guardrails.significance",
                                                                        "must lie strictly between 0 and 1", bad)


@pytest.mark.parametrize("settings", [{"min_samples": 0}, {"min_errors": 0}])
def test_a_minimum_below_one_is_refused(settings: dict[str, int]) -> None:
    with pytest.raises(InputError) as info:
        Guardrails(**settings)
    assert (info.value.field, info.value.problem) == ("guardrails.min_samples",
                                                      "min_samples and min_errors must be at least 1")
    assert Guardrails(min_samples=1, min_errors=1).as_dict()["min_samples"] == 1
