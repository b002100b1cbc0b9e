"""Metrics from logs: proportions, means, ratio metrics with the delta method."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from modelmill.errors import InputError
from modelmill.experiments import mean, proportion, ratio, summarize


def test_ratio_with_unit_denominators_is_the_mean() -> None:
    rng = np.random.default_rng(1)
    y = rng.normal(3, 2, size=500)
    r, m = ratio("r", y, np.ones_like(y)), mean("m", y)
    assert r.mean == pytest.approx(m.mean)
    assert r.variance == pytest.approx(m.variance, rel=1e-9)


def test_delta_method_variance_matches_simulation() -> None:
    """The delta-method standard error agrees with the spread of the ratio over 2,000 replicated logs."""
    rng = np.random.default_rng(2)
    units, reps = 400, 2000
    impressions = rng.poisson(8, size=(reps, units)) + 1
    user_ctr = rng.beta(0.5, 7, size=(reps, units))  # users differ: clicks within a user are correlated
    clicks = rng.binomial(impressions, user_ctr)
    ratios = clicks.sum(axis=1) / impressions.sum(axis=1)
    empirical = ratios.std(ddof=1)
    estimated = np.array([ratio("r", clicks[i], impressions[i]).sem2 for i in range(0, reps, 40)]) ** 0.5
    assert float(np.median(estimated)) == pytest.approx(empirical, rel=0.08)
    # Treating impressions as independent understates the error: the reason ratio metrics exist.
    naive = proportion("p", np.repeat([1, 0], [clicks[0].sum(), impressions[0].sum() - clicks[0].sum()]))
    assert naive.sem2**0.5 < 0.9 * empirical


def test_summarize_kinds_and_errors() -> None:
    df = pd.DataFrame({"v": ["A", "A", "B", "B", "B"], "u": ["1", "1", "2", "3", "3"],
                       "y": [1, 0, 1, 1, 0], "rev": [1.5, 0, 2, 3, 4]})
    a, b = summarize(df, variant_column="v", metric="y")
    assert (a.successes, a.n, b.successes, b.n) == (1, 2, 2, 3)
    a, b = summarize(df, variant_column="v", metric="rev")
    assert a.successes is None and b.mean == pytest.approx(3.0)
    a, b = summarize(df, variant_column="v", metric="y", unit_column="u")
    assert (a.n, a.mean, b.n, b.mean) == (1, 0.5, 2, pytest.approx(2 / 3))
    with pytest.raises(InputError, match="not in the input"):
        summarize(df, variant_column="v", metric="nope")
    bad = df.assign(u=["1", "2", "2", "3", "3"])
    with pytest.raises(InputError, match="more than one variant"):
        summarize(bad, variant_column="v", metric="y", unit_column="u")
    with pytest.raises(InputError, match="numeric"):
        summarize(df.assign(y=["x", 0, 1, 1, 0]), variant_column="v", metric="y")
    with pytest.raises(InputError, match="0/1"):
        proportion("p", [0.5, 1])


def test_served_values_score_each_request_from_output_and_label() -> None:
    from modelmill.experiments.metrics import served_values
    from modelmill.monitoring import classification_metrics

    rng = np.random.default_rng(4)
    p = rng.uniform(size=300)
    p[:3] = (0.5, 0.4999, 0.5001)  # the threshold itself counts as class 1
    y = (rng.uniform(size=300) < p).astype(float)
    frame = pd.DataFrame({"output": p, "label": y, "latency_ms": rng.uniform(size=300)})
    whole = classification_metrics(y, p)
    for metric in ("accuracy", "log_loss", "brier"):
        assert served_values(frame, metric).mean() == pytest.approx(whole[metric], rel=1e-12), metric
    assert served_values(frame, "accuracy")[:3].tolist() == [float(y[0] == 1), float(y[1] == 0), float(y[2] == 1)]
    assert served_values(frame, "conversion").tolist() == y.tolist()
    assert served_values(frame, "latency_ms").equals(frame["latency_ms"])
    with pytest.raises(InputError, match="accuracy needs 0/1 labels"):
        served_values(frame.assign(label=frame["label"] * 2), "accuracy")
    with pytest.raises(InputError, match="is not measured for a served model"):
        served_values(frame, "auc")
