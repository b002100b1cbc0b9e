"""Decisions: keep the control, switch to the treatment, or continue, each with its reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from modelmill.errors import InputError
from modelmill.experiments import Sample, analyze_frame, decide, sequential_test, ztest
from modelmill.experiments.metrics import direction_of

OBD = Path(__file__).resolve().parent.parent / "data" / "obd" / "clicks.csv.gz"
KEYS = ["test", "metric", "direction", "control", "treatment", "statistic", "p_value", "p_adjusted", "correction",
        "lift_abs", "lift_rel", "ci_abs", "alpha",
        "srm_p_value", "decision", "reason"]


def _frame(rates: dict[str, tuple[int, int]]) -> pd.DataFrame:
    rows = [(v, 1) for v, (x, n) in rates.items() for _ in range(x)]
    rows += [(v, 0) for v, (x, n) in rates.items() for _ in range(n - x)]
    return pd.DataFrame(rows, columns=["arm", "click"])


def test_obd_needs_more_data() -> None:
    df = pd.read_csv(OBD)
    out = analyze_frame(df, variant_column="policy", metric="click", control="random").as_dict()
    assert list(out) == KEYS
    assert out["test"] == "ztest" and out["control"] == {"name": "random", "n": 10_000, "mean": 0.0038}
    assert out["decision"] == "continue" and "below the planned" in out["reason"]
    assert out["srm_p_value"] == pytest.approx(1.0)


def test_decisions() -> None:
    big = analyze_frame(_frame({"A": (1000, 10_000), "B": (1200, 10_000)}), variant_column="arm",
                        metric="click", min_sample_size=5000).as_dict()
    assert big["decision"] == "switch_to_treatment" and big["lift_abs"] == pytest.approx(0.02)
    worse = analyze_frame(_frame({"A": (1200, 10_000), "B": (1000, 10_000)}), variant_column="arm",
                          metric="click", min_sample_size=5000).as_dict()
    assert worse["decision"] == "keep_control" and "worse" in worse["reason"]
    flat = analyze_frame(_frame({"A": (1000, 10_000), "B": (1010, 10_000)}), variant_column="arm",
                         metric="click", min_sample_size=5000).as_dict()
    assert flat["decision"] == "keep_control" and "no significant" in flat["reason"]
    early = analyze_frame(_frame({"A": (1000, 10_000), "B": (1200, 10_000)}), variant_column="arm",
                          metric="click", min_sample_size=50_000).as_dict()
    assert early["decision"] == "continue"
    lower = analyze_frame(_frame({"A": (1000, 10_000), "B": (1200, 10_000)}), variant_column="arm",
                          metric="click", min_sample_size=5000, higher_is_better=False).as_dict()
    assert lower["decision"] == "keep_control"


def test_the_direction_decides_which_way_is_better() -> None:
    # An error rate that rises in the treatment: lower is better by the name, so the control is kept.
    df = _frame({"A": (1000, 10_000), "B": (1200, 10_000)}).rename(columns={"click": "error"})
    rising = analyze_frame(df, variant_column="arm", metric="error", min_sample_size=5000).as_dict()
    assert rising["direction"] == "lower" and rising["lift_abs"] > 0
    assert rising["decision"] == "keep_control" and "B is worse" in rising["reason"]
    assert "lower is better" in rising["reason"]
    told = analyze_frame(df, variant_column="arm", metric="error", min_sample_size=5000, direction="higher")
    assert told.as_dict()["decision"] == "switch_to_treatment" and told.direction == "higher"
    falling = analyze_frame(_frame({"A": (1200, 10_000), "B": (1000, 10_000)}).rename(columns={"click": "error"}),
                            variant_column="arm", metric="error", min_sample_size=5000).as_dict()
    assert falling["decision"] == "switch_to_treatment" and "B is better" in falling["reason"]
    with pytest.raises(InputError, match="direction"):
        analyze_frame(df, variant_column="arm", metric="error", direction="up")
    with pytest.raises(InputError, match="direction"):
        analyze_frame(df, variant_column="arm", metric="error", direction="higher", higher_is_better=False)


@pytest.mark.parametrize(("metric", "direction"), [
    ("log_loss", "lower"), ("brier", "lower"), ("latency_ms", "lower"), ("val_loss", "lower"),
    ("TrainError", "lower"), ("p99_latency", "lower"), ("auc", "higher"), ("click", "higher"), ("label", "higher"),
    ("output", "higher"), ("lossless_rate", "higher")])
def test_default_direction_by_metric_name(metric: str, direction: str) -> None:
    assert direction_of(metric) == direction


def test_sequential_may_stop_early_but_srm_blocks() -> None:
    a, b = Sample.from_counts("A", 1000, 10_000), Sample.from_counts("B", 1400, 10_000)
    seq = sequential_test(a, b)
    assert decide(seq, srm_p_value=0.5, min_sample_size=10**6).decision == "switch_to_treatment"
    fixed = ztest(a, b)
    assert decide(fixed, srm_p_value=0.5, min_sample_size=10**6).decision == "continue"
    srm = decide(fixed, srm_p_value=1e-9)
    assert srm.decision == "keep_control" and "sample ratio mismatch" in srm.reason
    assert decide(fixed, srm_p_value=0.5, guardrail_breaches=["latency_ms"]).decision == "keep_control"


def test_more_variants_and_tests() -> None:
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"arm": np.repeat(["control", "b", "c"], 3000),
                       "rev": np.concatenate([rng.exponential(10, 3000), rng.exponential(10.2, 3000),
                                              rng.exponential(12, 3000)]),
                       "user": np.arange(9000) // 3})
    out = analyze_frame(df, variant_column="arm", metric="rev").as_dict()
    assert [c["treatment"]["name"] for c in out["comparisons"]] == ["b", "c"]
    assert all(c["control"]["name"] == "control" and c["test"] == "welch" for c in out["comparisons"])
    assert all(list(c) == KEYS for c in out["comparisons"])
    per_user = analyze_frame(df, variant_column="arm", metric="rev", unit_column="user").as_dict()
    assert per_user["comparisons"][0]["test"] == "delta"
    assert per_user["comparisons"][0]["control"]["n"] == 1000
    with pytest.raises(InputError, match="0/1"):
        analyze_frame(df, variant_column="arm", metric="rev", test="ztest")
    with pytest.raises(InputError, match="control"):
        analyze_frame(df, variant_column="arm", metric="rev", control="zzz")
    with pytest.raises(InputError, match="test"):
        analyze_frame(df, variant_column="arm", metric="rev", test="bayes")
