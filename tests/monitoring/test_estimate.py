"""Confidence-based estimation: the estimate against labels drawn from calibrated (and miscalibrated) models."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from modelmill.errors import InputError
from modelmill.monitoring.estimate import estimate, expected_log_losses, is_worse
from modelmill.monitoring.performance import classification_metrics

METRICS = ("accuracy", "auc", "log_loss")


def _covered(truth: str, seeds: int = 50, n: int = 2000) -> dict[str, int]:
    """In how many of ``seeds`` windows each metric's realised value lies in the estimate's interval, when
    the labels follow ``truth`` given the model's probability: "calibrated" (y ~ Bernoulli(p)) or
    "overconfident" (the model says p where the truth is halfway to 0.5)."""
    hits = dict.fromkeys(METRICS, 0)
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        p = rng.beta(2, 3, size=n)
        chance = p if truth == "calibrated" else (p + 0.5) / 2
        y = (rng.random(n) < chance).astype(np.float64)
        realised = classification_metrics(y, p)
        est = estimate(p, seed=seed)
        for m in METRICS:
            e = est.metrics[m]
            assert e.low is not None and e.high is not None
            hits[m] += e.low <= realised[m] <= e.high
    return hits


def test_a_calibrated_models_realised_metrics_fall_in_the_interval_in_most_windows() -> None:
    hits = _covered("calibrated")
    # a 90% interval: about 45 of 50; 40 leaves room for chance, not for a biased estimate
    assert all(h >= 40 for h in hits.values()), hits


def test_an_overconfident_models_realised_metrics_fall_outside_it() -> None:
    """The assumption is calibration: when it is broken the estimate is wrong, and the test above could fail."""
    hits = _covered("overconfident", seeds=10)
    assert hits["log_loss"] == 0 and hits["accuracy"] <= 2, hits


def test_accuracy_and_log_loss_are_the_exact_expectations_and_auc_the_expected_auc() -> None:
    """On 8 rows every one of the 256 label vectors is enumerated with its probability."""
    p = np.array([0.05, 0.2, 0.35, 0.5, 0.6, 0.7, 0.85, 0.95])
    want = dict.fromkeys(METRICS, 0.0)
    auc_mass = 0.0
    for labels in itertools.product((0.0, 1.0), repeat=p.size):
        y = np.array(labels)
        weight = float(np.prod(np.where(y == 1, p, 1 - p)))
        m = classification_metrics(y, p)
        want["accuracy"] += weight * m["accuracy"]
        want["log_loss"] += weight * m["log_loss"]
        if 0 < y.sum() < y.size:
            want["auc"] += weight * m["auc"]
            auc_mass += weight
    want["auc"] /= auc_mass  # the AUC of a draw with one class only is undefined: expected over the others
    est = estimate(p, samples=20000)
    assert est.metrics["accuracy"].value == pytest.approx(want["accuracy"], abs=1e-12)
    assert est.metrics["log_loss"].value == pytest.approx(want["log_loss"], abs=1e-12)
    assert est.metrics["auc"].value == pytest.approx(want["auc"], abs=0.01)
    assert expected_log_losses(p).mean() == pytest.approx(want["log_loss"], abs=1e-12)


def test_the_same_window_and_seed_give_the_same_estimate_and_another_seed_another_auc() -> None:
    p = np.random.default_rng(3).uniform(size=500)
    assert estimate(p, seed=1) == estimate(p, seed=1)
    assert estimate(p, seed=1).metrics["auc"] != estimate(p, seed=2).metrics["auc"]


def test_the_estimate_does_not_depend_on_the_order_of_the_rows() -> None:
    # a fleet's log comes back in its hosts' file order, a single host's in another: the same window, one answer
    p = np.random.default_rng(4).uniform(size=500)
    assert estimate(p) == estimate(np.random.default_rng(5).permutation(p)) == estimate(p[::-1])


def test_the_threshold_decides_what_counts_as_a_positive_prediction() -> None:
    p = np.array([0.3, 0.3, 0.3])
    assert estimate(p).metrics["accuracy"].value == pytest.approx(0.7)
    assert estimate(p, threshold=0.2).metrics["accuracy"].value == pytest.approx(0.3)


def test_no_predictions_or_outputs_that_are_not_probabilities_are_no_data() -> None:
    empty = estimate(np.array([]))
    assert (empty.status, empty.n, empty.metrics) == ("no_data", 0, {})
    odd = estimate(np.array([0.2, 1.5, np.nan, 0.4]))
    assert odd.status == "no_data" and odd.reason == "2 of 4 outputs are not probabilities in [0, 1]"
    assert odd.value("auc") is None


def test_one_row_has_no_auc_but_an_accuracy_and_a_loss() -> None:
    est = estimate(np.array([0.9]))
    assert est.status == "estimated" and est.value("auc") is None
    assert est.value("accuracy") == pytest.approx(0.9)


def test_the_calibration_error_given_is_carried_to_the_json() -> None:
    d = estimate(np.array([0.2, 0.8]), calibration_error=0.031).as_dict()
    assert d["calibration_error"] == 0.031 and set(d["metrics"]) == set(METRICS)
    assert set(d["metrics"]["auc"]) == {"value", "low", "high"}


@pytest.mark.parametrize("kwargs", [{"samples": 1}, {"level": 1.0}, {"threshold": 0.0}])
def test_bad_settings_are_refused_naming_the_field(kwargs: dict[str, float]) -> None:
    with pytest.raises(InputError) as info:
        estimate(np.array([0.5]), **kwargs)  # type: ignore[arg-type]
    assert info.value.field == next(iter(kwargs))


def test_worse_is_lower_except_for_the_log_loss() -> None:
    assert is_worse("auc", 0.6, 0.7, 0.05) and not is_worse("auc", 0.66, 0.7, 0.05)
    assert is_worse("log_loss", 0.8, 0.7, 0.05) and not is_worse("log_loss", 0.6, 0.7, 0.05)
    assert not is_worse("auc", float("nan"), 0.7, 0.05)
