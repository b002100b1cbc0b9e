"""Multiple-testing control: Holm and Benjamini–Hochberg adjusted p-values, and decisions that read them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from modelmill.cli import app
from modelmill.control.experiments import create_experiment, create_request
from modelmill.errors import InputError
from modelmill.experiments import (
    CORRECTIONS,
    Arm,
    Experiment,
    Experiments,
    Sample,
    adjust_p_values,
    analyze_frame,
    analyze_samples,
    benjamini_hochberg,
    holm,
)
from modelmill.project import Project
from modelmill.serving.openapi import SCHEMAS

from .conftest import log_served
from .test_cli import mm

multipletests = pytest.importorskip("statsmodels.stats.multitest").multipletests


def _random_families(seed: int = 7, count: int = 300) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        m = int(rng.integers(1, 40))
        p = rng.uniform(size=m) ** rng.uniform(0.2, 4.0)  # from mostly tiny to mostly large
        if m > 2 and rng.random() < 0.3:
            p[: m // 2] = p[0]  # ties
        if rng.random() < 0.2:
            p[0] = 0.0
        out.append(p)
    return out


def test_holm_and_bh_equal_statsmodels_multipletests() -> None:
    families = _random_families()
    for p in families:
        assert np.max(np.abs(benjamini_hochberg(p) - multipletests(p, method="fdr_bh")[1])) <= 1e-12
    for p in families[:40]:  # statsmodels' Holm is slow (a tenth of a second per call)
        assert np.max(np.abs(holm(p) - multipletests(p, method="holm")[1])) <= 1e-12


def test_hand_computed_cases() -> None:
    p = [0.01, 0.04, 0.03, 0.005]
    # Holm: sorted 0.005·4, 0.01·3, 0.03·2, 0.04·1 → 0.02, 0.03, 0.06, max(0.06, 0.04)
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02], abs=1e-15)
    # BH: sorted 0.005·4/1, 0.01·4/2, 0.03·4/3, 0.04·4/4 → running minimum from the top
    assert benjamini_hochberg(p) == pytest.approx([0.02, 0.04, 0.04, 0.02], abs=1e-15)
    assert holm([0.3, 0.9]).tolist() == [0.6, 0.9] and holm([0.6, 0.7]).tolist() == [1.0, 1.0]  # capped at 1
    assert benjamini_hochberg([0.04, 0.045, 0.9]).tolist() == pytest.approx([0.0675, 0.0675, 0.9])
    for correction in CORRECTIONS:
        assert adjust_p_values([0.0123], correction).tolist() == [0.0123]  # one test: nothing to correct
    assert holm([]).tolist() == [] and adjust_p_values([0.2, 0.01], "none").tolist() == [0.2, 0.01]


def test_rows_of_a_matrix_are_separate_families() -> None:
    p = np.random.default_rng(3).uniform(size=(6, 9)) ** 2
    assert np.array_equal(holm(p), np.stack([holm(row) for row in p]))
    assert np.array_equal(benjamini_hochberg(p), np.stack([benjamini_hochberg(row) for row in p]))


def test_adjusted_p_values_are_monotone_order_free_and_never_below_the_raw_ones() -> None:
    rng = np.random.default_rng(11)
    for p in _random_families(seed=5, count=100):
        h, b = holm(p), benjamini_hochberg(p)
        order = np.argsort(p, kind="stable")
        assert np.all(np.diff(h[order]) >= 0) and np.all(np.diff(b[order]) >= 0)
        assert np.all(h >= p) and np.all(b >= p) and np.all(h <= 1) and np.all(b <= 1)
        assert np.all(b <= h + 1e-15)  # BH never rejects less than Holm
        shuffle = rng.permutation(p.size)
        assert np.allclose(holm(p[shuffle]), h[shuffle]) and np.allclose(benjamini_hochberg(p[shuffle]), b[shuffle])


@pytest.mark.parametrize("bad", [[0.1, math.nan], [0.1, 1.5], [-0.01]])
def test_p_values_outside_zero_one_are_refused(bad: list[float]) -> None:
    for fn in (holm, benjamini_hochberg):
        with pytest.raises(InputError) as err:
            fn(bad)
        assert err.value.field == "p_values"
        assert err.value.problem == "must all be numbers between 0 and 1"  # the problem, said plainly
        assert err.value.value == [float(x) for x in bad] or math.isnan(err.value.value[-1])  # and what came


def test_one_p_value_and_integer_p_values_are_adjusted_as_floats() -> None:
    # a single comparison is a family of one: nothing to adjust, and a scalar comes back as one value
    for fn in (holm, benjamini_hochberg):
        assert fn(0.03).tolist() == [0.03]
        # integer 0/1 p-values (a degenerate test) come out as float64, not truncated into an integer array
        out = fn(np.array([0, 1, 0], dtype=np.int64))
        assert out.dtype == np.float64 and out.tolist() == [0.0, 1.0, 0.0]
        assert fn([0.5, 0.02]).dtype == np.float64


def _three_arms() -> pd.DataFrame:
    """Control 5.00%, B 5.65% (p≈0.041 alone, 0.081 after Holm over two), C 5.05%; 10,000 units each."""
    rows = []
    for arm, clicks in (("control", 500), ("b", 565), ("c", 505)):
        rows += [(arm, 1)] * clicks + [(arm, 0)] * (10_000 - clicks)
    return pd.DataFrame(rows, columns=["arm", "click"])


def test_the_decision_reads_the_adjusted_p_value_and_its_json_names_the_correction() -> None:
    df = _three_arms()
    plain = analyze_frame(df, variant_column="arm", metric="click", min_sample_size=10_000,
                          correction="none").as_dict()
    by_default = analyze_frame(df, variant_column="arm", metric="click", min_sample_size=10_000).as_dict()
    bh = analyze_frame(df, variant_column="arm", metric="click", min_sample_size=10_000, correction="bh").as_dict()
    raw = [c["p_value"] for c in plain["comparisons"]]
    assert raw[0] < 0.05 < 2 * raw[0]
    assert plain["correction"] == "none" and [c["p_adjusted"] for c in plain["comparisons"]] == raw
    assert plain["comparisons"][0]["decision"] == "switch_to_treatment"
    assert by_default["correction"] == "holm" and by_default["family_size"] == 2
    assert [c["p_adjusted"] for c in by_default["comparisons"]] == pytest.approx(holm(raw).tolist(), abs=1e-15)
    assert all(c["correction"] == "holm" for c in by_default["comparisons"])
    b = by_default["comparisons"][0]
    assert b["decision"] == "keep_control" and "holm-adjusted p=0.0813" in b["reason"], b["reason"]
    assert f"unadjusted p={raw[0]:.3g}" in b["reason"]
    assert [c["p_adjusted"] for c in bh["comparisons"]] == pytest.approx(benjamini_hochberg(raw).tolist())
    # With one treatment there is nothing to correct: the flat object, p_adjusted equal to p_value.
    two = df[df["arm"] != "c"]
    one = analyze_frame(two, variant_column="arm", metric="click", min_sample_size=10_000).as_dict()
    assert one["correction"] == "holm" and one["p_adjusted"] == one["p_value"]
    assert one["decision"] == "switch_to_treatment"


def test_several_metrics_form_one_family_and_each_treatment_gets_one_decision() -> None:
    df = _three_arms()
    rng = np.random.default_rng(0)
    df["latency_ms"] = rng.gamma(4.0, 5.0, len(df)) - np.where(df["arm"] == "c", 2.0, 0.0)  # c is much faster
    out = analyze_frame(df, variant_column="arm", metric=["click", "latency_ms"], min_sample_size=10_000).as_dict()
    comps = out["comparisons"]
    assert out["family_size"] == 4 and [(c["metric"], c["treatment"]["name"]) for c in comps] == [
        ("click", "b"), ("click", "c"), ("latency_ms", "b"), ("latency_ms", "c")]
    assert [c["test"] for c in comps] == ["ztest", "ztest", "welch", "welch"]
    assert [c["direction"] for c in comps] == ["higher", "higher", "lower", "lower"]
    assert [c["p_adjusted"] for c in comps] == pytest.approx(holm([c["p_value"] for c in comps]).tolist())
    decisions = {t["treatment"]: t for t in out["treatments"]}
    assert decisions["c"]["decision"] == "switch_to_treatment" and "latency_ms:" in decisions["c"]["reason"]
    assert decisions["b"]["decision"] == "keep_control"
    # Worse on one metric keeps the control even when better on another.
    df["latency_ms"] += np.where(df["arm"] == "b", 3.0, 0.0)
    df.loc[df["arm"] == "b", "click"] = 1
    worse = analyze_frame(df, variant_column="arm", metric=["click", "latency_ms"], min_sample_size=10_000)
    b = {t["treatment"]: t for t in worse.treatments()}["b"]
    assert b["decision"] == "keep_control" and "b is worse" in b["reason"] and "click" not in b["reason"]


def test_an_unknown_correction_is_an_input_error_naming_the_field(project: Project) -> None:
    with pytest.raises(InputError) as err:
        analyze_frame(_three_arms(), variant_column="arm", metric="click", correction="bonferroni")
    assert err.value.field == "correction" and err.value.value == "bonferroni"
    with pytest.raises(InputError) as err:
        Experiment(name="x", primary_metric="click", variants=(Arm("a", 1), Arm("b", 1)), correction="fdr")
    assert err.value.field == "correction"
    body = {"name": "x", "metric": "click", "variants": [{"name": "a", "weight": 1}, {"name": "b", "weight": 1}]}
    with pytest.raises(InputError) as err:
        create_request({**body, "correction": "sidak"})
    assert err.value.field == "correction" and "holm, bh, none" in err.value.message
    with pytest.raises(InputError) as err:
        create_request({**body, "correction": 3})
    assert err.value.field == "correction"
    assert SCHEMAS["ExperimentRequest"]["properties"]["correction"]["enum"] == list(CORRECTIONS)


def test_an_experiment_stores_its_correction_and_its_analysis_applies_it(project: Project) -> None:
    body = {"name": "ab3", "model": "m", "metric": "label", "min_sample_size": 50,
            "variants": [{"name": "control", "weight": 1, "version": 1}, {"name": "t1", "weight": 1, "version": 2},
                         {"name": "t2", "weight": 1, "version": 3}]}
    made = create_experiment(project, **create_request({**body, "correction": "bh"}), actor="t")
    Experiments(project).stop("ab3")  # one experiment runs on a model at a time; ab3 is analysed all the same
    default = create_experiment(project, **create_request({**body, "name": "ab4"}), actor="t")
    store = Experiments(project)
    assert made["correction"] == "bh" and store.get("ab3").correction == "bh"
    assert default["correction"] == "holm" and store.get("ab4").correction == "holm"
    assigner = store.get("ab3").assigner()
    rows = []
    for i in range(3000):
        user = f"user-{i % 1500}"
        v = assigner.assign(user)
        label = 1.0 if (i * 7919) % 100 < {"control": 20, "t1": 26, "t2": 22}[v] else 0.0
        rows.append((f"r{i}", v, {"control": 1, "t1": 2, "t2": 3}[v], user, 0.5, label))
    log_served(project.offline, "m", rows)
    out = store.analyze("ab3").as_dict()
    raw = [c["p_value"] for c in out["comparisons"]]
    assert out["correction"] == "bh" and [c["treatment"]["name"] for c in out["comparisons"]] == ["t1", "t2"]
    assert [c["p_adjusted"] for c in out["comparisons"]] == pytest.approx(benjamini_hochberg(raw).tolist())
    overridden = store.analyze("ab3", correction="none").as_dict()
    assert overridden["correction"] == "none" and [c["p_adjusted"] for c in overridden["comparisons"]] == raw


def _run(*args: str) -> dict:  # type: ignore[type-arg]
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_cli_correction_on_create_and_analyze(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "modelmill.toml").write_text('home = ".modelmill"\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MODELMILL_HOME", raising=False)
    log = tmp_path / "log.csv"
    _three_arms().to_csv(log, index=False)
    args = ("experiment", "analyze", "--input", str(log), "--variant-column", "arm", "--metric", "click",
            "--min-sample-size", "10000", "--json")
    holm_out, none_out = _run(*args), _run(*args, "--correction", "none")
    assert holm_out["correction"] == "holm" and holm_out["comparisons"][0]["decision"] == "keep_control"
    assert none_out["correction"] == "none" and none_out["comparisons"][0]["decision"] == "switch_to_treatment"
    shown = CliRunner().invoke(app, [a for a in args if a != "--json"])
    assert shown.exit_code == 0 and "p-values adjusted by holm" in shown.stdout and "holm-adjusted" in shown.stdout
    bad = mm(tmp_path, *args, "--correction", "bonferroni")
    error = json.loads(bad.stdout)["error"]
    assert bad.returncode == 2 and "--correction" in error and "bonferroni" in error and not bad.stderr
    created = _run("experiment", "create", "ranker", "--variant", "a:1", "--variant", "b:1", "--variant", "c:1",
                   "--metric", "click", "--correction", "bh", "--json")
    assert created["correction"] == "bh"
    assert _run("experiment", "status", "ranker", "--json")["correction"] == "bh"
    bad_create = mm(tmp_path, "experiment", "create", "r2", "--variant", "a:1", "--variant", "b:1",
                    "--metric", "click", "--correction", "fdr", "--json")
    assert bad_create.returncode == 2 and "correction" in json.loads(bad_create.stdout)["error"]
    assert "r2" not in [e["name"] for e in _run("experiment", "status", "--json")["experiments"]]


def test_simulated_null_experiments_switch_falsely_at_most_alpha_once_corrected() -> None:
    """200 seeded runs of 5 null treatments x 3 metrics (benchmarks/multiple_testing.py runs 1,000)."""
    alpha, runs, units = 0.05, 200, 1_000
    rng = np.random.default_rng(20261201)
    switched = {c: 0 for c in CORRECTIONS}
    for _ in range(runs):
        names = ["control", "t1", "t2", "t3", "t4", "t5"]
        family = {"click": [Sample.from_counts(n, int(rng.binomial(units, 0.1)), units) for n in names],
                  "revenue": [Sample.from_values(n, rng.lognormal(1.0, 1.0, units)) for n in names],
                  "latency_ms": [Sample.from_values(n, rng.gamma(4.0, 5.0, units)) for n in names]}
        for correction in CORRECTIONS:
            a = analyze_samples(family, alpha=alpha, min_sample_size=units, correction=correction)
            assert len(a.comparisons) == 15
            switched[correction] += any(t["decision"] == "switch_to_treatment" for t in a.treatments())
    tolerance = 3 * math.sqrt(alpha * (1 - alpha) / runs)  # three binomial standard errors
    assert switched["holm"] / runs <= alpha + tolerance and switched["bh"] / runs <= alpha + tolerance, switched
    assert switched["none"] / runs > alpha + tolerance, switched
    assert switched["none"] > 3 * max(switched["holm"], switched["bh"]), switched


def test_a_sample_ratio_mismatch_keeps_the_control_on_every_metric() -> None:
    arms = [("control", 10_000, 500), ("b", 9_000, 600)]  # b far better on clicks, but 10% of its units lost
    family = {"click": [Sample.from_counts(n, x, units) for n, units, x in arms],
              "revenue": [Sample.from_values(n, np.full(units, 1.0) + (n == "b") * np.linspace(0, 1, units))
                          for n, units, _ in arms]}
    a = analyze_samples(family, min_sample_size=1_000)
    assert a.srm_p_value < 0.001
    (b,) = a.treatments()
    assert b["decision"] == "keep_control" and b["reason"].count("sample ratio mismatch") == 2, b["reason"]
    assert analyze_samples(family, min_sample_size=1_000, correction="none").treatments()[0]["decision"] == \
        "keep_control"
