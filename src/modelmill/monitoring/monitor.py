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
``log_loss``, ``accuracy``; regression ``mae``, ``rmse``), each with ``n``, the
number of labelled predictions behind it; with none, the metric is ``no_data``
(value null, n 0). These are measurements, not checks: they pass or fail nothing
until a ``metric_below_baseline`` rule names them.
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
    ActionRegistry,
    AlertEvaluator,
    Labels,
    Rule,
    Sink,
    labels_of,
    rules_from_config,
    sink_from_mapping,
)
from modelmill.monitoring.drift import DriftOptions, DriftReport
from modelmill.monitoring.exporter import MonitoringExporter
from modelmill.monitoring.performance import (
    METRICS,
    PerformanceMonitor,
    parse_duration,
    task_metrics,
    task_of,
)
from modelmill.monitoring.reference import ReferenceStore
from modelmill.project import Project
from modelmill.store.feedback import Feedback, label_task
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

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> MonitoringConfig:
        known = {"interval", "window", "label_window", "threshold", "model", "models", "metrics_url",
                 "exporter_port", "drift", "rules", "sinks"}
        unknown = set(section) - known
        if unknown:
            raise ConfigError(f"monitoring.{sorted(unknown)[0]}", section[sorted(unknown)[0]],
                              f"one of the keys {sorted(known)}")
        models = section.get("models") or ([section["model"]] if section.get("model") else [])
        port = section.get("exporter_port")
        if port is not None and (not isinstance(port, int) or not 0 < port < 65536):
            raise ConfigError("monitoring.exporter_port", port, "a TCP port number")
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
                 errors_metric: str = "modelmill_requests_total", status_label: str = "status") -> None:
        self.project = project
        self.metrics_url = metrics_url
        self.errors_metric = errors_metric
        self.status_label = status_label
        self._last_counts: dict[Labels, tuple[float, float]] = {}
        self._baselines: dict[tuple[str, str, str], float | None] = {}

    def __repr__(self) -> str:
        return f"ProjectMeasure({self.project!r}, metrics_url={self.metrics_url!r})"

    def measure(self, rule: Rule, now: float) -> dict[Labels, float]:
        start, end = _utc(now - rule.window), _utc(now)
        if rule.kind == "latency_p95":
            perf = PerformanceMonitor(self.project)
            if not perf.feedback.has_predictions():
                return {}
            rows = perf.latency(window=rule.window * 2, start=start, end=end, model=rule.model)
            return _by_group(rows, "p95_ms")
        if rule.kind == "metric_below_baseline":
            perf = PerformanceMonitor(self.project)
            if not (perf.feedback.has_predictions() and perf.feedback.has_labels()):
                return {}
            return _by_group(perf.summary(start=start, end=end, model=rule.model), rule.metric)
        if rule.kind == "drift_share":
            return self._drift_share(rule, now)
        if rule.kind == "feature_freshness":
            return self._freshness(rule, now)
        return self._error_rate(rule)

    def baseline(self, rule: Rule, labels: Labels) -> float | None:
        if rule.baseline is not None or rule.kind != "metric_below_baseline":
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
        value = (mv.metrics or {}).get(metric)
        return float(value) if value is not None else None

    def _drift_share(self, rule: Rule, now: float) -> dict[Labels, float]:
        t = monitoring_windows
        q = sa.select(t.c.model, t.c.version, t.c.drift_share, t.c.at).where(
            t.c.at >= now - rule.window, t.c.drift_share.is_not(None)).order_by(t.c.at)
        if rule.model:
            q = q.where(t.c.model == rule.model)
        out: dict[Labels, float] = {}
        with self.project.db.engine.connect() as conn:
            for r in conn.execute(q):  # ordered by time: the latest window of each version wins
                out[labels_of({"model": r.model, "version": r.version})] = float(r.drift_share)
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
        self.measure = measure or ProjectMeasure(project, metrics_url=config.metrics_url)
        self._stop = threading.Event()
        self._evaluator: AlertEvaluator | None = None

    def __repr__(self) -> str:
        return f"Monitor({self.project!r}, interval={self.config.interval}, window={self.config.window})"

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
        if not refs.exists(model, version):
            return None  # run_once reports it as "no data", naming the missing reference
        frame = self.logged_features(model, version, start=start, end=end)
        if frame is None or len(frame) == 0:
            return None
        outputs = frame.pop("__output__").to_numpy(dtype=np.float64)
        profile = refs.load(model, version)
        known = len(profile.calibrations)
        report = profile.compare(frame, predictions=outputs, options=self.config.drift)
        if len(profile.calibrations) > known:  # calibrated at a new window size: keep it for the next rounds
            refs.save_calibrations(model, version, profile)
        return report, len(frame)

    def logged_features(self, model: str, version: int, *, start: float, end: float) -> pd.DataFrame | None:
        """The logged features (one column each) and outputs (column ``__output__``) of a window."""
        tbl = Feedback(self.project.offline).served_features(model, version, start=_utc(start), end=_utc(end))
        if tbl is None or tbl.num_rows == 0:
            return None
        frame = map_frame(tbl.column("features"))
        frame["__output__"] = tbl.column("output").to_numpy(zero_copy_only=False)
        return frame

    def served_versions(self, *, start: float, end: float) -> list[tuple[str, int]]:
        rows = Feedback(self.project.offline).served_versions(start=_utc(start), end=_utc(end))
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
        each prediction's newest label counts, once.
        """
        now = time.time() if now is None else now
        start = now - self.config.label_window
        versions = self.served_versions(start=start, end=now)
        feedback = Feedback(self.project.offline)
        groups: dict[tuple[str, int], pd.DataFrame] = {}
        if versions and feedback.has_labels():
            frame = feedback.labelled(start=_utc(start), end=_utc(now)).select(
                ["model", "version", "output", "label"]).to_pandas()
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
                                   "reason": None, "metrics": {}}
            try:
                task, task_from = task_of(**_declared(registry, model, version), labels=y)
            except ConflictError as exc:  # a task modelmill cannot read: nothing is measured against a guess
                rows.append({**row, "reason": exc.message})
                continue
            metrics = task_metrics(task, y, p, threshold=self.config.threshold)
            measured = any(m["status"] == "measured" for m in metrics.values())
            reason = None if measured else next((m["reason"] for m in metrics.values()), None) or (
                f"no delayed-label metrics are computed for {task} models yet")
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
        now = time.time() if now is None else now
        start = now - self.config.window
        perf = PerformanceMonitor(self.project)
        quality: list[dict[str, Any]] = []
        if perf.feedback.has_predictions() and perf.feedback.has_labels():
            quality = perf.summary(start=_utc(start), end=_utc(now))
        windows = []
        refs = ReferenceStore(self.project)
        for model, version in self.served_versions(start=start, end=now):
            result = self.window_drift(model, version, start=start, end=now)
            metrics = [_jsonable(r) for r in quality if r["model"] == model and int(r["version"]) == version]
            report, n = result if result is not None else (None, 0)
            if report is not None:
                status, reason = ("fail" if report.dataset_drift else "pass"), None
            elif not refs.exists(model, version):
                status, reason = "no_data", missing_reference(model, version)
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
                            "drifted": sorted(report.drifted) if report else [], "status": status, "reason": reason})
            if self.exporter is not None and report is not None:
                self.exporter.set_drift(model, version, report)
        if self.exporter is not None:
            self.exporter.set_performance(quality, METRICS)
        evaluator = self.evaluator
        changed = evaluator.evaluate(now)
        active = evaluator.active()
        rules = [evaluator.statuses[r.name].as_dict() for r in self.config.rules if r.name in evaluator.statuses]
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


def _declared(registry: Any, model: str, version: int) -> dict[str, Any]:
    """What the registry says of a version's task: the task it records, read as the labels route reads it
    (:func:`~modelmill.store.feedback.label_task`; a ConflictError for one modelmill does not know), and
    the metrics it was registered with."""
    try:
        mv = registry.get(model, version)
    except (NotFoundError, InputError):  # logged under a name the registry does not know
        return {}
    return {"declared": label_task(mv).kind, "metrics": mv.metrics}


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
