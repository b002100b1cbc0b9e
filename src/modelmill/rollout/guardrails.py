"""Guardrails: is the candidate doing worse than production on what was observed in this stage?

Four checks, each on by default. Each answers ``pass``, ``fail`` or
``no_data``: below its minimum sample a check cannot pass (a guardrail that
passes on three requests has checked nothing), so the controller holds the
stage until the data is there, and past the stage's time limit rolls back.
A check can fail early, though: enough errors to be significant already are
a verdict.

- error rate — candidate errors significantly above production's (one-sided
  pooled z-test) *and* by more than ``max_error_rate_increase``; needs
  ``min_samples`` candidate requests to pass;
- latency p95 — above ``max_latency_ratio`` × production's p95 plus a slack;
- prediction shift — two-sample Kolmogorov–Smirnov distance of the outputs;
- delayed labels — mean loss (log loss for probabilities of 0/1 labels,
  absolute error otherwise) significantly worse, when labels have arrived.

A fifth, off by default (``max_estimated_loss_increase``; on only for a
calibrated binary classifier, whose outputs are probabilities), judges the
loss *before* labels arrive: each variant's expected log loss under its own
probabilities (:mod:`modelmill.monitoring.estimate`), and fails when the
one-sided ``1 - significance`` lower bound of candidate minus baseline lies
above the allowed increase, so a candidate clearly worse is held back or
rolled back before any label comes. Once both variants have ``min_samples``
labelled requests and the ``label_loss`` check is on, the realised loss
decides and this check passes aside to it. Outputs outside [0, 1] are no data.

    >>> import numpy as np
    >>> ok = Observation(requests=1000, errors=0, latencies_ms=np.full(1000, 2.0), outputs=np.linspace(0, 1, 1000))
    >>> bad = Observation(requests=100, errors=12, latencies_ms=np.full(88, 2.0), outputs=np.linspace(0, 1, 88))
    >>> [b.check for b in evaluate(bad, ok, Guardrails(max_label_loss_increase=None))]
    ['error_rate']
    >>> [(v.check, v.status) for v in check(bad, ok, Guardrails())]
    [('error_rate', 'fail'), ('latency_p95', 'pass'), ('output_shift', 'pass'), ('label_loss', 'no_data')]
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import stats as st

from modelmill.errors import InputError

__all__ = ["CHECKS", "OPTIONAL_CHECKS", "Breach", "Guardrails", "Observation", "Verdict", "check", "evaluate"]

#: The checks on by default, in the order they are reported.
CHECKS = ("error_rate", "latency_p95", "output_shift", "label_loss")
#: The checks off by default, reported after them when on.
OPTIONAL_CHECKS = ("estimated_loss",)
PASS, FAIL, NO_DATA = "pass", "fail", "no_data"

_EMPTY = np.zeros(0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Observation:
    """What one variant did in the window: requests, errors, latencies, outputs and (optional) label losses."""

    requests: int
    errors: int = 0
    latencies_ms: NDArray[np.float64] = dataclasses.field(default_factory=lambda: _EMPTY)
    outputs: NDArray[np.float64] = dataclasses.field(default_factory=lambda: _EMPTY)
    label_losses: NDArray[np.float64] = dataclasses.field(default_factory=lambda: _EMPTY)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def latency_p95(self) -> float:
        return float(np.percentile(self.latencies_ms, 95)) if self.latencies_ms.size else math.nan

    def summary(self) -> dict[str, Any]:
        return {"requests": self.requests, "errors": self.errors, "error_rate": self.error_rate,
                "latency_p95_ms": None if math.isnan(self.latency_p95) else self.latency_p95,
                "labeled": int(self.label_losses.size),
                "label_loss": float(self.label_losses.mean()) if self.label_losses.size else None}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Guardrails:
    """Thresholds of the checks; ``None`` turns a check off (``max_estimated_loss_increase`` is off by default)."""

    max_error_rate_increase: float | None = 0.01
    max_latency_ratio: float | None = 1.5
    latency_slack_ms: float = 5.0
    max_output_shift: float | None = 0.2  # KS distance
    max_label_loss_increase: float | None = 0.02
    max_estimated_loss_increase: float | None = None
    significance: float = 0.05
    min_errors: int = 3
    min_samples: int = 50

    def __post_init__(self) -> None:
        if not 0 < self.significance < 1:
            raise InputError("guardrails.significance", "must lie strictly between 0 and 1", self.significance)
        if self.min_samples < 1 or self.min_errors < 1:
            raise InputError("guardrails.min_samples", "min_samples and min_errors must be at least 1")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Breach:
    check: str
    candidate: float
    baseline: float
    limit: float
    message: str

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _one_sided_worse(x_c: int, n_c: int, x_b: int, n_b: int) -> float:
    """p-value of 'the candidate's rate is higher' by the pooled z-test."""
    if n_b == 0:
        return 0.0 if x_c > 0 else 1.0
    pooled = (x_c + x_b) / (n_c + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_c + 1 / n_b))
    if se == 0:
        return 1.0
    return float(st.norm.sf((x_c / n_c - x_b / n_b) / se))


@dataclasses.dataclass(frozen=True)
class Verdict:
    """One check's answer: ``pass``, ``fail`` (with its :class:`Breach`) or ``no_data`` (with what is lacking)."""

    check: str
    status: str
    message: str
    breach: Breach | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"check": self.check, "status": self.status, "message": self.message}


def _short(name: str, have: int, need: int, what: str) -> Verdict:
    return Verdict(name, NO_DATA, f"{name}: {have} of the {need} {what} it needs")


def check(candidate: Observation, baseline: Observation, g: Guardrails) -> list[Verdict]:
    """Every enabled check's verdict on the candidate against the baseline."""
    out: list[Verdict] = []
    if g.max_error_rate_increase is not None:
        diff = candidate.error_rate - baseline.error_rate
        p = (_one_sided_worse(candidate.errors, candidate.requests, baseline.errors, baseline.requests)
             if candidate.requests else 1.0)
        if candidate.requests and candidate.errors >= g.min_errors and diff > g.max_error_rate_increase \
                and p < g.significance:
            b = Breach("error_rate", candidate.error_rate, baseline.error_rate,
                       baseline.error_rate + g.max_error_rate_increase,
                       f"error rate {candidate.error_rate:.2%} against {baseline.error_rate:.2%} "
                       f"({candidate.errors}/{candidate.requests}, one-sided p={p:.2g})")
            out.append(Verdict(b.check, FAIL, b.message, b))
        elif candidate.requests < g.min_samples:
            out.append(_short("error_rate", candidate.requests, g.min_samples, "candidate requests"))
        elif baseline.requests < g.min_samples:
            out.append(_short("error_rate", baseline.requests, g.min_samples, "baseline requests"))
        else:
            out.append(Verdict("error_rate", PASS, f"error rate {candidate.error_rate:.2%} against "
                               f"{baseline.error_rate:.2%}"))
    n_c, n_b = candidate.latencies_ms.size, baseline.latencies_ms.size
    if g.max_latency_ratio is not None:
        if min(n_c, n_b) < g.min_samples:
            out.append(_short("latency_p95", min(n_c, n_b), g.min_samples, "latencies per variant"))
        else:
            limit = baseline.latency_p95 * g.max_latency_ratio + g.latency_slack_ms
            msg = f"latency p95 {candidate.latency_p95:.1f} ms against the limit {limit:.1f} ms"
            if candidate.latency_p95 > limit:
                b = Breach("latency_p95", candidate.latency_p95, baseline.latency_p95, limit,
                           f"latency p95 {candidate.latency_p95:.1f} ms above the limit {limit:.1f} ms")
                out.append(Verdict(b.check, FAIL, b.message, b))
            else:
                out.append(Verdict("latency_p95", PASS, msg))
    if g.max_output_shift is not None:
        n = min(candidate.outputs.size, baseline.outputs.size)
        if n < g.min_samples:
            out.append(_short("output_shift", n, g.min_samples, "outputs per variant"))
        else:
            ks = st.ks_2samp(candidate.outputs, baseline.outputs)
            if ks.statistic > g.max_output_shift and ks.pvalue < g.significance:
                b = Breach("output_shift", float(ks.statistic), 0.0, g.max_output_shift,
                           f"prediction distribution shifted: KS distance {ks.statistic:.3f} (p={ks.pvalue:.2g})")
                out.append(Verdict(b.check, FAIL, b.message, b))
            else:
                out.append(Verdict("output_shift", PASS, f"KS distance of outputs {ks.statistic:.3f}"))
    lc, lb = candidate.label_losses, baseline.label_losses
    if g.max_label_loss_increase is not None:
        if min(lc.size, lb.size) < g.min_samples:
            out.append(_short("label_loss", min(lc.size, lb.size), g.min_samples, "labelled requests per variant"))
        else:
            diff = float(lc.mean() - lb.mean())
            se = math.sqrt(lc.var(ddof=1) / lc.size + lb.var(ddof=1) / lb.size)
            p = float(st.norm.sf(diff / se)) if se > 0 else (0.0 if diff > 0 else 1.0)
            if diff > g.max_label_loss_increase and p < g.significance:
                b = Breach("label_loss", float(lc.mean()), float(lb.mean()),
                           float(lb.mean()) + g.max_label_loss_increase,
                           f"loss on delayed labels {lc.mean():.4f} against {lb.mean():.4f} (p={p:.2g})")
                out.append(Verdict(b.check, FAIL, b.message, b))
            else:
                out.append(Verdict("label_loss", PASS, f"loss on delayed labels {lc.mean():.4f} against "
                                   f"{lb.mean():.4f}"))
    if g.max_estimated_loss_increase is not None:
        out.append(_estimated_loss(candidate, baseline, g, g.max_estimated_loss_increase))
    return out


def _estimated_loss(candidate: Observation, baseline: Observation, g: Guardrails, limit: float) -> Verdict:
    """The expected log loss of each variant's probabilities, compared one-sided (see the module)."""
    from modelmill.monitoring.estimate import expected_log_losses

    name = "estimated_loss"
    labelled = min(candidate.label_losses.size, baseline.label_losses.size)
    if g.max_label_loss_increase is not None and labelled >= g.min_samples:
        return Verdict(name, PASS, f"labels have arrived ({labelled} per variant): label_loss judges the loss")
    oc, ob = candidate.outputs, baseline.outputs
    if min(oc.size, ob.size) < g.min_samples:
        return _short(name, min(oc.size, ob.size), g.min_samples, "outputs per variant")
    odd = int(np.count_nonzero(~np.isfinite(oc) | (oc < 0) | (oc > 1))
              + np.count_nonzero(~np.isfinite(ob) | (ob < 0) | (ob > 1)))
    if odd:
        return Verdict(name, NO_DATA, f"{name}: {odd} outputs are not probabilities in [0, 1] (the check is for "
                       "calibrated binary classifiers)")
    hc, hb = expected_log_losses(oc), expected_log_losses(ob)
    diff = float(hc.mean() - hb.mean())
    se = math.sqrt(hc.var(ddof=1) / hc.size + hb.var(ddof=1) / hb.size)
    low = diff - float(st.norm.ppf(1 - g.significance)) * se
    said = (f"estimated log loss {hc.mean():.4f} against {hb.mean():.4f} (no labels needed; at least "
            f"{low:+.4f} by the one-sided {1 - g.significance:.0%} bound)")
    if low > limit:
        b = Breach(name, float(hc.mean()), float(hb.mean()), float(hb.mean()) + limit,
                   f"{said}, above the allowed increase {limit:g}")
        return Verdict(name, FAIL, b.message, b)
    return Verdict(name, PASS, said)


def evaluate(candidate: Observation, baseline: Observation, g: Guardrails) -> list[Breach]:
    """Every guardrail the candidate breaches against the baseline (empty when none fails; see :func:`check`
    for the checks that could not tell)."""
    return [v.breach for v in check(candidate, baseline, g) if v.breach is not None]
