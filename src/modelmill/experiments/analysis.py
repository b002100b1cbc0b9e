"""From summaries to a decision: keep the control, switch to the treatment, or continue.

    >>> import pandas as pd
    >>> df = pd.DataFrame({"arm": ["A"] * 1000 + ["B"] * 1000, "click": [1] * 100 + [0] * 900 + [1] * 160 + [0] * 840})
    >>> r = analyze_frame(df, variant_column="arm", metric="click", min_sample_size=500)
    >>> c = r.as_dict()
    >>> c["test"], c["decision"], round(c["lift_abs"], 3)
    ('ztest', 'switch_to_treatment', 0.06)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from modelmill.errors import InputError
from modelmill.experiments import metrics
from modelmill.experiments.stats import (
    Comparison,
    Sample,
    sample_size_means,
    sample_size_proportions,
    sequential_test,
    srm_test,
    welch_ttest,
    ztest,
    ztest_means,
)

__all__ = ["TESTS", "Analysis", "Decision", "analyze_frame", "compare", "decide", "planned_sample_size"]

TESTS = ("ztest", "welch", "sequential", "delta")
SRM_THRESHOLD = 0.001


@dataclasses.dataclass(frozen=True)
class Decision:
    decision: str  # keep_control | switch_to_treatment | continue
    reason: str


def compare(control: Sample, treatment: Sample, *, test: str, alpha: float = 0.05) -> Comparison:
    """Run one named test: ``ztest`` (pooled, 0/1 metrics), ``welch``, ``sequential`` (mSPRT) or ``delta``."""
    if test == "ztest":
        return ztest(control, treatment, alpha=alpha)
    if test == "welch":
        return welch_ttest(control, treatment, alpha=alpha)
    if test == "sequential":
        return sequential_test(control, treatment, alpha=alpha)
    if test == "delta":
        return ztest_means(control, treatment, alpha=alpha)
    raise InputError("test", f"must be one of {', '.join(TESTS)}", test)


def planned_sample_size(control: Sample, *, mde: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Units per variant needed to detect a relative lift ``mde`` over the control at ``power``; 0 if undefined."""
    try:
        if control.successes is not None:
            return sample_size_proportions(control.mean, mde, alpha=alpha, power=power, relative=True)
        return sample_size_means(math.sqrt(control.variance), mde * abs(control.mean), alpha=alpha, power=power)
    except InputError:
        return 0


def decide(c: Comparison, *, srm_p_value: float, min_sample_size: int = 0, direction: str = "higher",
           guardrail_breaches: Sequence[str] = (), srm_threshold: float = SRM_THRESHOLD) -> Decision:
    """The decision and its reason, in the order a careful analyst checks things.

    ``direction`` says which way the metric is better (``higher`` or ``lower``): a
    treatment is better when its lift points that way.
    """
    direction = metrics.direction_of("", direction)
    if srm_p_value < srm_threshold:
        return Decision("keep_control", f"sample ratio mismatch (SRM p={srm_p_value:.2g} < {srm_threshold:g}): "
                        "assignment or logging is broken, so the comparison cannot be trusted; fix it and rerun")
    if guardrail_breaches:
        return Decision("keep_control", f"guardrail metric(s) significantly worse: {', '.join(guardrail_breaches)}")
    n = min(c.control.n, c.treatment.n)
    significant = c.p_value < c.alpha
    better = c.lift_abs < 0 if direction == "lower" else c.lift_abs > 0
    where = f"p={c.p_value:.3g} {'<' if significant else '>='} alpha={c.alpha:g}"
    lift = (f"lift {c.lift_abs:+.4g}" + (f" ({c.lift_rel:+.2%})" if math.isfinite(c.lift_rel) else "")
            + f", {direction} is better")
    sequential = c.test == "sequential"
    if n < min_sample_size and not (sequential and significant):
        return Decision("continue", f"{n} units in the smaller variant, below the planned {min_sample_size}; "
                        f"an early look ({where}) is not final" + ("" if sequential else
                                                                   " without a sequential test"))
    if significant and better:
        return Decision("switch_to_treatment", f"{c.treatment.name} is better: {lift}, {where}")
    if significant:
        return Decision("keep_control", f"{c.treatment.name} is worse: {lift}, {where}")
    return Decision("keep_control", f"no significant difference at the planned sample size: {lift}, {where}")


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


@dataclasses.dataclass(frozen=True)
class Analysis:
    """Every treatment compared with the control, with the shared SRM p-value."""

    comparisons: tuple[tuple[Comparison, Decision], ...]
    srm_p_value: float
    min_sample_size: int
    metric: str = ""
    direction: str = "higher"

    def comparison_dict(self, c: Comparison, d: Decision) -> dict[str, Any]:
        return {
            "test": c.test,
            "metric": self.metric,
            "direction": self.direction,
            "control": {"name": c.control.name, "n": c.control.n, "mean": c.control.mean},
            "treatment": {"name": c.treatment.name, "n": c.treatment.n, "mean": c.treatment.mean},
            "statistic": _finite(c.statistic),
            "p_value": c.p_value,
            "lift_abs": c.lift_abs,
            "lift_rel": _finite(c.lift_rel),
            "ci_abs": [_finite(c.ci_abs[0]), _finite(c.ci_abs[1])],
            "alpha": c.alpha,
            "srm_p_value": self.srm_p_value,
            "decision": d.decision,
            "reason": d.reason,
        }

    def as_dict(self) -> dict[str, Any]:
        """One comparison as a flat object; with several treatments, a list under ``"comparisons"``."""
        items = [self.comparison_dict(c, d) for c, d in self.comparisons]
        return items[0] if len(items) == 1 else {"comparisons": items}


def _pick_control(names: Sequence[str], control: str | None) -> str:
    if control is not None:
        if control not in names:
            raise InputError("control", f"is not a variant of the input; variants are {', '.join(names)}", control)
        return control
    for guess in ("control", "Control", "A", "a", "baseline"):
        if guess in names:
            return guess
    return names[0]


def analyze_frame(frame: pd.DataFrame, *, variant_column: str, metric: str, control: str | None = None,
                  unit_column: str | None = None, test: str | None = None, alpha: float = 0.05,
                  weights: Mapping[str, float] | None = None, min_sample_size: int | None = None,
                  mde: float = 0.10, direction: str | None = None,
                  higher_is_better: bool | None = None) -> Analysis:
    """Analyse a log of rows (one per unit, or several per unit with ``unit_column``).

    A 0/1 metric defaults to the pooled z-test, any other to Welch; with
    ``unit_column`` rows are pooled per unit into a ratio metric tested with the
    delta method. Without ``min_sample_size`` the plan is the sample needed to
    detect a relative lift ``mde`` at 80% power. The control defaults to a
    variant named control/A/baseline, else the first in name order.
    ``direction`` (``higher``/``lower``) says which way ``metric`` is better; by
    default it follows the metric's name (:func:`~modelmill.experiments.metrics.direction_of`).
    ``higher_is_better`` is the older spelling of the same setting.
    """
    if higher_is_better is not None:
        implied = "higher" if higher_is_better else "lower"
        if direction is not None and direction != implied:
            raise InputError("direction", f"contradicts higher_is_better={higher_is_better}", direction)
        direction = implied
    direction = metrics.direction_of(metric, direction)
    if test is not None and test not in TESTS:
        raise InputError("test", f"must be one of {', '.join(TESTS)}", test)
    samples = metrics.summarize(frame, variant_column=variant_column, metric=metric, unit_column=unit_column)
    if len(samples) < 2:
        raise InputError(variant_column, "needs at least two variants", [s.name for s in samples])
    names = [s.name for s in samples]
    ctrl_name = _pick_control(names, control)
    by_name = {s.name: s for s in samples}
    ctrl = by_name[ctrl_name]
    binary = all(s.successes is not None for s in samples)
    if test is None:
        test = "delta" if unit_column is not None else ("ztest" if binary else "welch")
    if test == "ztest" and not binary:
        raise InputError("test", "the pooled z-test needs a 0/1 metric with one row per unit; "
                                 "use --test welch" + (" or leave --test out (delta method)" if unit_column else ""),
                         test)
    if weights is not None:
        missing = [n for n in names if n not in weights]
        if missing:
            raise InputError("weights", f"give a weight for every variant (missing {', '.join(missing)})")
    srm_p = srm_test([s.n for s in samples], None if weights is None else [weights[n] for n in names])
    planned = min_sample_size if min_sample_size is not None else planned_sample_size(ctrl, mde=mde, alpha=alpha)
    out = []
    for s in samples:
        if s.name == ctrl_name:
            continue
        c = compare(ctrl, s, test=test, alpha=alpha)
        out.append((c, decide(c, srm_p_value=srm_p, min_sample_size=planned, direction=direction)))
    return Analysis(tuple(out), srm_p, planned, metric, direction)
