"""The monitoring loop: drift and quality per window of the prediction log, then the alert rules.

Configured by ``[monitoring]`` in modelmill.toml::

    [monitoring]
    interval = "60s"           # how often `modelmill monitor` evaluates
    window = "1h"              # the window of the prediction log each round looks at
    label_window = "7d"        # the delayed-label metrics: predictions of this long that have a label
    threshold = 0.5            # a binary model's accuracy counts output >= threshold as positive
    models = ["flights"]       # default: every model in the log
    metrics_url = "http://127.0.0.1:8000/metrics"   # serving's /metrics, for error_rate rules
    exporter_port = 9108       # serve the monitoring gauges here (optional)

    [monitoring.drift]         # DriftOptions: thresholds and per-column overrides
    drift_share = 0.5
    calibrated = true          # thresholds from the reference's own variability (default false: fixed)
    quantile = 0.99            # … at this quantile: an A/A window flags a column 1% of the time
    calibration_windows = 200  # null windows per column and window size (stored with the reference)
    [monitoring.drift.columns.dep_delay]
    test = "psi"
    threshold = 0.2

    [[monitoring.rules]] …     # see modelmill.monitoring.alerts
    [[monitoring.sinks]] …

Rules or not, every round reports (``performance`` in :meth:`Monitor.run_once`) the
delayed-label metrics of every version served in the last ``label_window``, by its
task (:data:`~modelmill.monitoring.performance.TASK_METRICS`: binary ``auc``,
``log_loss``, ``accuracy``; regression ``mae``, ``rmse``; multiclass ``log_loss``,
``macro_f1``, ``accuracy``, from the class probabilities the log keeps), each with ``n``, the
number of labelled predictions behind it; with none, the metric is ``no_data``
(value null, n 0). These are measurements, not checks: they pass or fail nothing
until a ``metric_below_baseline`` rule names them. Beside them, each binary model's row carries
``estimated``: the same metrics estimated from every answered prediction's probability, labelled or
not (:mod:`modelmill.monitoring.estimate`), each with its interval, the realised value and the error,
and the version's recorded calibration error; an ``estimated_metric_drop`` rule alerts on it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from modelmill.errors import ConfigError, ConflictError, InputError, NotFoundError
from modelmill.monitoring.alerts import (
    BASELINE_KINDS,
    ActionRegistry,
    AlertEvaluator,
    Labels,
    Rule,
    Sink,
    labels_of,
    rules_from_config,
    sink_from_mapping,
)
from modelmill.monitoring.baselines import logged_reference
from modelmill.monitoring.drift import DriftOptions, DriftReport
from modelmill.monitoring.estimate import Estimate, estimate, recorded
from modelmill.monitoring.exporter import MonitoringExporter
from modelmill.monitoring.performance import (
    METRICS,
    PROBABILITIES,
    PerformanceMonitor,
    parse_duration,
    stacked_probabilities,
    task_metrics,
    task_of,
)
from modelmill.monitoring.reference import ReferenceStore
from modelmill.project import Project
from modelmill.store.feedback import CLOCKS, Feedback, label_task
from modelmill.store.maps import map_frame
from modelmill.store.tables.monitoring import monitoring_windows

__all__ = ["DEFAULT_LABEL_WINDOW", "Monitor", "MonitoringConfig", "ProjectMeasure", "missing_reference"]

log = logging.getLogger("modelmill.monitoring")

#: Seconds of predictions whose labels the default delayed-label metrics cover: labels arrive late (a
#: click in seconds, a loan default in months), so a week rather than the drift window's hour.
DEFAULT_LABEL_WINDOW = 7 * 86400.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class MonitoringConfig:
    """The ``[monitoring]`` section, validated."""

    interval: float = 60.0
    window: float = 3600.0
    label_window: float = DEFAULT_LABEL_WINDOW
    threshold: float = 0.5
    models: tuple[str, ...] = ()
    metrics_url: str | None = None
    exporter_port: int | None = None
    drift: DriftOptions = dataclasses.field(default_factory=DriftOptions)
    rules: tuple[Rule, ...] = ()
    sinks: tuple[Sink, ...] = ()
    clock: str = "wall"

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> MonitoringConfig:
        known = {"interval", "window", "label_window", "threshold", "model", "models", "metrics_url",
                 "exporter_port", "drift", "rules", "sinks", "clock"}
        unknown = set(section) - known
        if unknown:
            raise ConfigError(f"monitoring.{sorted(unknown)[0]}", section[sorted(unknown)[0]],
                              f"one of the keys {sorted(known)}")
        models = section.get("models") or ([section["model"]] if section.get("model") else [])
        port = section.get("exporter_port")
        if port is not None and (not isinstance(port, int) or not 0 < port < 65536):
            raise ConfigError("monitoring.exporter_port", port, "a TCP port number")
        clock = section.get("clock", "wall")
        if clock not in CLOCKS:
            raise ConfigError("monitoring.clock", clock, "'wall' (windows over when requests were answered) or "
                              "'event' (over the event time their features were judged at: replays)")
        threshold = section.get("threshold", 0.5)
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 < threshold < 1:
            raise ConfigError("monitoring.threshold", threshold, "a number between 0 and 1 (exclusive)")
        return cls(
            interval=parse_duration(section.get("interval", 60), field="monitoring.interval"),
            window=parse_duration(section.get("window", 3600), field="monitoring.window"),
            label_window=parse_duration(section.get("label_window", DEFAULT_LABEL_WINDOW),
                                        field="monitoring.label_window"),
            threshold=float(threshold),
            models=tuple(str(m) for m in models),
            metrics_url=section.get("metrics_url"),
            exporter_port=port,
            drift=DriftOptions.from_mapping(section.get("drift", {})),
            rules=tuple(rules_from_config(section)),
            sinks=tuple(sink_from_mapping(s) for s in section.get("sinks", [])),
            clock=str(clock),
        )


def _utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC)


def missing_reference(model: str, version: int) -> str:
    """Why a served version's drift is "no data" when it has no reference profile, and how to make one."""
    return (f"no reference profile for {model}@{version}, so its drift is not checked (no data); make one from "
            f"the data it was trained on: modelmill reference {model}@{version} --data TRAIN.parquet")


def _is_error_status(status: str) -> bool:
    # 422 is a model that raised on a valid request; 5xx the server's own failure. Other 4xx are the caller's.
    return status.startswith("5") or status in ("422", "error")


class ProjectMeasure:
    """Measures rules from the project's own records: the prediction log, labels, monitoring
    windows, offline tables, and (for error rates) serving's /metrics."""

    def __init__(self, project: Project, *, metrics_url: str | None = None,
                 errors_metric: str = "modelmill_requests_total", status_label: str = "status",
                 clock: str = "wall") -> None:
        self.project = project
        self.clock = clock
        self.metrics_url = metrics_url
        self.errors_metric = errors_metric
        self.status_label = status_label
        self._last_counts: dict[Labels, tuple[float, float]] = {}
        #: Per drift rule with ``score = "importance"``: the versions measured by their drifted share
        #: instead (no importance stored), with why; reported in the round's ``rules``.
        self.fallbacks: dict[str, dict[str, str]] = {}
        self._baselines: dict[tuple[str, str, str], float | None] = {}

    def __repr__(self) -> str:
        return f"ProjectMeasure({self.project!r}, metrics_url={self.metrics_url!r})"

    def measure(self, rule: Rule, now: float) -> dict[Labels, float]:
        start, end = _utc(now - rule.window), _utc(now)
        if rule.kind == "latency_p95":
            perf = PerformanceMonitor(self.project, clock=self.clock)
            if not perf.feedback.has_predictions():
                return {}
            rows = perf.latency(window=rule.window * 2, start=start, end=end, model=rule.model)
            return _by_group(rows, "p95_ms")
        if rule.kind == "metric_below_baseline":
            perf = PerformanceMonitor(self.project, clock=self.clock)
            if not (perf.feedback.has_predictions() and perf.feedback.has_labels()):
                return {}
            return _by_group(perf.summary(start=start, end=end, model=rule.model), rule.metric)
        if rule.kind == "estimated_metric_drop":
            return self._estimated(rule, now)
        if rule.kind == "drift_share":
            return self._drift_share(rule, now)
        if rule.kind == "feature_freshness":
            return self._freshness(rule, now)
        return self._error_rate(rule)

    def baseline(self, rule: Rule, labels: Labels) -> float | None:
        if rule.baseline is not None or rule.kind not in BASELINE_KINDS:
            return rule.baseline
        d = dict(labels)
        key = (d.get("model", ""), d.get("version", ""), rule.metric)
        if key not in self._baselines:
            self._baselines[key] = self._registered_metric(*key)
        return self._baselines[key]

    def _registered_metric(self, model: str, version: str, metric: str) -> float | None:
        from modelmill.registry import Registry

        try:
            mv = Registry(self.project).resolve(f"{model}@{version}")
        except (NotFoundError, InputError):
            return None
        value = recorded(mv.metrics, metric)
        return float(value) if value is not None else None

    def _estimated(self, rule: Rule, now: float) -> dict[Labels, float]:
        """The estimated metric of each version's predictions in the window (no labels read): a version
        with fewer than ``min_rows`` of them, outputs that are not probabilities, or a task other than
        binary classification has no value."""
        from modelmill.registry import Registry  # late: the registry makes profiles through monitoring

        feedback = Feedback(self.project.offline, clock=self.clock)
        registry = Registry(self.project)
        start, end = _utc(now - rule.window), _utc(now)
        out: dict[Labels, float] = {}
        for model, version in feedback.served_versions(start=start, end=end):
            if rule.model and model != rule.model:
                continue
            labels = labels_of({"model": model, "version": version})
            try:
                binary = task_of(**_declared(registry, model, version))[0] == "binary"
            except ConflictError:  # a task modelmill cannot read: nothing is estimated against a guess
                binary = False
            if not binary:
                out[labels] = math.nan
                continue
            est = estimate(window_outputs(feedback, model, version, start=start, end=end))
            value = est.value(rule.metric)
            out[labels] = math.nan if est.n < max(1, rule.min_rows) or value is None else value
        return out

    def _drift_share(self, rule: Rule, now: float) -> dict[Labels, float]:
        """The latest drifted share of each version's windows, or with ``score = "importance"`` the
        importance-weighted score (:attr:`~modelmill.monitoring.drift.DriftReport.importance_score`); a
        window with no stored importance gives its share, and :attr:`fallbacks` says so for the rule."""
        t = monitoring_windows
        q = sa.select(t.c.model, t.c.version, t.c.drift_share, t.c.drift, t.c.at).where(
            t.c.at >= now - rule.window, t.c.at <= now, t.c.drift_share.is_not(None)).order_by(t.c.at)
        if rule.model:
            q = q.where(t.c.model == rule.model)
        out: dict[Labels, float] = {}
        fallbacks: dict[str, str] = {}
        with self.project.db.engine.connect() as conn:
            for r in conn.execute(q):  # ordered by time: the latest window of each version wins
                key = f"{r.model}@{r.version}"
                value = float(r.drift_share)
                fallbacks.pop(key, None)
                if rule.score == "importance":
                    imp = (r.drift or {}).get("importance") or {}
                    if imp.get("score") is not None:
                        value = float(imp["score"])
                    else:
                        fallbacks[key] = (f"{imp.get('note') or 'no feature importance stored'}: "
                                          "the drifted share is used instead")
                out[labels_of({"model": r.model, "version": r.version})] = value
        self.fallbacks[rule.name] = fallbacks
        return out

    def _freshness(self, rule: Rule, now: float) -> dict[Labels, float]:
        assert rule.table is not None
        labels = labels_of({"table": rule.table})
        if not self.project.offline.exists(rule.table):
            return {labels: math.inf}
        with self.project.offline.connect([rule.table]) as con:
            row = con.execute(f'SELECT max("{rule.time_column}") FROM {rule.table}').fetchone()
        latest = row[0] if row else None
        if latest is None:
            return {labels: math.inf}
        if latest.tzinfo is None:
            latest = latest.replace(tzinfo=dt.UTC)
        return {labels: max(0.0, now - latest.timestamp())}

    def _error_rate(self, rule: Rule) -> dict[Labels, float]:
        if not self.metrics_url:
            raise ConfigError("monitoring.metrics_url", None, "serving's /metrics URL, for error_rate rules")
        import httpx
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(self.metrics_url, timeout=5.0).text
        totals: dict[Labels, list[float]] = {}
        wanted = self.errors_metric.removesuffix("_total")
        for family in text_string_to_metric_families(text):
            if family.name != wanted:
                continue
            for s in family.samples:
                if not s.name.endswith("_total"):
                    continue
                status = str(s.labels.get(self.status_label, ""))
                key = labels_of({k: v for k, v in s.labels.items() if k == "model"})
                acc = totals.setdefault(key, [0.0, 0.0])
                acc[1] += s.value
                if _is_error_status(status):
                    acc[0] += s.value
        out: dict[Labels, float] = {}
        for key, (errors, total) in totals.items():
            prev = self._last_counts.get(key)
            self._last_counts[key] = (errors, total)
            if prev is not None and total > prev[1]:
                out[key] = (errors - prev[0]) / (total - prev[1])
        return out


def _by_group(rows: Sequence[Mapping[str, Any]], field: str) -> dict[Labels, float]:
    out: dict[Labels, float] = {}
    for r in rows:
        value = r.get(field)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        out[labels_of({"model": r["model"], "version": r["version"], "variant": r["variant"]})] = float(value)
    return out


class Monitor:
    """One round (:meth:`run_once`) or a loop (:meth:`run`) of drift, quality and alerts."""

    def __init__(self, project: Project, config: MonitoringConfig, *, actions: ActionRegistry | None = None,
                 exporter: MonitoringExporter | None = None, measure: ProjectMeasure | None = None) -> None:
        self.project = project
        self.config = config
        self.actions = actions
        self.exporter = exporter
        self.measure = measure or ProjectMeasure(project, metrics_url=config.metrics_url, clock=config.clock)
        self._stop = threading.Event()
        self._evaluator: AlertEvaluator | None = None
        self._warned: set[tuple[str, int]] = set()

    def __repr__(self) -> str:
        return f"Monitor({self.project!r}, interval={self.config.interval}, window={self.config.window})"

    def now(self) -> float:
        """The time a round judges at when none is given: the wall clock, or under ``[monitoring] clock =
        "event"`` the online store's watermark (the newest event time materialised or aggregated; see
        :doc:`the event clock </concepts/clock>`), the wall clock while there is none yet."""
        if self.config.clock == "event":
            from modelmill.features import FeatureStore

            mark = FeatureStore(self.project).watermark()
            if mark is not None:
                return mark / 1e6
        return time.time()

    @property
    def evaluator(self) -> AlertEvaluator:
        """The alert evaluator of this monitor's rules: one for its lifetime, so each rule's last status
        (:attr:`AlertEvaluator.statuses`) is kept between rounds."""
        if self._evaluator is None:
            self._evaluator = AlertEvaluator(self.project, self.config.rules, measure=self.measure,
                                             sinks=self.config.sinks, actions=self.actions)
        return self._evaluator

    def window_drift(self, model: str, version: int, *, start: float, end: float) -> tuple[DriftReport, int] | None:
        """Drift of the logged features (and outputs) of one model version in [start, end) against its
        stored reference; None when the version has no reference or no traffic."""
        refs = ReferenceStore(self.project)
        options = self.config.drift.for_model(model)
        trained = refs.exists(model, version)
        if not trained and options.reference == "training":
            return None  # run_once reports it as "no data", naming the missing reference
        frame = self.logged_features(model, version, start=start, end=end)
        if frame is None or len(frame) == 0:
            return None
        outputs = frame.pop("__output__").to_numpy(dtype=np.float64)
        probabilities = stacked_probabilities(frame.pop(PROBABILITIES)) if PROBABILITIES in frame else None
        if probabilities is not None:  # a multiclass model: the drift of each class's probability
            outputs = probabilities
        profile = refs.load(model, version) if trained else None
        logged = logged_reference(self.project.offline, model, version, options, start=start, end=end,
                                  clock=self.config.clock, kinds=profile.kinds if profile else None)
        if logged is not None:  # rolling or seasonal: the log's own reference, its calibrations not kept
            described = logged.describe(model, version)
            report = (logged.profile.compare(frame, predictions=outputs, options=options) if logged.profile
                      else DriftReport(columns={}, share_threshold=options.drift_share))
            report = dataclasses.replace(report, reference=described)
        else:
            assert profile is not None
            known = len(profile.calibrations)
            report = dataclasses.replace(profile.compare(frame, predictions=outputs, options=options),
                                         reference={"kind": "training"})
            if len(profile.calibrations) > known:  # calibrated at a new window size: keep it for the next rounds
                refs.save_calibrations(model, version, profile)
        note = (profile.importance_note if profile else
                f"{model}@{version} has no reference profile, so no stored feature importance")
        report = dataclasses.replace(report, importance=profile.importance if profile else None,
                                     importance_note=note or "no feature importance stored with the profile")
        return report, len(frame)

    def logged_features(self, model: str, version: int, *, start: float, end: float) -> pd.DataFrame | None:
        """The logged features (one column each) and outputs (column ``__output__``) of a window, and a
        multiclass model's class probabilities (column ``__probabilities__``: a list per row)."""
        tbl = Feedback(self.project.offline, clock=self.config.clock).served_features(model, version, start=_utc(start), end=_utc(end))
        if tbl is None or tbl.num_rows == 0:
            return None
        frame = map_frame(tbl.column("features"))
        frame["__output__"] = tbl.column("output").to_numpy(zero_copy_only=False)
        if "probabilities" in tbl.column_names and tbl.column("probabilities").null_count < tbl.num_rows:
            frame[PROBABILITIES] = tbl.column("probabilities").to_pylist()
        return frame

    def served_versions(self, *, start: float, end: float) -> list[tuple[str, int]]:
        rows = Feedback(self.project.offline, clock=self.config.clock).served_versions(start=_utc(start), end=_utc(end))
        return [(m, v) for m, v in rows if not self.config.models or m in self.config.models]

    def performance(self, now: float | None = None) -> list[dict[str, Any]]:
        """The delayed-label metrics of every version served in the last ``label_window``, by its task.

        One row per (model, version): ``model``, ``version``, ``task`` (``binary``, ``regression`` or
        ``multiclass``; None when the version records a task modelmill does not know), ``task_from``
        (``declared``, ``metrics``, ``labels`` or ``default``: see
        :func:`~modelmill.monitoring.performance.task_of`), ``window_start``/``window_end`` (epoch
        seconds: the predictions' times), ``n`` (its labelled predictions), ``status`` (``measured``
        when some metric has a value, else ``no_data`` with a ``reason``), ``reason`` and ``metrics``:
        each of the task's metrics as ``{"value", "n", "status", "reason"}`` (see
        :func:`~modelmill.monitoring.performance.task_metrics`). Read through the one label join:
        each prediction's newest label counts, once. ``estimated``: the
        :class:`~modelmill.monitoring.estimate.Estimate` of a binary model's answered predictions in the
        window (no labels needed), each metric with ``realised`` (the value above, or None) and ``error``.
        """
        now = self.now() if now is None else now
        start = now - self.config.label_window
        versions = self.served_versions(start=start, end=now)
        feedback = Feedback(self.project.offline, clock=self.config.clock)
        groups: dict[tuple[str, int], pd.DataFrame] = {}
        if versions and feedback.has_labels():
            frame = feedback.labelled(start=_utc(start), end=_utc(now)).select(
                ["model", "version", "output", "label", "probabilities"]).to_pandas()
            groups = {(str(m), int(v)): part for (m, v), part in frame.groupby(["model", "version"], sort=False,
                                                                                   observed=True)}
        from modelmill.registry import Registry  # late: the registry makes profiles through monitoring

        registry = Registry(self.project)
        rows = []
        for model, version in versions:
            part = groups.get((model, version))
            y = part["label"].to_numpy(dtype=np.float64) if part is not None else np.empty(0)
            p = part["output"].to_numpy(dtype=np.float64) if part is not None else np.empty(0)
            row: dict[str, Any] = {"model": model, "version": version, "task": None, "task_from": None,
                                   "window_start": start, "window_end": now, "n": len(y), "status": "no_data",
                                   "reason": None, "metrics": {},
                                   "estimated": Estimate(n=0, status="no_data", reason="the model's task is not "
                                                         "known: only a binary classifier's is estimated").as_dict()}
            try:
                task, task_from = task_of(**_declared(registry, model, version), labels=y)
            except ConflictError as exc:  # a task modelmill cannot read: nothing is measured against a guess
                rows.append({**row, "reason": exc.message})
                continue
            more = _multiclass(registry, model, version, part) if task == "multiclass" else {}
            metrics = task_metrics(task, y, p, threshold=self.config.threshold, **more)
            measured = any(m["status"] == "measured" for m in metrics.values())
            reason = None if measured else next((m["reason"] for m in metrics.values()), None) or (
                f"no delayed-label metrics are computed for {task} models yet")
            if task == "binary":
                row["estimated"] = _beside(estimate(
                    window_outputs(feedback, model, version, start=_utc(start), end=_utc(now)),
                    threshold=self.config.threshold, calibration_error=_calibration_error(registry, model, version)
                ), metrics)
            else:
                row["estimated"]["reason"] = f"only a binary classifier's metrics are estimated, not a {task} model's"
            rows.append({**row, "task": task, "task_from": task_from, "status": "measured" if measured else "no_data",
                         "reason": reason, "metrics": metrics})
        return rows

    def run_once(self, now: float | None = None) -> dict[str, Any]:
        """Drift and quality of the last window for every served version, stored; then the rules.

        Each window says ``status``: ``pass``, ``fail`` (the dataset drifted) or ``no_data`` with a
        ``reason`` (no reference profile, or no logged features), and so does each alert rule
        (``rules``: its :class:`~modelmill.monitoring.alerts.RuleStatus`). The round's ``status`` is the
        worst of them: ``fail`` also while an alert is firing, and ``no_data`` when nothing was served in
        the window at all. ``performance`` holds :meth:`performance`'s rows (measurements: they do not
        change ``status``).
        """
        now = self.now() if now is None else now
        start = now - self.config.window
        perf = PerformanceMonitor(self.project, clock=self.config.clock)
        quality: list[dict[str, Any]] = []
        if perf.feedback.has_predictions() and perf.feedback.has_labels():
            quality = perf.summary(start=_utc(start), end=_utc(now))
        windows = []
        refs = ReferenceStore(self.project)
        for model, version in self.served_versions(start=start, end=now):
            result = self.window_drift(model, version, start=start, end=now)
            metrics = [_jsonable(r) for r in quality if r["model"] == model and int(r["version"]) == version]
            report, n = result if result is not None else (None, 0)
            if report is not None and not report.columns:  # nothing could be tested: not a pass
                status, reason = "no_data", (report.reference or {}).get("reason") or (
                    f"no column of {model}@{version} has values in the window ("
                    + "; ".join(f"{c} {why}" for c, why in report.no_data.items()) + ")")
                report = None
            elif report is not None:
                status, reason = ("fail" if report.dataset_drift else "pass"), None
            elif not refs.exists(model, version):
                status, reason = "no_data", missing_reference(model, version)
                if (model, version) not in self._warned:  # said once per monitor, not every round
                    self._warned.add((model, version))
                    log.warning("%s", reason)
            else:
                status, reason = "no_data", f"no logged features of {model}@{version} in the window"
            row = {"model": model, "version": version, "at": now, "window_start": start, "window_end": now,
                   "n_rows": n, "drift_share": report.drift_share if report else None,
                   "dataset_drift": report.dataset_drift if report else None,
                   "drift": report.to_dict() if report else {}, "metrics": metrics}
            with self.project.db.begin() as conn:
                conn.execute(monitoring_windows.insert().values(**row))
            windows.append({**{k: row[k] for k in ("model", "version", "n_rows", "drift_share", "dataset_drift")},
                            "drifted": sorted(report.drifted) if report else [], "status": status, "reason": reason,
                            "importance_score": report.importance_score if report else None,
                            "reference": (report.reference if report else result[0].reference if result else None)})
            if self.exporter is not None and report is not None:
                self.exporter.set_drift(model, version, report)
        if self.exporter is not None:
            self.exporter.set_performance(quality, METRICS)
        evaluator = self.evaluator
        changed = evaluator.evaluate(now)
        active = evaluator.active()
        rules = [evaluator.statuses[r.name].as_dict() for r in self.config.rules if r.name in evaluator.statuses]
        for rule in rules:
            fallbacks = getattr(self.measure, "fallbacks", {}).get(rule["rule"])
            if fallbacks:
                rule["score_fallback"] = fallbacks
        if self.exporter is not None:
            self.exporter.set_alerts({a["rule"] for a in active if a["state"] == "firing"},
                                     [r.name for r in self.config.rules])
            self.exporter.mark_run(now)
        firing = [a for a in active if a["state"] == "firing"]
        # the round is as bad as its worst check: a drifted window, a breached rule or a firing alert fail
        # it; a window or a rule that could not look makes it "no data", never "pass"
        statuses = {w["status"] for w in windows} | {r["status"] for r in rules}
        overall = ("fail" if "fail" in statuses or firing else
                   "no_data" if "no_data" in statuses or not windows else "pass")
        reasons = [w["reason"] for w in windows if w["reason"]]
        if not windows:
            reasons = [f"no predictions logged between {_utc(start).isoformat()} and {_utc(now).isoformat()}"
                       + ("" if not self.config.models else f" for {', '.join(self.config.models)}")]
        reasons += [f"rule {r['rule']}: {r['reason']}" for r in rules if r["status"] == "no_data"]
        return {"at": now, "status": overall, "reasons": reasons, "windows": windows, "rules": rules,
                "performance": self.performance(now), "label_window": self.config.label_window,
                "quality": [_jsonable(r) for r in quality],
                "alerts_changed": [{"rule": a.rule, "status": a.status, "labels": a.labels} for a in changed],
                "alerts_active": [{"rule": a["rule"], "state": a["state"], "labels": a["labels"]} for a in active]}

    def run(self, *, iterations: int | None = None) -> None:
        """Evaluate every ``interval`` seconds until :meth:`stop` (or ``iterations`` rounds)."""
        done = 0
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.run_once()
            except Exception:  # one bad round (a backend hiccup) must not end the monitor
                log.exception("monitoring round failed")
            done += 1
            if iterations is not None and done >= iterations:
                return
            self._stop.wait(max(0.0, self.config.interval - (time.monotonic() - started)))

    def stop(self) -> None:
        self._stop.set()


def window_outputs(feedback: Feedback, model: str, version: int, *, start: dt.datetime,
                   end: dt.datetime) -> np.ndarray:
    """The outputs a version answered with in [start, end) (a failed request has none)."""
    tbl = feedback.served_features(model, version, start=start, end=end)
    if tbl is None or tbl.num_rows == 0:
        return np.empty(0)
    return np.asarray(tbl.column("output").drop_null().to_numpy(), dtype=np.float64)


def _calibration_error(registry: Any, model: str, version: int) -> float | None:
    """The version's expected calibration error as measured on labelled data (its gate's holdout, else its
    registered metrics): how far its probabilities, and so its estimated metrics, can be trusted."""
    try:
        mv = registry.get(model, version)
    except (NotFoundError, InputError):
        return None
    for metrics in (((mv.gate or {}).get("metrics") or {}), (mv.metrics or {})):
        value = metrics.get("calibration_error")
        if isinstance(value, int | float) and math.isfinite(value):
            return float(value)
    return None


def _beside(est: Estimate, realised: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The estimate as JSON, each metric with the realised value beside it and the estimate's error."""
    out = est.as_dict()
    for name, m in out["metrics"].items():
        seen = (realised.get(name) or {}).get("value")
        m["realised"] = seen
        m["error"] = None if seen is None or m["value"] is None else m["value"] - seen
    return out


def _declared(registry: Any, model: str, version: int) -> dict[str, Any]:
    """What the registry says of a version's task: the task it records, read as the labels route reads it
    (:func:`~modelmill.store.feedback.label_task`; a ConflictError for one modelmill does not know), and
    the metrics it was registered with."""
    try:
        mv = registry.get(model, version)
    except (NotFoundError, InputError):  # logged under a name the registry does not know
        return {}
    return {"declared": label_task(mv).kind, "metrics": mv.metrics}


def _multiclass(registry: Any, model: str, version: int, part: pd.DataFrame | None) -> dict[str, Any]:
    """A multiclass version's logged class probabilities and recorded classes, for ``task_metrics``."""
    try:
        classes = label_task(registry.get(model, version)).classes
    except (NotFoundError, InputError, ConflictError):
        classes = ()
    return {"probabilities": part["probabilities"].to_numpy() if part is not None else None, "classes": classes}


def _jsonable(row: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in row.items():
        if isinstance(v, dt.datetime):
            out[k] = v.isoformat()
        elif isinstance(v, float) and not math.isfinite(v):
            out[k] = None
        elif hasattr(v, "item"):
            out[k] = v.item()
        else:
            out[k] = v
    return out
