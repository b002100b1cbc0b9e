"""What the loop's rules measure: the monitor's own measure, with the minimum counts and windows of the loop.

Two kinds differ from :class:`~modelmill.monitoring.ProjectMeasure`, and only in what counts as data:

- ``metric_below_baseline``: a version (and variant) with fewer labelled predictions in the window than the
  rule's ``min_labels`` has no value (no data), so an AUC over five labels never starts a retraining; the
  baseline is the rule's, else the metric the gate measured on the version's holdout, else its registered
  (training) metric, and a version with none of them has no value either: a drop from nothing is unknown,
  never a pass;
- ``error_rate``: measured from the prediction log (every outcome of every server, 422 and 5xx being the
  model's failures) over the rule's own window, per model, and no data below ``min_requests``; so it needs
  no ``metrics_url`` and sees the whole fleet.

Every kind watches only the version the model's ``[models.NAME.gate] against`` alias (``production``) names,
when it is set: a candidate being rolled out (or a variant of an A/B test) is judged by its guardrails and
its experiment, and its own drift or metric is no reason to retrain the model.

The alert evaluator, its states and its actions are the monitor's: this class only measures.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from typing import Any

from modelmill.monitoring.alerts import BASELINE_KINDS, Labels, Rule, labels_of
from modelmill.monitoring.monitor import ProjectMeasure
from modelmill.monitoring.performance import PerformanceMonitor
from modelmill.store.feedback import Feedback, is_error

__all__ = ["LoopMeasure"]


class LoopMeasure(ProjectMeasure):
    """:class:`~modelmill.monitoring.ProjectMeasure` with each rule's minimum count (``min_counts`` by rule name)."""

    def __init__(self, project: Any, *, min_counts: Mapping[str, int] | None = None, watch: str | None = None,
                 **kwargs: Any) -> None:
        """``watch``: the alias whose version alone is measured (None: every version)."""
        super().__init__(project, **kwargs)
        self.min_counts = dict(min_counts or {})
        self.watch = watch

    def measure(self, rule: Rule, now: float) -> dict[Labels, float]:
        if rule.kind == "metric_below_baseline":
            found = self._metric(rule, now)
        elif rule.kind == "error_rate":
            found = self._log_error_rate(rule, now)
        else:
            found = super().measure(rule, now)
        return self._watched(rule, found)

    def _watched(self, rule: Rule, found: dict[Labels, float]) -> dict[Labels, float]:
        """Only the measurements of the watched alias's version (those without a version are kept)."""
        if self.watch is None or rule.model is None or not found:
            return found
        from modelmill.registry import Registry

        version = Registry(self.project).aliases(rule.model).get(self.watch)
        if version is None:
            return found
        return {labels: value for labels, value in found.items()
                if dict(labels).get("version", str(version)) == str(version)}

    def _metric(self, rule: Rule, now: float) -> dict[Labels, float]:
        perf = PerformanceMonitor(self.project, clock=self.clock)
        if not (perf.feedback.has_predictions() and perf.feedback.has_labels()):
            return {}
        start, end = _utc(now - rule.window), _utc(now)
        need = self.min_counts.get(rule.name, 0)
        out: dict[Labels, float] = {}
        for r in perf.summary(start=start, end=end, model=rule.model):
            value = r.get(rule.metric)
            labels = labels_of({"model": r["model"], "version": r["version"], "variant": r["variant"]})
            if r.get("n", 0) < need or value is None or math.isnan(value) or self.baseline(rule, labels) is None:
                out[labels] = math.nan  # measured, but no verdict: no data, and a firing alert stays firing
            else:
                out[labels] = float(value)
        return out

    def baseline(self, rule: Rule, labels: Labels) -> float | None:
        if rule.baseline is not None or rule.kind not in BASELINE_KINDS:
            return rule.baseline
        d = dict(labels)
        key = (d.get("model", ""), d.get("version", ""), f"gate:{rule.metric}")
        found = self._baselines.get(key)
        if found is None:
            found = self._gated(key[0], key[1], rule.metric)
            if found is not None:  # kept once known (a gate decision can come later: not kept while missing)
                self._baselines[key] = found
        return found if found is not None else super().baseline(rule, labels)

    def _gated(self, model: str, version: str, metric: str) -> float | None:
        """The metric the gate measured on the version's holdout (what it should score on new data)."""
        from modelmill.errors import InputError, NotFoundError
        from modelmill.registry import Registry

        try:
            mv = Registry(self.project).get(model, int(version))
        except (ValueError, InputError, NotFoundError):
            return None
        from modelmill.monitoring.estimate import recorded

        value = recorded((mv.gate or {}).get("metrics"), metric)
        return float(value) if isinstance(value, int | float) and math.isfinite(value) else None

    def _log_error_rate(self, rule: Rule, now: float) -> dict[Labels, float]:
        if rule.model is None:
            return super().measure(rule, now)
        frame = Feedback(self.project.offline, clock=self.clock).outcomes(rule.model, since=_utc(now - rule.window))
        if frame is None:
            return {}
        frame = frame[frame["t"] < now]
        labels = labels_of({"model": rule.model})
        if len(frame) < max(1, self.min_counts.get(rule.name, 0)):
            return {labels: math.nan} if len(frame) else {}
        errors = int(sum(is_error(int(s)) for s in frame["status"]))
        return {labels: errors / len(frame)}


def _utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC)
