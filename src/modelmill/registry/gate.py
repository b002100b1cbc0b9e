"""The validation gate: a candidate version must meet absolute thresholds and must not regress
against the version it would replace, on the same labelled rows. The decision is recorded on
the candidate version and in the audit trail.

In CI/CD the gate is the step between training and deployment; its exit code stops the
pipeline (``V`` is the version ``train --json`` printed)::

    pytest -q                                                    # code change: tests pass
    modelmill train -t lightgbm --data train.parquet --label late --register delays --json
    modelmill gate --candidate delays@V --against delays@production \
        --data holdout.parquet --label late --min auc=0.70 --max-regression auc=0.005
    modelmill models alias delays production V --actor ci --reason "gate passed"   # deploy

    >>> parse_thresholds(["auc=0.70", "logloss=0.5"], "--min")
    {'auc': 0.7, 'logloss': 0.5}
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from modelmill.errors import InputError, NotFoundError
from modelmill.registry.evaluate import metric, score
from modelmill.registry.registry import Registry
from modelmill.registry.versions import ModelVersion, parse_ref

__all__ = ["Check", "GateResult", "gate", "parse_thresholds", "read_labelled"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Check:
    """One rule and how the candidate fared against it."""

    metric: str
    rule: str  # "min", "max" or "max_regression"
    threshold: float
    value: float
    baseline: float | None
    passed: bool
    message: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, kw_only=True)
class GateResult:
    """The gate's decision: ``accepted``, the ``reason`` in one line, and every check behind it."""

    candidate: str
    against: str | None
    accepted: bool
    reason: str
    checks: list[Check]
    metrics: dict[str, float]
    baseline_metrics: dict[str, float] | None
    rows: int
    at: float

    def to_dict(self) -> dict[str, Any]:
        return {"candidate": self.candidate, "against": self.against, "accepted": self.accepted,
                "decision": "accept" if self.accepted else "reject", "reason": self.reason,
                "checks": [c.to_dict() for c in self.checks], "metrics": self.metrics,
                "baseline_metrics": self.baseline_metrics, "rows": self.rows, "at": self.at}


def parse_thresholds(items: Iterable[str] | Mapping[str, float] | None, option: str) -> dict[str, float]:
    """``["auc=0.70"]`` (or a mapping) to ``{"auc": 0.70}``, naming the option on bad input."""
    if items is None:
        return {}
    pairs = items.items() if isinstance(items, Mapping) else [_split(str(i), option) for i in items]
    out: dict[str, float] = {}
    for name, raw in pairs:
        metric(name)
        try:
            out[name] = float(raw)
        except (TypeError, ValueError):
            raise InputError(option, f"threshold for {name} must be a number", raw) from None
    return out


def _split(item: str, option: str) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise InputError(option, "use METRIC=VALUE, e.g. auc=0.70", item)
    return name.strip(), value.strip()


def read_labelled(path: str | Path, label: str | None = "label") -> Any:
    """A table from ``.parquet`` or ``.csv``; :class:`InputError` when the ``label`` column is missing."""
    import pandas as pd

    p = Path(path)
    if not p.exists():
        raise InputError("data", "file does not exist", str(p))
    suffix = p.suffix.lower()
    if suffix == ".parquet":
        frame = pd.read_parquet(p)
    elif suffix == ".csv":
        frame = pd.read_csv(p)
    else:
        raise InputError("data", "must be a .parquet or .csv file", str(p))
    if label is not None and label not in frame.columns:
        raise InputError("label", f"column not in {p.name}; columns are {', '.join(map(str, frame.columns))}", label)
    return frame


def _features(frame: Any, mv: ModelVersion) -> np.ndarray:
    names = mv.signature.input_names
    missing = [n for n in names if n not in frame.columns]
    if missing:
        raise InputError("data", f"lacks the input columns of {mv.ref}: {', '.join(missing)}")
    return frame[names].to_numpy(dtype=np.float64)


def gate(
    registry: Registry,
    candidate: str | ModelVersion,
    *,
    data: Any,
    against: str | ModelVersion | None = None,
    label: str = "label",
    minimum: Mapping[str, float] | Iterable[str] | None = None,
    maximum: Mapping[str, float] | Iterable[str] | None = None,
    max_regression: Mapping[str, float] | Iterable[str] | None = None,
    actor: str = "gate",
    record: bool = True,
) -> GateResult:
    """Score ``candidate`` (and ``against``) on ``data`` and decide.

    ``data`` is a DataFrame or a .parquet/.csv path with a ``label`` column and each
    model's input columns. ``minimum``/``maximum`` are absolute bounds; ``max_regression``
    is how much worse than ``against`` the candidate may be (lower for AUC, higher for a loss).
    When ``against`` names an alias that is not set yet (the first model), the regression
    checks are skipped and the reason says so.
    """
    mins = parse_thresholds(minimum, "--min")
    maxs = parse_thresholds(maximum, "--max")
    regs = parse_thresholds(max_regression, "--max-regression")
    if not (mins or maxs or regs):
        raise InputError("--min", "give at least one threshold: --min, --max or --max-regression")
    cand = candidate if isinstance(candidate, ModelVersion) else registry.resolve(candidate)
    base, skipped = _baseline(registry, against)
    frame = read_labelled(data, label) if isinstance(data, str | Path) else data
    if label not in frame.columns:
        raise InputError("label", "column not in the data", label)
    y = frame[label].to_numpy(dtype=np.float64)
    if len(y) == 0:
        raise InputError("data", "has no rows")
    names = sorted({*mins, *maxs, *regs})
    cand_scores = registry.load(cand).predict(_features(frame, cand))
    metrics = {n: score(n, y, cand_scores) for n in names}
    base_metrics = None
    if base is not None and regs:
        base_scores = registry.load(base).predict(_features(frame, base))
        base_metrics = {n: score(n, y, base_scores) for n in names}

    checks: list[Check] = []
    for n, t in mins.items():
        ok = metrics[n] >= t
        checks.append(Check(metric=n, rule="min", threshold=t, value=metrics[n], baseline=None, passed=ok,
                            message=f"{n} {metrics[n]:.4f} {'>=' if ok else '<'} minimum {t:.4f}"))
    for n, t in maxs.items():
        ok = metrics[n] <= t
        checks.append(Check(metric=n, rule="max", threshold=t, value=metrics[n], baseline=None, passed=ok,
                            message=f"{n} {metrics[n]:.4f} {'<=' if ok else '>'} maximum {t:.4f}"))
    if base_metrics is not None and base is not None:
        for n, t in regs.items():
            worse_by = (base_metrics[n] - metrics[n]) if metric(n).higher_is_better else (metrics[n] - base_metrics[n])
            ok = worse_by <= t
            verdict = f"within the allowed {t:.4f}" if ok else f"more than the allowed {t:.4f}"
            change = f"worse by {worse_by:.4f}" if worse_by > 0 else f"better by {-worse_by:.4f}"
            checks.append(Check(metric=n, rule="max_regression", threshold=t, value=metrics[n],
                                baseline=base_metrics[n], passed=ok,
                                message=f"{n} {metrics[n]:.4f} vs {base.ref} {base_metrics[n]:.4f}: {change}, {verdict}"))
    failed = [c.message for c in checks if not c.passed]
    accepted = not failed
    if accepted:
        reason = f"accepted {cand.ref}: " + "; ".join(c.message for c in checks)
    else:
        reason = f"rejected {cand.ref}: " + "; ".join(failed)
    if skipped:
        reason += f" ({skipped})"
    result = GateResult(candidate=cand.ref, against=base.ref if base else None, accepted=accepted, reason=reason,
                        checks=checks, metrics=metrics, baseline_metrics=base_metrics, rows=len(y), at=time.time())
    if record:
        registry.record_gate(cand, result.to_dict(), actor=actor)
    return result


def _baseline(registry: Registry, against: str | ModelVersion | None) -> tuple[ModelVersion | None, str]:
    if against is None:
        return None, "no baseline given; regression checks skipped"
    if isinstance(against, ModelVersion):
        return against, ""
    _, selector = parse_ref(against)
    try:
        return registry.resolve(against), ""
    except NotFoundError:
        if isinstance(selector, str):  # an alias not set yet: the first model of its line
            return None, f"{against} is not set; regression checks skipped"
        raise
