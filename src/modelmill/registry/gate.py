"""The validation gate: a candidate version must meet absolute thresholds and must not regress
against the version it would replace, on the same labelled rows. The decision is recorded on
the candidate version and in the audit trail.

In CI/CD the gate is the step between training and deployment; its exit code stops the
pipeline (``V`` is the version ``train --json`` printed)::

    pytest -q                                                    # code change: tests pass
    modelmill train -t lightgbm --data train.parquet --label late --register delays --json
    modelmill gate --candidate delays@V --against delays@production \
        --data holdout.parquet --label late --min auc=0.70 --max-regression auc=0.005 \
        --max calibration_error=0.03 --max-regression logloss=0.005
    modelmill models alias delays production V --actor ci --reason "gate passed"   # deploy

    >>> parse_thresholds(["auc=0.70", "logloss=0.5"], "--min")
    {'auc': 0.7, 'logloss': 0.5}

Calibration is checked beside the ranking: ``calibration_error`` (expected calibration error, the
monitoring's measure) and ``logloss`` take ``max`` bounds and ``max_regression`` against production
(``max_calibration_error``, ``max_log_loss`` and ``max_log_loss_increase`` are their named forms). A
check whose metric cannot be computed (a model whose outputs are not probabilities, a baseline without
the metric) answers *no data*, and no data fails the gate.

The metrics are the candidate's task's (:data:`GATE_METRICS`), the task it records (``task`` in its tags or
lineage, as the registry records for a multiclass classifier or a regressor), else the flavour's reading of
the model, else binary. A **binary** model has every metric of
:data:`~modelmill.registry.evaluate.METRICS`; a **multiclass** model ``logloss`` (of its probability per
class), ``macro_f1`` (scikit-learn's ``f1_score(average="macro")``) and ``accuracy`` (of its most probable
class); a **regression** model ``rmse``, ``mae`` (lower is better) and ``r2``. A threshold on a metric the
task does not have is an :class:`InputError` naming the metric and the task's metrics: a check is never
skipped. Rows without a label are left out; no labelled rows, labels of one class (``auc``), constant labels
(``r2``) or labels that are not the model's classes answer *no data*. The baseline must do the same task.

    >>> sorted(GATE_METRICS["multiclass"]), sorted(GATE_METRICS["regression"])
    (['accuracy', 'logloss', 'macro_f1'], ['mae', 'r2', 'rmse'])
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from modelmill.errors import InputError, NotFoundError
from modelmill.registry.evaluate import METRICS, PROBABILITY_METRICS, score
from modelmill.registry.flavors import LoadedModel
from modelmill.registry.registry import Registry
from modelmill.registry.versions import ModelVersion, parse_ref

__all__ = ["GATE_METRICS", "GATE_METRIC_NAMES", "Check", "GateResult", "gate", "gate_task", "named_thresholds", "parse_thresholds",
           "read_labelled"]

#: The metrics the gate measures for a model of each task, and whether higher is better for each.
GATE_METRICS: dict[str, dict[str, bool]] = {
    "binary": {n: m.higher_is_better for n, m in sorted(METRICS.items())},
    "multiclass": {"logloss": False, "macro_f1": True, "accuracy": True},
    "regression": {"rmse": False, "mae": False, "r2": True},
}
GATE_METRIC_NAMES = sorted({n for names in GATE_METRICS.values() for n in names})


@dataclasses.dataclass(frozen=True, kw_only=True)
class Check:
    """One rule and how the candidate fared against it."""

    metric: str
    rule: str  # "min", "max" or "max_regression"
    threshold: float
    value: float | None  # None: the metric could not be computed (no data)
    baseline: float | None
    passed: bool
    message: str
    status: str = "pass"  # "pass", "fail" or "no_data" (which fails the gate too)

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
    rows: int  # the labelled rows scored
    at: float
    task: str = "binary"  # the candidate's task, whose metrics were measured

    def to_dict(self) -> dict[str, Any]:
        return {"candidate": self.candidate, "against": self.against, "accepted": self.accepted,
                "decision": "accept" if self.accepted else "reject", "reason": self.reason,
                "checks": [c.to_dict() for c in self.checks], "metrics": self.metrics,
                "baseline_metrics": self.baseline_metrics, "rows": self.rows, "at": self.at, "task": self.task}


def parse_thresholds(items: Iterable[str] | Mapping[str, float] | None, option: str) -> dict[str, float]:
    """``["auc=0.70"]`` (or a mapping) to ``{"auc": 0.70}``, naming the option on bad input. A metric no task
    has is an :class:`InputError`; whether the candidate's task has it, :func:`gate` checks."""
    if items is None:
        return {}
    pairs = items.items() if isinstance(items, Mapping) else [_split(str(i), option) for i in items]
    out: dict[str, float] = {}
    for name, raw in pairs:
        if name not in GATE_METRIC_NAMES:
            raise InputError("metric", f"must be one of {', '.join(GATE_METRIC_NAMES)}", name)
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


def named_thresholds(maximum: dict[str, float], regression: dict[str, float], *,
                     max_calibration_error: float | None = None, max_log_loss: float | None = None,
                     max_log_loss_increase: float | None = None) -> None:
    """Fold the named calibration bounds into ``maximum``/``regression`` (in place); a metric given twice
    with different values is an :class:`InputError`.

        >>> mx, rg = {"auc": 0.9}, {}
        >>> named_thresholds(mx, rg, max_calibration_error=0.02, max_log_loss_increase=0.01)
        >>> mx, rg
        ({'auc': 0.9, 'calibration_error': 0.02}, {'logloss': 0.01})
    """
    named = ((maximum, "calibration_error", max_calibration_error, "max_calibration_error"),
             (maximum, "logloss", max_log_loss, "max_log_loss"),
             (regression, "logloss", max_log_loss_increase, "max_log_loss_increase"))
    for into, name, value, field in named:
        if value is None:
            continue
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not math.isfinite(value) or value < 0:
            raise InputError(field, "must be a number, 0 or more", value)
        if name in into and into[name] != float(value):
            raise InputError(field, f"conflicts with the {name} threshold given beside it ({into[name]})",
                             value)
        into[name] = float(value)


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


def gate_task(mv: ModelVersion, loaded: LoadedModel | None = None) -> str:
    """The task ``mv`` is gated as: the one it records (``task`` in its tags or lineage, read as the labels
    route reads it; a task modelmill does not know is a ConflictError), else the flavour's reading of the
    loaded model, else binary (a signature whose one output is ``probability`` is binary). A task the gate
    has no metrics for (multi-output) is an :class:`InputError`."""
    from modelmill.store.feedback import label_task  # late: the store is not the registry's dependency

    kind = label_task(mv).kind
    if kind is None and loaded is not None:
        kind = loaded.options.get("task")
    kind = "binary" if kind is None else str(kind)
    if kind not in GATE_METRICS:
        raise InputError("candidate", f"{mv.ref} is a {kind} model; the gate measures "
                                      f"{', '.join(GATE_METRICS)} models", mv.ref)
    return kind


def _check_metrics(task: str, names: Iterable[str], ref: str) -> None:
    known = GATE_METRICS[task]
    for n in names:
        if n not in known:
            raise InputError("metric", f"is not a metric of {ref}, a {task} model: its gate metrics are "
                                       f"{', '.join(known)}", n)


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
    max_calibration_error: float | None = None,
    max_log_loss: float | None = None,
    max_log_loss_increase: float | None = None,
    actor: str = "gate",
    record: bool = True,
) -> GateResult:
    """Score ``candidate`` (and ``against``) on ``data`` and decide.

    ``data`` is a DataFrame or a .parquet/.csv path with a ``label`` column and each
    model's input columns. ``minimum``/``maximum`` are absolute bounds; ``max_regression``
    is how much worse than ``against`` the candidate may be (lower for AUC, higher for a loss).
    The metrics are the candidate's task's (:data:`GATE_METRICS`, see :func:`gate_task`); a threshold
    on a metric its task does not have is an :class:`InputError`, as is a baseline of another task.
    When ``against`` names an alias that is not set yet (the first model), the regression
    checks are skipped and the reason says so. ``max_calibration_error``, ``max_log_loss`` and
    ``max_log_loss_increase`` are ``maximum={"calibration_error": ...}``, ``maximum={"logloss": ...}``
    and ``max_regression={"logloss": ...}``. Rows without a label are left out. A metric that cannot be
    computed fails its check as no data.
    """
    mins = parse_thresholds(minimum, "--min")
    maxs = parse_thresholds(maximum, "--max")
    regs = parse_thresholds(max_regression, "--max-regression")
    named_thresholds(maxs, regs, max_calibration_error=max_calibration_error, max_log_loss=max_log_loss,
                     max_log_loss_increase=max_log_loss_increase)
    if not (mins or maxs or regs):
        raise InputError("--min", "give at least one threshold: --min, --max or --max-regression")
    cand = candidate if isinstance(candidate, ModelVersion) else registry.resolve(candidate)
    base, skipped = _baseline(registry, against)
    frame = read_labelled(data, label) if isinstance(data, str | Path) else data
    if label not in frame.columns:
        raise InputError("label", "column not in the data", label)
    if len(frame) == 0:
        raise InputError("data", "has no rows")
    names = sorted({*mins, *maxs, *regs})
    cand_model = registry.load(cand)
    task = gate_task(cand, cand_model)
    _check_metrics(task, names, cand.ref)
    labelled = frame[~frame[label].isna().to_numpy()]
    cand_measured = _measure(task, names, labelled, label, cand, cand_model)
    measured = cand_measured[0]
    base_measured: tuple[dict[str, float | None], dict[str, str]] | None = None
    if base is not None and regs:
        base_model = registry.load(base)
        base_task = gate_task(base, base_model)
        if base_task != task:
            raise InputError("against", f"{base.ref} is a {base_task} model and {cand.ref} a {task} one: a "
                                        "baseline must do the candidate's task", base.ref)
        base_measured = _measure(task, names, labelled, label, base, base_model)

    checks: list[Check] = []
    why = cand_measured[1]
    for n, t in mins.items():
        checks.append(_bound(n, "min", t, measured[n], why.get(n, "")))
    for n, t in maxs.items():
        checks.append(_bound(n, "max", t, measured[n], why.get(n, "")))
    if base_measured is not None and base is not None:
        for n, t in regs.items():
            reason = why.get(n) or base_measured[1].get(n, "")
            checks.append(_regression(task, n, t, measured[n], base_measured[0][n], base.ref, reason))
    metrics = {n: v for n, v in measured.items() if v is not None}
    base_metrics = (None if base_measured is None
                    else {n: v for n, v in base_measured[0].items() if v is not None})
    failed = [c.message for c in checks if not c.passed]
    accepted = not failed
    if accepted:
        reason = f"accepted {cand.ref}: " + "; ".join(c.message for c in checks)
    else:
        reason = f"rejected {cand.ref}: " + "; ".join(failed)
    if skipped:
        reason += f" ({skipped})"
    result = GateResult(candidate=cand.ref, against=base.ref if base else None, accepted=accepted, reason=reason,
                        checks=checks, metrics=metrics, baseline_metrics=base_metrics, rows=len(labelled),
                        at=time.time(), task=task)
    if record:
        registry.record_gate(cand, result.to_dict(), actor=actor)
    return result


def _measure(task: str, names: list[str], frame: Any, label: str, mv: ModelVersion,
             model: LoadedModel) -> tuple[dict[str, float | None], dict[str, str]]:
    """Each metric of ``mv``'s predictions on the labelled rows ``frame``: its value, or None (no data) with
    the reason in the second mapping."""
    if len(frame) == 0:
        return dict.fromkeys(names), dict.fromkeys(names, "no labelled rows")
    out = model.predict(_features(frame, mv))
    if task == "multiclass":
        return _multiclass_scores(names, frame[label].to_numpy(dtype=object), out, mv, model)
    y = _numeric_labels(frame[label], task)
    if task == "regression":
        return _regression_scores(names, y, out)
    return _scores(names, y, out)


def _numeric_labels(labels: Any, task: str) -> np.ndarray:
    import pandas as pd

    y = pd.to_numeric(labels, errors="coerce")
    if y.isna().any():
        bad = labels[y.isna()].iloc[0]
        raise InputError("label", f"must be numeric for a {task} model", bad)
    return y.to_numpy(dtype=np.float64)


def _scores(names: Iterable[str], y: np.ndarray, p: Any) -> tuple[dict[str, float | None], dict[str, str]]:
    """A binary model's metrics of ``p`` against ``y``; None (no data) where one is undefined: a probability
    metric of outputs that are not probabilities, AUC of labels of one class, or a value that is not finite."""
    p = np.asarray(p, dtype=np.float64)
    finite = p.ndim == 1 and len(p) > 0 and bool(np.all(np.isfinite(p)))
    probabilities = finite and p.min() >= 0 and p.max() <= 1
    out: dict[str, float | None] = {}
    why: dict[str, str] = {}
    for n in names:
        if n in PROBABILITY_METRICS and not probabilities:
            out[n], why[n] = None, "outputs that are not probabilities"
            continue
        try:
            value = score(n, y, p)
        except InputError:  # AUC of labels of one class
            out[n], why[n] = None, "the labels are of one class only"
            continue
        out[n] = value if math.isfinite(value) else None
        if out[n] is None:
            why[n] = "a non-finite value"
    return out, why


def _regression_scores(names: Iterable[str], y: np.ndarray, p: Any) -> tuple[dict[str, float | None],
                                                                              dict[str, str]]:
    """A regression model's RMSE, MAE and R²; None (no data) for outputs that are not one finite number
    per row, or R² of constant labels."""
    p = np.asarray(p, dtype=np.float64)
    if p.ndim != 1 or len(p) != len(y) or not bool(np.all(np.isfinite(p))):
        return dict.fromkeys(names), dict.fromkeys(names, "outputs that are not one finite number per row")
    out: dict[str, float | None] = {}
    why: dict[str, str] = {}
    for n in names:
        if n == "r2" and float(np.ptp(y)) == 0.0:
            out[n], why[n] = None, "the labels are constant, so r2 is undefined"
            continue
        value = score(n, y, p)
        out[n] = value if math.isfinite(value) else None
        if out[n] is None:
            why[n] = "a non-finite value"
    return out, why


def _multiclass_scores(names: Iterable[str], labels: np.ndarray, p: Any, mv: ModelVersion,
                       model: LoadedModel) -> tuple[dict[str, float | None], dict[str, str]]:
    """A multiclass model's log loss, macro F1 and accuracy (:func:`~modelmill.monitoring.performance.
    multiclass_metrics`) of its probability per class against the labels, each the index of its class in the
    model's output order; None (no data) for outputs that are not a probability per class, or labels that
    are not the model's classes."""
    from modelmill.monitoring.performance import multiclass_metrics

    names = list(names)
    proba = np.asarray(p, dtype=np.float64)
    if proba.ndim != 2 or len(proba) != len(labels) or proba.shape[1] < 2:
        return dict.fromkeys(names), dict.fromkeys(names, "outputs that are not a probability per class")
    if not bool(np.all(np.isfinite(proba))) or proba.min() < 0 or proba.max() > 1:
        return dict.fromkeys(names), dict.fromkeys(names, "outputs that are not probabilities")
    idx, classes = _class_indices(labels, proba.shape[1], mv, model)
    stray = int(np.count_nonzero(idx < 0))
    if stray:
        first = labels[idx < 0][0]
        known = ", ".join(map(str, classes)) if classes else f"the class indices 0 to {proba.shape[1] - 1}"
        return dict.fromkeys(names), dict.fromkeys(
            names, f"{stray} of {len(labels)} labels (the first {first!r}) are not its classes: {known}")
    values = multiclass_metrics(idx, proba)
    got = {"logloss": values["log_loss"], "macro_f1": values["macro_f1"], "accuracy": values["accuracy"]}
    out: dict[str, float | None] = {}
    why: dict[str, str] = {}
    for n in names:
        out[n] = got[n] if math.isfinite(got[n]) else None
        if out[n] is None:
            why[n] = "a non-finite value"
    return out, why


def _class_indices(labels: np.ndarray, width: int, mv: ModelVersion,
                   model: LoadedModel) -> tuple[np.ndarray, list[Any]]:
    """Each label's class index in the model's output order (-1: not a class), and the classes in that order:
    the class values the version records, else the class names serving answers with, else the index itself."""
    from modelmill.monitoring.performance import class_indices
    from modelmill.store.feedback import label_task

    recorded = label_task(mv).classes
    if len(recorded) == width:
        return class_indices(_floats(labels), recorded), [f"{c:g}" for c in recorded]
    named = [str(c) for c in model.options.get("classes") or ()]
    if len(named) != width:
        return class_indices(_floats(labels)), []
    by_name = {c: i for i, c in enumerate(named)}
    by_value: dict[float, int] = {}
    for i, c in enumerate(named):
        try:
            by_value.setdefault(float(c), i)
        except ValueError:
            pass
    idx = np.empty(len(labels), dtype=np.int64)
    for j, v in enumerate(labels):
        number = isinstance(v, numbers.Real) and not isinstance(v, bool | np.bool_)
        idx[j] = by_value.get(float(v), by_name.get(str(v), -1)) if number else by_name.get(str(v), -1)
    return idx, named


def _floats(labels: np.ndarray) -> np.ndarray:
    """Labels as floats; NaN (no class) for one that is not a number."""
    out = np.full(len(labels), np.nan)
    for j, v in enumerate(labels):
        if isinstance(v, numbers.Real) and not isinstance(v, bool | np.bool_):
            out[j] = float(v)
    return out


def _no_data(n: str, rule: str, t: float, value: float | None, baseline: float | None, whose: str,
             reason: str) -> Check:
    return Check(metric=n, rule=rule, threshold=t, value=value, baseline=baseline, passed=False,
                 status="no_data", message=f"{n}: no data for {whose} ({reason or 'a non-finite value'})")


def _bound(n: str, rule: str, t: float, value: float | None, reason: str) -> Check:
    if value is None:
        return _no_data(n, rule, t, None, None, "the candidate", reason)
    ok = value >= t if rule == "min" else value <= t
    sign = (">=" if ok else "<") if rule == "min" else ("<=" if ok else ">")
    word = "minimum" if rule == "min" else "maximum"
    return Check(metric=n, rule=rule, threshold=t, value=value, baseline=None, passed=ok,
                 status="pass" if ok else "fail", message=f"{n} {value:.4f} {sign} {word} {t:.4f}")


def _regression(task: str, n: str, t: float, value: float | None, baseline: float | None, against: str,
                reason: str) -> Check:
    if value is None or baseline is None:
        whose = "the candidate" if value is None else against
        return _no_data(n, "max_regression", t, value, baseline, whose, reason)
    worse_by = (baseline - value) if GATE_METRICS[task][n] else (value - baseline)
    ok = worse_by <= t
    verdict = f"within the allowed {t:.4f}" if ok else f"more than the allowed {t:.4f}"
    change = f"worse by {worse_by:.4f}" if worse_by > 0 else f"better by {-worse_by:.4f}"
    return Check(metric=n, rule="max_regression", threshold=t, value=value, baseline=baseline, passed=ok,
                 status="pass" if ok else "fail",
                 message=f"{n} {value:.4f} vs {against} {baseline:.4f}: {change}, {verdict}")


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
