"""The exact promises of the ``estimated_loss`` guardrail and the label-loss bound, through the real ``check``.

Each test pins one promise the mutation run of ``rollout/guardrails.py`` found unchecked (docs/mutation.md):
the one-sided bound against an independent recomputation (scipy's binary entropy and standard errors), the
boundaries at ``min_samples`` and at the allowed increase, which outputs are probabilities (0 and 1 are, -0.5,
1.5, NaN and inf are not, counted in both variants), and the verdict's name and message.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from scipy import stats as st

from modelmill.rollout import Guardrails, Observation, check

#: Every check off but the estimate; ``label_loss`` off too, so labels never make the estimate step aside.
ONLY: dict[str, Any] = {"max_error_rate_increase": None, "max_latency_ratio": None, "max_output_shift": None,
                        "max_label_loss_increase": None}


def _estimated(cand: Any, base: Any, *, c_labels: int = 0, b_labels: int = 0, **kw: Any) -> Any:
    """The ``estimated_loss`` verdict on two variants' outputs (and as many label losses as asked)."""
    g = Guardrails(**{**ONLY, "max_estimated_loss_increase": 0.02, **kw})
    c = Observation(requests=len(cand), outputs=np.asarray(cand, dtype=float),
                    label_losses=np.full(c_labels, 0.3))
    b = Observation(requests=len(base), outputs=np.asarray(base, dtype=float),
                    label_losses=np.full(b_labels, 0.3))
    [v] = [v for v in check(c, b, g) if v.check == "estimated_loss"]
    return v


def _unsure(n: int) -> Any:
    """A candidate unsure of everything (entropy near log 2) against a confident production: clearly worse."""
    rng = np.random.default_rng(3)
    return rng.uniform(0.4, 0.6, size=n), rng.beta(0.5, 0.5, size=n)


def _bound(cand: Any, base: Any, significance: float = 0.05) -> float:
    """The one-sided lower bound of the candidate's expected log loss minus production's, recomputed apart:
    each row's loss is the binary entropy of its probability (scipy), the standard error scipy's ``sem``."""
    hc = np.array([st.entropy([p, 1 - p]) for p in cand])
    hb = np.array([st.entropy([p, 1 - p]) for p in base])
    se = math.hypot(st.sem(hc), st.sem(hb))
    return float(hc.mean() - hb.mean() - st.norm.isf(significance) * se)


# -- the one-sided bound --------------------------------------------------------------------------------------


def test_the_bound_is_the_normal_one_sided_bound_of_the_difference() -> None:
    """Five outputs a variant: the standard error is each variant's sample variance (n - 1) over its size."""
    cand, base = [0.35, 0.5, 0.45, 0.6, 0.4], [0.05, 0.9, 0.2, 0.97, 0.1]
    low = _bound(cand, base)
    assert low > 0.02
    v = _estimated(cand, base, min_samples=5)
    assert v.status == "fail" and f"at least {low:+.4f} by the one-sided 95% bound" in v.message, v.message
    # the bound decides: an allowed increase just under it fails, one just over it passes
    assert _estimated(cand, base, min_samples=5, max_estimated_loss_increase=low - 1e-6).status == "fail"
    assert _estimated(cand, base, min_samples=5, max_estimated_loss_increase=low + 1e-6).status == "pass"


def test_each_variants_spread_counts_in_the_bound() -> None:
    """The candidate's and production's sample variances each widen the bound: one variant spread, the other
    constant, the candidate worse either way."""
    unsure, sure = [0.3, 0.5, 0.2, 0.45, 0.35], [0.02, 0.1, 0.05, 0.97, 0.9]
    for cand, base in ((unsure, [0.02] * 5), ([0.4] * 5, sure)):
        low = _bound(cand, base)
        assert low > 0
        v = _estimated(cand, base, min_samples=5, max_estimated_loss_increase=low - 1e-6)
        assert v.status == "fail" and f"at least {low:+.4f}" in v.message, v.message
        assert _estimated(cand, base, min_samples=5, max_estimated_loss_increase=low + 1e-6).status == "pass"


def test_the_bound_names_its_confidence() -> None:
    cand, base = _unsure(200)
    assert "by the one-sided 95% bound)" in _estimated(cand, base).message
    v = _estimated(cand, base, significance=0.1)
    assert f"at least {_bound(cand, base, 0.1):+.4f} by the one-sided 90% bound)" in v.message, v.message


def test_a_bound_exactly_at_the_allowed_increase_is_not_a_breach() -> None:
    """Identical constant outputs: the difference and its standard error are exactly 0, so the bound is 0; with
    no increase allowed it must lie *above* 0 to fail."""
    same = np.full(50, 0.5)
    v = _estimated(same, same, max_estimated_loss_increase=0.0)
    assert v.status == "pass" and v.breach is None, v.message
    assert "at least +0.0000" in v.message


def test_a_failing_verdict_is_named_and_carries_the_breach_message() -> None:
    cand, base = _unsure(200)
    v = _estimated(cand, base)
    assert v.check == "estimated_loss" and v.status == "fail"
    assert v.breach is not None and v.breach.check == "estimated_loss"
    assert v.message == v.breach.message
    assert v.message.startswith("estimated log loss ") and v.message.endswith(", above the allowed increase 0.02")
    assert v.as_dict() == {"check": "estimated_loss", "status": "fail", "message": v.breach.message}


# -- min_samples and the labels' hand-over -------------------------------------------------------------------


def test_exactly_min_samples_outputs_are_judged_and_one_fewer_are_no_data() -> None:
    cand, base = _unsure(50)
    assert _estimated(cand, base).status == "fail"
    short = _estimated(cand[:49], base[:49])
    assert short.status == "no_data"
    assert short.message == "estimated_loss: 49 of the 50 outputs per variant it needs"


def test_exactly_min_samples_labels_hand_the_loss_to_label_loss() -> None:
    cand, base = _unsure(200)
    v = _estimated(cand, base, c_labels=50, b_labels=60, max_label_loss_increase=0.02)
    assert v.status == "pass"
    assert v.message == "labels have arrived (50 per variant): label_loss judges the loss"
    # one label fewer in one variant: the estimate still judges, and the candidate is clearly worse
    assert _estimated(cand, base, c_labels=49, b_labels=60, max_label_loss_increase=0.02).status == "fail"


def test_labels_hand_over_only_when_label_loss_is_on() -> None:
    """Enough labels with ``label_loss`` off: nothing else judges the loss, so the estimate still does."""
    cand, base = _unsure(200)
    v = _estimated(cand, base, c_labels=200, b_labels=200, max_label_loss_increase=None)
    assert v.status == "fail", v.message


def test_label_loss_on_without_labels_leaves_the_estimate_to_judge() -> None:
    cand, base = _unsure(200)
    v = _estimated(cand, base, max_label_loss_increase=0.02)
    assert v.status == "fail" and "above the allowed increase" in v.message, v.message


# -- what is a probability ------------------------------------------------------------------------------------


def test_outputs_of_exactly_0_and_1_are_probabilities() -> None:
    outputs = np.r_[np.zeros(10), np.ones(10), np.linspace(0.05, 0.95, 40)]
    for cand, base in ((outputs, outputs[::-1]), (outputs[10:], outputs), (outputs, outputs[10:])):
        v = _estimated(cand, base, max_estimated_loss_increase=1.0)
        assert v.status == "pass" and v.message.startswith("estimated log loss "), v.message


@pytest.mark.parametrize(("cand_odd", "base_odd", "count"), [
    ([-0.5], [], 1),
    ([1.5], [], 1),
    ([math.nan], [], 1),
    ([math.inf, -math.inf], [], 2),
    ([], [-0.5], 1),
    ([], [1.5], 1),
    ([], [math.nan], 1),
    ([], [-0.5, 1.5, 2.5], 3),
    ([1.5], [-0.5], 2),
    ([1.5, 3.0], [-0.5], 3),
], ids=["cand-negative", "cand-above-1", "cand-nan", "cand-inf", "base-negative", "base-above-1", "base-nan",
        "base-three", "one-each", "two-and-one"])
def test_outputs_outside_0_1_in_either_variant_are_counted_and_no_data(
        cand_odd: list[float], base_odd: list[float], count: int) -> None:
    fine = np.linspace(0.05, 0.95, 60)
    v = _estimated(np.r_[fine, cand_odd], np.r_[fine, base_odd])
    assert v.status == "no_data" and v.breach is None
    assert v.message == (f"estimated_loss: {count} outputs are not probabilities in [0, 1] (the check is for "
                         "calibrated binary classifiers)")


# -- the label-loss check's standard error -------------------------------------------------------------------


@pytest.mark.parametrize("spread_in", ["candidate", "baseline"])
def test_the_label_loss_p_value_uses_each_variants_sample_variance(spread_in: str) -> None:
    """Four labelled requests a variant: the p-value is the one-sided normal test of the difference of means
    with each variant's unbiased variance (Welch's statistic, scipy), and it decides at the significance."""
    spread, other = np.array([0.2, 0.6, 0.4, 0.9]), np.array([0.12, 0.1, 0.1, 0.08])
    lc, lb = (spread, other + 0.15) if spread_in == "candidate" else (other + 0.45, spread - 0.2)
    z = st.ttest_ind(lc, lb, equal_var=False).statistic
    p = float(st.norm.sf(z))
    assert 0.001 < p < 0.2

    def label_loss(significance: float) -> Any:
        g = Guardrails(**{**ONLY, "max_label_loss_increase": 0.02}, min_samples=4, significance=significance)
        [v] = check(Observation(requests=4, label_losses=lc), Observation(requests=4, label_losses=lb), g)
        return v

    v = label_loss(p * 1.001)
    assert v.check == "label_loss" and v.status == "fail", v.message
    assert f"(p={p:.2g})" in v.message
    assert label_loss(p * 0.999).status == "pass"
