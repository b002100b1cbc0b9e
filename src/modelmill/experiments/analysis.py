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
    adjust_p_values,
    check_correction,
    sample_size_means,
    sample_size_proportions,
    sequential_test,
    srm_test,
    welch_ttest,
    ztest,
    ztest_means,
)

__all__ = ["TESTS", "Analysis", "Decision", "analyze_frame", "analyze_samples", "compare", "decide",
           "planned_sample_size"]

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
           guardrail_breaches: Sequence[str] = (), srm_threshold: float = SRM_THRESHOLD,
           p_adjusted: float | None = None, correction: str = "none") -> Decision:
    """The decision and its reason, in the order a careful analyst checks things.

    ``direction`` says which way the metric is better (``higher`` or ``lower``): a
    treatment is better when its lift points that way. ``p_adjusted`` is the comparison's
    p-value after the ``correction`` across its family (see :func:`analyze_samples`);
    significance is read on it, so several treatments or metrics do not add up to more
    false switches than ``alpha`` allows.
    """
    direction = metrics.direction_of("", direction)
    if srm_p_value < srm_threshold:
        return Decision("keep_control", f"sample ratio mismatch (SRM p={srm_p_value:.2g} < {srm_threshold:g}): "
                        "assignment or logging is broken, so the comparison cannot be trusted; fix it and rerun")
    if guardrail_breaches:
        return Decision("keep_control", f"guardrail metric(s) significantly worse: {', '.join(guardrail_breaches)}")
    n = min(c.control.n, c.treatment.n)
    p = c.p_value if p_adjusted is None else p_adjusted
    significant = p < c.alpha
    better = c.lift_abs < 0 if direction == "lower" else c.lift_abs > 0
    where = f"p={p:.3g} {'<' if significant else '>='} alpha={c.alpha:g}"
    if p_adjusted is not None and correction != "none":
        where = f"{correction}-adjusted {where} (unadjusted p={c.p_value:.3g})"
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
    """Every treatment compared with the control on each metric, with the shared SRM p-value.

    ``p_adjusted`` holds one p-value per comparison after ``correction`` across them all
    (empty: none applied); ``metrics`` one ``(metric, direction)`` per comparison when
    several metrics are analysed (empty: all are ``metric``).
    """

    comparisons: tuple[tuple[Comparison, Decision], ...]
    srm_p_value: float
    min_sample_size: int
    metric: str = ""
    direction: str = "higher"
    correction: str = "none"
    p_adjusted: tuple[float, ...] = ()
    metrics: tuple[tuple[str, str], ...] = ()

    def _metric(self, i: int) -> tuple[str, str]:
        return self.metrics[i] if self.metrics else (self.metric, self.direction)

    def _p_adjusted(self, i: int) -> float:
        return self.p_adjusted[i] if self.p_adjusted else self.comparisons[i][0].p_value

    def comparison_dict(self, c: Comparison, d: Decision, i: int | None = None) -> dict[str, Any]:
        if i is None:
            i = next(k for k, (ck, _) in enumerate(self.comparisons) if ck is c)
        metric, direction = self._metric(i)
        return {
            "test": c.test,
            "metric": metric,
            "direction": direction,
            "control": {"name": c.control.name, "n": c.control.n, "mean": c.control.mean},
            "treatment": {"name": c.treatment.name, "n": c.treatment.n, "mean": c.treatment.mean},
            "statistic": _finite(c.statistic),
            "p_value": c.p_value,
            "p_adjusted": self._p_adjusted(i),
            "correction": self.correction,
            "lift_abs": c.lift_abs,
            "lift_rel": _finite(c.lift_rel),
            "ci_abs": [_finite(c.ci_abs[0]), _finite(c.ci_abs[1])],
            "alpha": c.alpha,
            "srm_p_value": self.srm_p_value,
            "decision": d.decision,
            "reason": d.reason,
        }

    def _blocks(self, i: int) -> bool:
        """Whether comparison ``i`` keeps the control whatever the other metrics say: a sample ratio
        mismatch, or the treatment significantly worse (on the adjusted p-value)."""
        c, d = self.comparisons[i]
        if d.decision != "keep_control":
            return False
        better = c.lift_abs < 0 if self._metric(i)[1] == "lower" else c.lift_abs > 0
        return self.srm_p_value < SRM_THRESHOLD or (self._p_adjusted(i) < c.alpha and not better)

    def treatments(self) -> list[dict[str, str]]:
        """One ``{treatment, decision, reason}`` per treatment, across its metrics.

        With one metric this is that comparison's decision. With several, a treatment
        significantly worse on any metric keeps the control; one short of its planned sample
        on any continues; one significantly better on at least one (and worse on none) is
        switched to; otherwise the control stays. Significance is read on the adjusted p-values.
        """
        by: dict[str, list[tuple[str, Decision, bool]]] = {}
        for i, (c, d) in enumerate(self.comparisons):
            by.setdefault(c.treatment.name, []).append((self._metric(i)[0], d, self._blocks(i)))
        out = []
        for name, items in by.items():
            if len(items) == 1:
                d = items[0][1]
                out.append({"treatment": name, "decision": d.decision, "reason": d.reason})
                continue
            worse = [(m, d) for m, d, blocks in items if blocks]
            waiting = [(m, d) for m, d, _ in items if d.decision == "continue"]
            better = [(m, d) for m, d, _ in items if d.decision == "switch_to_treatment"]
            if worse:
                decision, picked = "keep_control", worse
            elif waiting:
                decision, picked = "continue", waiting
            elif better:
                decision, picked = "switch_to_treatment", better
            else:
                decision, picked = "keep_control", [(m, d) for m, d, _ in items]
            out.append({"treatment": name, "decision": decision,
                        "reason": "; ".join(f"{m}: {d.reason}" for m, d in picked)})
        return out

    def as_dict(self) -> dict[str, Any]:
        """One comparison as a flat object; with several, a list under ``"comparisons"`` beside the
        ``correction`` applied across them and, with several metrics, the per-treatment ``"treatments"``."""
        items = [self.comparison_dict(c, d, i) for i, (c, d) in enumerate(self.comparisons)]
        if len(items) == 1:
            return items[0]
        out: dict[str, Any] = {"comparisons": items, "correction": self.correction, "family_size": len(items)}
        if self.metrics:
            out["treatments"] = self.treatments()
        return out


def _pick_control(names: Sequence[str], control: str | None) -> str:
    if control is not None:
        if control not in names:
            raise InputError("control", f"is not a variant of the input; variants are {', '.join(names)}", control)
        return control
    for guess in ("control", "Control", "A", "a", "baseline"):
        if guess in names:
            return guess
    return names[0]


def analyze_frame(frame: pd.DataFrame, *, variant_column: str, metric: str | Sequence[str],
                  control: str | None = None, unit_column: str | None = None, test: str | None = None,
                  alpha: float = 0.05, weights: Mapping[str, float] | None = None,
                  min_sample_size: int | None = None, mde: float = 0.10,
                  direction: str | Mapping[str, str] | None = None, higher_is_better: bool | None = None,
                  correction: str | None = None) -> Analysis:
    """Analyse a log of rows (one per unit, or several per unit with ``unit_column``).

    A 0/1 metric defaults to the pooled z-test, any other to Welch; with
    ``unit_column`` rows are pooled per unit into a ratio metric tested with the
    delta method. Without ``min_sample_size`` the plan is the sample needed to
    detect a relative lift ``mde`` at 80% power. The control defaults to a
    variant named control/A/baseline, else the first in name order.
    ``direction`` (``higher``/``lower``) says which way ``metric`` is better; by
    default it follows the metric's name (:func:`~modelmill.experiments.metrics.direction_of`).
    ``higher_is_better`` is the older spelling of the same setting.
    ``metric`` may name several metrics (``direction`` then one for all, or a mapping per
    metric); every treatment is compared on each, and ``correction`` (default ``holm``) is
    applied across all those comparisons (see :func:`analyze_samples`).
    """
    if higher_is_better is not None:
        implied = "higher" if higher_is_better else "lower"
        if direction is not None and direction != implied:
            raise InputError("direction", f"contradicts higher_is_better={higher_is_better}", direction)
        direction = implied
    names = [metric] if isinstance(metric, str) else list(metric)
    if test is not None and test not in TESTS:
        raise InputError("test", f"must be one of {', '.join(TESTS)}", test)
    if test is None and unit_column is not None:
        test = "delta"
    samples = {m: metrics.summarize(frame, variant_column=variant_column, metric=m, unit_column=unit_column)
               for m in names}
    if test == "ztest" and not all(s.successes is not None for ss in samples.values() for s in ss):
        raise InputError("test", "the pooled z-test needs a 0/1 metric with one row per unit; "
                                 "use --test welch" + (" or leave --test out (delta method)" if unit_column else ""),
                         test)
    return analyze_samples(samples, control=control, test=test, alpha=alpha, weights=weights,
                           min_sample_size=min_sample_size, mde=mde, direction=direction, correction=correction,
                           variant_field=variant_column)


def analyze_samples(samples: Mapping[str, Sequence[Sample]], *, control: str | None = None, test: str | None = None,
                    alpha: float = 0.05, weights: Mapping[str, float] | None = None,
                    min_sample_size: int | None = None, mde: float = 0.10,
                    direction: str | Mapping[str, str] | None = None, correction: str | None = None,
                    variant_field: str = "variant") -> Analysis:
    """Compare every treatment with the control on every metric of ``samples`` (metric → one
    :class:`~modelmill.experiments.stats.Sample` per variant) and decide each comparison.

    The comparisons (treatments × metrics) are one family: their p-values are adjusted by
    ``correction`` — ``holm`` (the default: the chance of any false switch stays at most
    ``alpha``), ``bh`` (Benjamini–Hochberg: the expected share of false discoveries) or
    ``none`` — and each decision reads its adjusted p-value. With one comparison every
    correction leaves the p-value as it is. The SRM check uses the first metric's counts.

        >>> from modelmill.experiments.stats import Sample
        >>> arms = [Sample.from_counts(n, x, 10_000) for n, x in [("A", 500), ("B", 565), ("C", 505)]]
        >>> r = analyze_samples({"click": arms}, min_sample_size=10_000)
        >>> [(c["treatment"]["name"], round(c["p_value"], 4), round(c["p_adjusted"], 4), c["decision"])
        ...  for c in r.as_dict()["comparisons"]]
        [('B', 0.0407, 0.0813, 'keep_control'), ('C', 0.8714, 0.8714, 'keep_control')]
        >>> analyze_samples({"click": arms}, min_sample_size=10_000, correction="none").treatments()[0]["decision"]
        'switch_to_treatment'
    """
    correction = check_correction("holm" if correction is None else correction)
    if not samples:
        raise InputError("metric", "name at least one metric to compare")
    metric_names = list(samples)
    first = list(samples[metric_names[0]])
    if len(first) < 2:
        raise InputError(variant_field, "needs at least two variants", [s.name for s in first])
    names = [s.name for s in first]
    ctrl_name = _pick_control(names, control)
    if weights is not None:
        missing = [n for n in names if n not in weights]
        if missing:
            raise InputError("weights", f"give a weight for every variant (missing {', '.join(missing)})")
    srm_p = srm_test([s.n for s in first], None if weights is None else [weights[n] for n in names])
    directions = {m: metrics.direction_of(m, direction.get(m) if isinstance(direction, Mapping) else direction)
                  for m in metric_names}
    planned = min_sample_size
    if planned is None:
        planned = max(planned_sample_size({s.name: s for s in samples[m]}[ctrl_name], mde=mde, alpha=alpha)
                      for m in metric_names)
    compared: list[tuple[Comparison, str]] = []
    for m in metric_names:
        by_name = {s.name: s for s in samples[m]}
        if sorted(by_name) != sorted(names):
            raise InputError(m, f"must have the same variants as {metric_names[0]}", sorted(by_name))
        binary = all(s.successes is not None for s in by_name.values())
        kind = test if test is not None else ("ztest" if binary else "welch")
        compared += [(compare(by_name[ctrl_name], by_name[n], test=kind, alpha=alpha), m)
                     for n in names if n != ctrl_name]
    adjusted = adjust_p_values([c.p_value for c, _ in compared], correction).tolist()
    out = tuple((c, decide(c, srm_p_value=srm_p, min_sample_size=planned, direction=directions[m],
                           p_adjusted=p, correction=correction)) for (c, m), p in zip(compared, adjusted, strict=True))
    several = len(metric_names) > 1
    return Analysis(out, srm_p, planned, metric_names[0], directions[metric_names[0]], correction, tuple(adjusted),
                    tuple((m, directions[m]) for _, m in compared) if several else ())
