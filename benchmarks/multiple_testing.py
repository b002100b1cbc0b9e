"""Multiple-testing control: false switches of an A/B test with 5 treatments and 3 metrics, all null.

    .venv/bin/python benchmarks/multiple_testing.py             # 1,000 runs of each scenario
    .venv/bin/python benchmarks/multiple_testing.py --runs 200  # quicker

Each run draws a control and 5 treatments with 2,000 units each and three metrics that no
treatment changes: a 0/1 click (10%), a skewed revenue (lognormal) and a latency (gamma, lower is
better). The same data go through modelmill's decision (``analyze_samples``) with each correction;
a *false switch* is a run where any treatment's decision is ``switch_to_treatment``, a *false
discovery* one where any of the 15 comparisons has an adjusted p-value below alpha. A last
scenario gives one treatment a real +30% click lift, to show what the correction costs in power.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _runner import Benchmark, package_version
from modelmill.experiments import CORRECTIONS, Sample, analyze_samples
from modelmill.experiments.stats import proportion_confint

ALPHA = 0.05
TREATMENTS = 5
UNITS = 2_000
METRICS = ("click", "revenue", "latency_ms")
LIFT = 0.30  # the real click lift of t1 in the power scenario


def draw(rng: np.random.Generator, *, click_lift: float = 0.0) -> dict[str, list[Sample]]:
    """One experiment's summaries: metric -> a Sample per variant (control first); ``click_lift`` is the
    relative lift of treatment t1 on click (0: every hypothesis is null)."""
    names = ["control", *(f"t{i}" for i in range(1, TREATMENTS + 1))]
    out: dict[str, list[Sample]] = {m: [] for m in METRICS}
    for name in names:
        rate = 0.10 * (1 + click_lift) if name == "t1" else 0.10
        out["click"].append(Sample.from_counts(name, int(rng.binomial(UNITS, rate)), UNITS))
        out["revenue"].append(Sample.from_values(name, rng.lognormal(1.0, 1.0, UNITS)))
        out["latency_ms"].append(Sample.from_values(name, rng.gamma(4.0, 5.0, UNITS)))
    return out


def simulate(runs: int, *, seed: int, metrics: tuple[str, ...] = METRICS, treatments: int = TREATMENTS,
             click_lift: float = 0.0) -> dict[str, dict[str, float]]:
    """Per correction: the share of runs with a false switch, with a false discovery, the per-comparison
    false-positive rate and (with ``click_lift``) the share of runs that switch to t1."""
    rng = np.random.default_rng(seed)
    counts = {c: {"switch": 0, "discovery": 0, "positives": 0, "t1": 0} for c in CORRECTIONS}
    comparisons = 0
    keep = {"control", *(f"t{i}" for i in range(1, treatments + 1))}
    for _ in range(runs):
        data = draw(rng, click_lift=click_lift)
        family = {m: [s for s in data[m] if s.name in keep] for m in metrics}
        for correction in CORRECTIONS:
            a = analyze_samples(family, control="control", alpha=ALPHA, min_sample_size=UNITS, correction=correction)
            switched = {t["treatment"] for t in a.treatments() if t["decision"] == "switch_to_treatment"}
            nulls = [(c, p) for (c, _), p in zip(a.comparisons, a.p_adjusted, strict=True)
                     if not (click_lift and c.treatment.name == "t1")]
            n = counts[correction]
            n["switch"] += bool(switched - ({"t1"} if click_lift else set()))
            n["discovery"] += any(p < ALPHA for _, p in nulls)
            n["positives"] += sum(p < ALPHA for _, p in nulls)
            n["t1"] += "t1" in switched
            comparisons = len(nulls)
    return {c: {"false_switch": n["switch"] / runs, "false_discovery": n["discovery"] / runs,
                "per_comparison": n["positives"] / (runs * comparisons), "t1_switched": n["t1"] / runs,
                "switches": n["switch"]}
            for c, n in counts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=20261201)
    args = parser.parse_args()
    runs = args.runs
    bench = Benchmark("multiple_testing", f"A/B decisions over {runs:,} simulated runs, alpha={ALPHA}, "
                                          f"{UNITS:,} units per variant")
    bench.versions(numpy=package_version("numpy"), scipy=package_version("scipy"),
                   statsmodels=package_version("statsmodels"))
    scenarios = [
        ("null 5x3", simulate(runs, seed=args.seed)),
        ("null 5x1 (click)", simulate(runs, seed=args.seed + 1, metrics=("click",))),
        ("null 1x3", simulate(runs, seed=args.seed + 2, treatments=1)),
    ]
    for title, result in scenarios:
        for correction, r in result.items():
            upper = proportion_confint(int(r["switches"]), runs, method="wilson")[1]
            bench.row(f"{title} {correction}", false_switch=r["false_switch"], switch_ci95_high=upper,
                      any_false_discovery=r["false_discovery"], per_comparison=r["per_comparison"])
    main_result = scenarios[0][1]
    for correction in ("holm", "bh"):
        rate = main_result[correction]["false_switch"]
        bench.ratio(f"5x3 null: false-switch rate with {correction}", rate, goal=f"<= alpha {ALPHA}",
                    met=rate <= ALPHA)
        found = main_result[correction]["false_discovery"]
        bench.ratio(f"5x3 null: any false discovery with {correction}", found, goal=f"<= alpha {ALPHA}",
                    met=found <= ALPHA)
    bench.ratio("5x3 null: false-switch rate without correction", main_result["none"]["false_switch"],
                goal=f"> alpha {ALPHA} (the problem)", met=main_result["none"]["false_switch"] > ALPHA)
    power = simulate(runs, seed=args.seed + 3, click_lift=LIFT)
    for correction, r in power.items():
        bench.row(f"t1 +{LIFT:.0%} click, 5x3 {correction}", t1_switched=r["t1_switched"], false_switch=r["false_switch"],
                  any_false_discovery=r["false_discovery"])
    bench.note("rows: scenario (treatments x metrics) and correction; t1_switched: share of runs that chose the "
               "treatment with the real lift (power)")
    bench.note("false_switch: share of runs where a null treatment was chosen; any_false_discovery: share of runs "
               "with any null comparison's adjusted p < alpha (the family-wise error rate); switch_ci95_high: "
               "Wilson upper bound of the false-switch rate")
    bench.note("a switch needs the better direction, so a two-sided test at alpha switches falsely at about "
               "alpha/2 per comparison; Holm and BH (equal under the global null) keep the whole family under alpha")
    bench.finish()


if __name__ == "__main__":
    main()
