"""Alert rules from ``[monitoring]`` in modelmill.toml, evaluated on an interval, deduplicated and resolved.

Each rule measures one signal per label set (model, version, variant …) and
compares it with its threshold. An alert's state lives in the metadata DB
(``monitoring_alerts``) and moves ``inactive → pending → firing → resolved``;
each move is claimed with a conditional UPDATE, so however many monitors
run, a firing alert notifies the sinks once, runs its actions once, and
notifies once more when it resolves.

    [[monitoring.rules]]
    name = "LatencyHigh"
    kind = "latency_p95"          # latency_p95 | error_rate | metric_below_baseline | drift_share | feature_freshness
    threshold = 50                # ms, share, seconds … by kind
    for = "2m"                    # must hold this long before firing
    actions = ["pipeline:retrain_flights", "rollback:flights"]

Sinks: ``log`` and ``webhook`` (the Alertmanager webhook JSON, version 4).
Actions: ``pipeline:<name>`` starts a training pipeline through
``modelmill.training.trigger``; ``rollback:<model>`` calls the rollback hook
the rollout stage registers; any callable registered by name with
:meth:`ActionRegistry.register`.

    >>> rule = Rule.from_mapping({"name": "DriftHigh", "kind": "drift_share", "threshold": 0.3})
    >>> rule.breached(0.5), rule.breached(0.1)
    (True, False)
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, Protocol

import sqlalchemy as sa

from modelmill.errors import ConfigError, InputError, ModelmillError, NotFoundError
from modelmill.monitoring.performance import parse_duration
from modelmill.project import Project
from modelmill.store.tables.monitoring import monitoring_alerts

__all__ = [
    "RULE_KINDS",
    "ActionRegistry",
    "Alert",
    "AlertEvaluator",
    "LogSink",
    "Rule",
    "Sink",
    "WebhookSink",
    "alertmanager_payload",
    "default_actions",
    "sink_from_mapping",
]

log = logging.getLogger("modelmill.monitoring.alerts")

RuleKind = Literal["latency_p95", "error_rate", "metric_below_baseline", "drift_share", "feature_freshness"]
RULE_KINDS: tuple[str, ...] = ("latency_p95", "error_rate", "metric_below_baseline", "drift_share",
                               "feature_freshness")
Labels = tuple[tuple[str, str], ...]
_NEVER = "0001-01-01T00:00:00Z"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Rule:
    """One alert rule. ``threshold`` is in the signal's unit; ``metric_below_baseline`` fires when the
    metric drops below ``baseline - margin`` (``baseline`` from the rule, else the model version's
    registered metrics)."""

    name: str
    kind: RuleKind
    threshold: float | None = None
    model: str | None = None
    window: float = 3600.0
    for_s: float = 0.0
    metric: str = "auc"
    baseline: float | None = None
    margin: float = 0.05
    table: str | None = None
    time_column: str = "ts"
    severity: str = "warning"
    summary: str = ""
    actions: tuple[str, ...] = ()
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, model: str | None = None) -> Rule:
        """A rule from one ``[[monitoring.rules]]`` table."""
        d = dict(data)
        name = d.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError("monitoring.rules.name", name, "a non-empty string")
        kind = d.get("kind")
        if kind not in RULE_KINDS:
            raise ConfigError(f"monitoring.rules[{name}].kind", kind, " | ".join(RULE_KINDS))
        if kind != "metric_below_baseline" and not isinstance(d.get("threshold"), int | float):
            raise ConfigError(f"monitoring.rules[{name}].threshold", d.get("threshold"), "a number")
        if kind == "feature_freshness" and not d.get("table"):
            raise ConfigError(f"monitoring.rules[{name}].table", d.get("table"), "the offline table to watch")
        known = {f.name for f in dataclasses.fields(cls)} | {"for"}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"monitoring.rules[{name}]", sorted(unknown), f"only the keys {sorted(known)}")
        window = parse_duration(d.pop("window", 3600), field=f"monitoring.rules[{name}].window")
        raw_for = d.pop("for", d.pop("for_s", 0))
        for_s = 0.0 if raw_for in (0, "0", "", None) else parse_duration(raw_for, field=f"monitoring.rules[{name}].for")
        actions = d.pop("actions", ())
        if isinstance(actions, str) or not all(isinstance(a, str) for a in actions):
            raise ConfigError(f"monitoring.rules[{name}].actions", actions, "a list of strings")
        d.setdefault("model", model)
        return cls(**d, window=window, for_s=for_s, actions=tuple(actions))

    def breached(self, value: float, baseline: float | None = None) -> bool:
        if math.isnan(value):
            return False
        if self.kind == "metric_below_baseline":
            base = self.baseline if self.baseline is not None else baseline
            return base is not None and value < base - self.margin
        assert self.threshold is not None
        return value > self.threshold


@dataclasses.dataclass(frozen=True, kw_only=True)
class Alert:
    """One alert instance as sent to sinks and actions."""

    rule: str
    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str]
    value: float | None
    starts_at: float
    ends_at: float | None
    fingerprint: str

    def to_alertmanager(self, generator_url: str = "") -> dict[str, Any]:
        return {"status": self.status, "labels": self.labels, "annotations": self.annotations,
                "startsAt": _rfc3339(self.starts_at),
                "endsAt": _rfc3339(self.ends_at) if self.ends_at is not None else _NEVER,
                "generatorURL": generator_url, "fingerprint": self.fingerprint}


def _rfc3339(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).isoformat().replace("+00:00", "Z")


def alertmanager_payload(alerts: Sequence[Alert], *, receiver: str = "modelmill",
                         external_url: str = "") -> dict[str, Any]:
    """The Alertmanager webhook body (version 4) for alerts of one group."""
    if not alerts:
        raise InputError("alerts", "need at least one alert")
    status = "firing" if any(a.status == "firing" for a in alerts) else "resolved"
    common_labels = dict(set.intersection(*(set(a.labels.items()) for a in alerts)))
    common_ann = dict(set.intersection(*(set(a.annotations.items()) for a in alerts)))
    group_labels = {"alertname": alerts[0].rule}
    return {"version": "4", "groupKey": "{}:" + json.dumps(group_labels, sort_keys=True), "truncatedAlerts": 0,
            "status": status, "receiver": receiver, "groupLabels": group_labels, "commonLabels": common_labels,
            "commonAnnotations": common_ann, "externalURL": external_url,
            "alerts": [a.to_alertmanager() for a in alerts]}


# ---- sinks ------------------------------------------------------------------------------------


class Sink(Protocol):
    def send(self, alerts: Sequence[Alert]) -> None: ...


class LogSink:
    """Writes each alert to the ``modelmill.monitoring.alerts`` logger (and, if given, a JSON-lines file)."""

    def __init__(self, *, path: str | None = None) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"LogSink(path={self.path!r})"

    def send(self, alerts: Sequence[Alert]) -> None:
        for a in alerts:
            level = logging.WARNING if a.status == "firing" else logging.INFO
            log.log(level, "alert %s %s %s value=%s", a.rule, a.status, a.labels, a.value)
            if self.path:
                with open(self.path, "a") as fh:
                    fh.write(json.dumps(a.to_alertmanager()) + "\n")


class WebhookSink:
    """POSTs the Alertmanager webhook JSON to ``url``; retries connection errors and 5xx answers."""

    def __init__(self, *, url: str, timeout_s: float = 5.0, retries: int = 2, receiver: str = "modelmill") -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.retries = retries
        self.receiver = receiver

    def __repr__(self) -> str:
        return f"WebhookSink(url={self.url!r})"

    def send(self, alerts: Sequence[Alert]) -> None:
        import httpx

        body = alertmanager_payload(alerts, receiver=self.receiver)
        for attempt in range(self.retries + 1):
            try:
                r = httpx.post(self.url, json=body, timeout=self.timeout_s)
                if r.status_code < 500:
                    if r.status_code >= 400:
                        log.error("webhook %s refused the alert: HTTP %s", self.url, r.status_code)
                    return
            except httpx.TransportError as exc:
                if attempt == self.retries:
                    log.error("webhook %s unreachable: %s", self.url, exc)
                    return
            time.sleep(0.2 * 2**attempt)


def sink_from_mapping(data: Mapping[str, Any]) -> Sink:
    """A sink from one ``[[monitoring.sinks]]`` table: ``type = "log"`` or ``type = "webhook"``."""
    kind = data.get("type")
    if kind == "log":
        return LogSink(path=data.get("path"))
    if kind == "webhook":
        url = data.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError("monitoring.sinks.url", url, "an http(s) URL")
        return WebhookSink(url=url, timeout_s=float(data.get("timeout_s", 5.0)))
    raise ConfigError("monitoring.sinks.type", kind, "'log' or 'webhook'")


# ---- actions ----------------------------------------------------------------------------------

Action = Callable[[Alert], Any]


class ActionRegistry:
    """Named actions an alert can run when it starts firing.

    ``register("page_oncall", fn)`` adds an action by name; ``register_kind("rollback", factory)``
    handles every ``"rollback:<arg>"`` spec with ``factory(arg)``. ``pipeline:<name>`` is built in:
    it calls ``modelmill.training.trigger`` with a key per alert episode, so an alert seen by two
    monitors still starts the pipeline once.
    """

    def __init__(self) -> None:
        self._named: dict[str, Action] = {}
        self._kinds: dict[str, Callable[[str], Action]] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ActionRegistry(named={sorted(self._named)}, kinds={sorted(self._kinds)})"

    def register(self, name: str, fn: Action) -> None:
        with self._lock:
            self._named[name] = fn

    def register_kind(self, kind: str, factory: Callable[[str], Action]) -> None:
        with self._lock:
            self._kinds[kind] = factory

    def resolve(self, spec: str, *, project: Project | None = None) -> Action:
        if spec in self._named:
            return self._named[spec]
        kind, _, arg = spec.partition(":")
        if arg and kind in self._kinds:
            return self._kinds[kind](arg)
        if arg and kind == "pipeline":
            return _pipeline_action(arg, project)
        raise NotFoundError("alert action", spec, "register it with ActionRegistry.register, or use "
                            f"one of the kinds {sorted({'pipeline', *self._kinds})}")

    def run(self, spec: str, alert: Alert, *, project: Project | None = None) -> Any:
        return self.resolve(spec, project=project)(alert)


def _pipeline_action(pipeline: str, project: Project | None) -> Action:
    def start(alert: Alert) -> Any:
        try:
            from modelmill.training import trigger  # type: ignore[attr-defined]
        except ImportError as exc:
            raise NotFoundError("training stage", "modelmill.training.trigger",
                                "install the training stage to start pipelines from alerts") from exc
        return trigger(pipeline, f"alert {alert.rule} {alert.labels}", project=project,
                       key=f"alert:{alert.fingerprint}:{alert.starts_at:.3f}")

    return start


_DEFAULT_ACTIONS = ActionRegistry()


def default_actions() -> ActionRegistry:
    """The process-wide registry the rollout stage adds its ``rollback`` kind to."""
    return _DEFAULT_ACTIONS


# ---- evaluation -------------------------------------------------------------------------------


class Measure(Protocol):
    """Measures a rule: ``{labels: value}`` per label set, and the baseline for a labelset (or None)."""

    def measure(self, rule: Rule, now: float) -> dict[Labels, float]: ...

    def baseline(self, rule: Rule, labels: Labels) -> float | None: ...


def fingerprint(rule: str, labels: Labels) -> str:
    return hashlib.sha256(json.dumps([rule, list(labels)]).encode()).hexdigest()[:32]


class AlertEvaluator:
    """Evaluates rules against a :class:`Measure`, keeps alert state in the DB, notifies and acts."""

    def __init__(self, project: Project, rules: Sequence[Rule], *, measure: Measure,
                 sinks: Sequence[Sink] = (), actions: ActionRegistry | None = None) -> None:
        self.project = project
        self.rules = list(rules)
        self.measure = measure
        self.sinks = list(sinks)
        self.actions = actions or default_actions()

    def __repr__(self) -> str:
        return f"AlertEvaluator(rules={[r.name for r in self.rules]}, sinks={self.sinks!r})"

    def evaluate(self, now: float | None = None) -> list[Alert]:
        """One round: every rule measured once; returns the alerts that changed to firing or resolved."""
        now = time.time() if now is None else now
        changed: list[Alert] = []
        for rule in self.rules:
            try:
                values = self.measure.measure(rule, now)
            except ModelmillError as exc:
                log.warning("rule %s not evaluated: %s", rule.name, exc.message)
                continue
            transitions = self._apply(rule, values, now)
            for status in ("firing", "resolved"):
                group = [a for a in transitions if a.status == status]
                if group:
                    self._notify(group)
            for alert in transitions:
                if alert.status == "firing":
                    self._act(rule, alert)
            changed.extend(transitions)
        return changed

    def active(self) -> list[dict[str, Any]]:
        """Alerts now pending or firing."""
        t = monitoring_alerts
        with self.project.db.engine.connect() as conn:
            rows = conn.execute(sa.select(t).where(t.c.state.in_(("pending", "firing"))).order_by(t.c.rule))
            return [dict(r._mapping) for r in rows]

    # -- state machine --

    def _apply(self, rule: Rule, values: Mapping[Labels, float], now: float) -> list[Alert]:
        t = monitoring_alerts
        out: list[Alert] = []
        with self.project.db.engine.connect() as conn:
            existing = {r.fingerprint: r for r in conn.execute(sa.select(t).where(t.c.rule == rule.name))}
        seen: set[str] = set()
        for labels, value in values.items():
            fp = fingerprint(rule.name, labels)
            seen.add(fp)
            all_labels = {"alertname": rule.name, "severity": rule.severity, **rule.labels, **dict(labels)}
            annotations = {"summary": rule.summary or f"{rule.kind} is {value:.4g}",
                           "value": f"{value:.6g}", "kind": rule.kind}
            row = existing.get(fp)
            state = row.state if row is not None else "inactive"
            baseline = self.measure.baseline(rule, labels) if rule.kind == "metric_below_baseline" else None
            if rule.breached(value, baseline):
                if state in ("inactive", "resolved"):
                    target = "pending" if rule.for_s > 0 else "firing"
                    if self._claim(fp, row, state, target, now, rule, all_labels, annotations, value) \
                            and target == "firing":
                        out.append(self._alert(rule, "firing", all_labels, annotations, value, now, None, fp))
                elif state == "pending" and row is not None and now - (row.pending_since or now) >= rule.for_s:
                    if self._claim(fp, row, state, "firing", now, rule, all_labels, annotations, value):
                        out.append(self._alert(rule, "firing", all_labels, annotations, value, now, None, fp))
                else:
                    self._touch(fp, value, now)
            else:
                out.extend(self._clear(rule, fp, row, state, now, value))
        for fp, row in existing.items():  # a label set that stopped reporting is over
            if fp not in seen and row.state in ("pending", "firing"):
                out.extend(self._clear(rule, fp, row, row.state, now, row.value))
        return out

    def _clear(self, rule: Rule, fp: str, row: Any, state: str, now: float, value: float | None) -> list[Alert]:
        if state == "pending":
            self._claim(fp, row, state, "inactive", now, rule, row.labels, row.annotations, value)
        elif state == "firing" and self._claim(fp, row, state, "resolved", now, rule, row.labels,
                                               row.annotations, value):
            return [self._alert(rule, "resolved", dict(row.labels), dict(row.annotations), value,
                                row.started_at or now, now, fp)]
        return []

    def _claim(self, fp: str, row: Any, old: str, new: str, now: float, rule: Rule, labels: Mapping[str, str],
               annotations: Mapping[str, str], value: float | None) -> bool:
        """Move one alert from ``old`` to ``new``; False when another evaluator moved it first."""
        t = monitoring_alerts
        values: dict[str, Any] = {"state": new, "value": value, "updated_at": now, "labels": dict(labels),
                                  "annotations": dict(annotations)}
        if new == "pending":
            values["pending_since"] = now
        if new == "firing":
            values["started_at"] = now
            values["resolved_at"] = None
        if new == "resolved":
            values["resolved_at"] = now
        with self.project.db.begin() as conn:
            if row is None:
                try:
                    with conn.begin_nested():
                        conn.execute(t.insert().values(fingerprint=fp, rule=rule.name, **values))
                except sa.exc.IntegrityError:
                    return False
            else:
                res = conn.execute(t.update().where(t.c.fingerprint == fp, t.c.state == old,
                                                    t.c.updated_at == row.updated_at).values(**values))
                if res.rowcount != 1:
                    return False
            if new in ("firing", "resolved"):
                self.project.db.audit(conn, actor="monitoring", action=f"alert.{new}", subject=rule.name,
                                      detail={"labels": dict(labels), "value": value})
        return True

    def _touch(self, fp: str, value: float, now: float) -> None:
        t = monitoring_alerts
        with self.project.db.begin() as conn:
            conn.execute(t.update().where(t.c.fingerprint == fp).values(value=value))

    @staticmethod
    def _alert(rule: Rule, status: Literal["firing", "resolved"], labels: Mapping[str, str],
               annotations: Mapping[str, str], value: float | None, starts: float, ends: float | None,
               fp: str) -> Alert:
        return Alert(rule=rule.name, status=status, labels=dict(labels), annotations=dict(annotations),
                     value=value, starts_at=starts, ends_at=ends, fingerprint=fp)

    def _notify(self, alerts: Sequence[Alert]) -> None:
        for sink in self.sinks:
            try:
                sink.send(alerts)
            except Exception as exc:  # one broken sink must not silence the others
                log.error("sink %r failed: %s", sink, exc)

    def _act(self, rule: Rule, alert: Alert) -> None:
        for spec in rule.actions:
            try:
                result = self.actions.run(spec, alert, project=self.project)
                detail: dict[str, Any] = {"action": spec, "ok": True, "result": _short(result)}
            except Exception as exc:  # an action failing is reported, never fatal to the monitor
                log.error("action %s of alert %s failed: %s", spec, rule.name, exc)
                detail = {"action": spec, "ok": False, "error": str(exc)}
            with self.project.db.begin() as conn:
                self.project.db.audit(conn, actor="monitoring", action="alert.action", subject=rule.name,
                                      detail=detail | {"labels": alert.labels})


def _short(value: Any) -> str | None:
    return None if value is None else str(value)[:200]


def labels_of(mapping: Mapping[str, Any]) -> Labels:
    return tuple(sorted((str(k), str(v)) for k, v in mapping.items()))


def rules_from_config(section: Mapping[str, Any]) -> list[Rule]:
    raw: Iterable[Mapping[str, Any]] = section.get("rules", [])
    model = section.get("model")
    rules = [Rule.from_mapping(r, model=model) for r in raw]
    names = [r.name for r in rules]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError("monitoring.rules.name", dupes[0], "a name used by one rule only")
    return rules
