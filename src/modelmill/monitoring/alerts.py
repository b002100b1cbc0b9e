"""Alert rules from ``[monitoring]`` in modelmill.toml, evaluated on an interval, deduplicated and resolved.

Each rule measures one signal per label set (model, version, variant …) and
compares it with its threshold. An alert's state lives in the metadata DB
(``monitoring_alerts``) and moves ``inactive → pending → firing → resolved``;
each move is claimed with a conditional UPDATE, so however many monitors
run, a firing alert notifies the sinks once, runs its actions once, and
notifies once more when it resolves.

    [[monitoring.rules]]
    name = "LatencyHigh"
    kind = "latency_p95"          # latency_p95 | error_rate | metric_below_baseline | estimated_metric_drop
                                  # | drift_share | feature_freshness
    threshold = 50                # ms, share, seconds … by kind
    for = "2m"                    # must hold this long before firing
    actions = [{ action = "pipeline:retrain_flights", params = { days = 60 } }, "rollback:flights"]

``estimated_metric_drop`` needs no labels: it estimates ``metric`` (``accuracy``, ``auc`` or
``log_loss``) of each version's predictions in the window from their probabilities alone
(:mod:`modelmill.monitoring.estimate`: meaningful for a calibrated binary classifier only) and fires, like
``metric_below_baseline``, when the estimate is worse than ``baseline`` by more than ``margin`` (below it;
for ``log_loss`` above it). A window with fewer than ``min_rows`` predictions (at least one) is no data.

Sinks: ``log`` and ``webhook`` (the Alertmanager webhook JSON, version 4).
Actions, each a string or a table ``{ action = "...", params = {...} }``:

- ``pipeline:<name>`` queues a run of a training pipeline through
  ``modelmill.training.trigger`` with the action's ``params`` (a pipeline whose
  inputs the params do not cover is refused when the alert fires);
- ``rollback:<model>`` rolls back the model's active rollout (all traffic to its
  baseline), or, with none, routes all of the model's traffic to its
  ``production`` alias;
- any callable registered by name with :meth:`ActionRegistry.register`.

What each action did is kept on the alert (column ``actions``) and in the audit
trail. A queued pipeline's outcome comes back there too: the scheduler reports
a trigger that an alert started (:func:`record_trigger_outcome`), so a failed
retraining shows on the alert that asked for it.

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
from modelmill.events import emit
from modelmill.monitoring.performance import parse_duration
from modelmill.project import Project
from modelmill.store.tables.monitoring import monitoring_alerts

__all__ = [
    "BASELINE_KINDS",
    "RULE_KINDS",
    "ActionRegistry",
    "Alert",
    "AlertEvaluator",
    "AlertmanagerSink",
    "LogSink",
    "Rule",
    "RuleStatus",
    "Sink",
    "WebhookSink",
    "alert_trigger_key",
    "alertmanager_payload",
    "default_actions",
    "record_trigger_outcome",
    "sink_from_mapping",
]

log = logging.getLogger("modelmill.monitoring.alerts")

RuleKind = Literal["latency_p95", "error_rate", "metric_below_baseline", "estimated_metric_drop", "drift_share",
                   "feature_freshness"]
RULE_KINDS: tuple[str, ...] = ("latency_p95", "error_rate", "metric_below_baseline", "estimated_metric_drop",
                               "drift_share", "feature_freshness")
#: The kinds compared with a baseline (the rule's, else the version's recorded metric) rather than a threshold.
BASELINE_KINDS: tuple[str, ...] = ("metric_below_baseline", "estimated_metric_drop")
Labels = tuple[tuple[str, str], ...]
_NEVER = "0001-01-01T00:00:00Z"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Rule:
    """One alert rule. ``threshold`` is in the signal's unit; ``metric_below_baseline`` fires when the
    metric drops below ``baseline - margin`` (``baseline`` from the rule, else the model version's
    registered metrics); ``estimated_metric_drop`` likewise on the estimate, a log loss above
    ``baseline + margin``, and ``min_rows`` predictions at least. ``score`` is what a ``drift_share`` rule
    reads: ``"share"`` (the share of drifted columns, the default) or ``"importance"`` (the permutation
    importance of the drifted features over that of all compared ones, stored with the reference profile;
    a window without stored importance gives its share, named in the round's ``score_fallback``)."""

    name: str
    kind: RuleKind
    threshold: float | None = None
    model: str | None = None
    window: float = 3600.0
    for_s: float = 0.0
    metric: str = "auc"
    baseline: float | None = None
    margin: float = 0.05
    min_rows: int = 0
    table: str | None = None
    time_column: str = "ts"
    score: str = "share"
    severity: str = "warning"
    summary: str = ""
    actions: tuple[str, ...] = ()
    action_params: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
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
        if kind == "estimated_metric_drop":
            from modelmill.monitoring.estimate import ESTIMATED_METRICS

            if d.get("metric", "auc") not in ESTIMATED_METRICS:
                raise ConfigError(f"monitoring.rules[{name}].metric", d.get("metric"), " | ".join(ESTIMATED_METRICS))
            rows = d.get("min_rows", 0)
            if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
                raise ConfigError(f"monitoring.rules[{name}].min_rows", rows, "a whole number of predictions >= 0")
        if kind not in BASELINE_KINDS and not isinstance(d.get("threshold"), int | float):
            raise ConfigError(f"monitoring.rules[{name}].threshold", d.get("threshold"), "a number")
        if kind == "feature_freshness" and not d.get("table"):
            raise ConfigError(f"monitoring.rules[{name}].table", d.get("table"), "the offline table to watch")
        if d.get("score", "share") not in ("share", "importance") or (kind != "drift_share" and "score" in d):
            raise ConfigError(f"monitoring.rules[{name}].score", d.get("score"),
                              "'share' or 'importance', on a drift_share rule only")
        known = {f.name for f in dataclasses.fields(cls)} - {"action_params"} | {"for"}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"monitoring.rules[{name}]", sorted(unknown), f"only the keys {sorted(known)}")
        window = parse_duration(d.pop("window", 3600), field=f"monitoring.rules[{name}].window")
        raw_for = d.pop("for", d.pop("for_s", 0))
        for_s = 0.0 if raw_for in (0, "0", "", None) else parse_duration(raw_for, field=f"monitoring.rules[{name}].for")
        specs, params = _parse_actions(d.pop("actions", ()), field=f"monitoring.rules[{name}].actions")
        d.setdefault("model", model)
        return cls(**d, window=window, for_s=for_s, actions=specs, action_params=params)

    def breached(self, value: float, baseline: float | None = None) -> bool:
        if math.isnan(value):
            return False
        if self.kind == "metric_below_baseline":
            base = self.baseline if self.baseline is not None else baseline
            return base is not None and value < base - self.margin
        if self.kind == "estimated_metric_drop":
            from modelmill.monitoring.estimate import is_worse

            base = self.baseline if self.baseline is not None else baseline
            return base is not None and is_worse(self.metric, value, base, self.margin)
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
        _post(f"webhook {self.url}", self.url, alertmanager_payload(alerts, receiver=self.receiver),
              timeout_s=self.timeout_s, retries=self.retries)


def _post(what: str, url: str, body: Any, *, timeout_s: float, retries: int) -> None:
    """POST ``body`` as JSON; connection errors and 5xx answers are retried with backoff, a 4xx (a refusal) and
    the last failure are logged, never raised: a sink that is down must not stop the monitor."""
    import httpx

    for attempt in range(retries + 1):
        try:
            r = httpx.post(url, json=body, timeout=timeout_s)
            if r.status_code < 500:
                if r.status_code >= 400:
                    log.error("%s refused the alert(s): HTTP %s %s", what, r.status_code, r.text[:500])
                return
        except httpx.TransportError as exc:
            if attempt == retries:
                log.error("%s unreachable: %s", what, exc)
                return
        time.sleep(0.2 * 2**attempt)


class AlertmanagerSink:
    """POSTs the alerts to Alertmanager's API (``{url}/api/v2/alerts``), which groups, silences, inhibits and
    routes them. Alertmanager resolves an alert nobody re-sends, so the evaluator re-sends every firing alert each
    round (``repeat_firing``) with ``endsAt`` ``expires_s`` ahead: set it to a few of the monitor's intervals, so a
    monitor that stopped lets its alerts lapse instead of holding them forever. A resolved alert is sent with its
    ``endsAt``. Connection errors and 5xx answers are retried; a refusal is logged."""

    repeat_firing = True

    def __init__(self, *, url: str, timeout_s: float = 5.0, retries: int = 2, expires_s: float = 3600.0,
                 generator_url: str = "") -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.retries = retries
        self.expires_s = expires_s
        self.generator_url = generator_url

    def __repr__(self) -> str:
        return f"AlertmanagerSink(url={self.url!r})"

    def postable(self, alerts: Sequence[Alert], now: float | None = None) -> list[dict[str, Any]]:
        """Alertmanager's ``postableAlerts``: labels (``alertname`` = the rule), annotations, start and end."""
        now = time.time() if now is None else now
        return [{"labels": {"alertname": a.rule, **a.labels}, "annotations": a.annotations,
                 "startsAt": _rfc3339(a.starts_at),
                 "endsAt": _rfc3339(a.ends_at if a.ends_at is not None else now + self.expires_s),
                 "generatorURL": self.generator_url} for a in alerts]

    def send(self, alerts: Sequence[Alert]) -> None:
        _post(f"alertmanager {self.url}", f"{self.url}/api/v2/alerts", self.postable(alerts),
              timeout_s=self.timeout_s, retries=self.retries)


def _parse_actions(raw: Any, *, field: str) -> tuple[tuple[str, ...], dict[str, dict[str, Any]]]:
    """``["rollback:m", {action = "pipeline:p", params = {...}}]`` -> the specs and each one's params."""
    want = 'a list of "kind:arg" strings or { action = "pipeline:NAME", params = {...} } tables'
    if isinstance(raw, str | Mapping) or not isinstance(raw, Sequence):
        raise ConfigError(field, raw, want)
    specs: list[str] = []
    params: dict[str, dict[str, Any]] = {}
    for item in raw:
        if isinstance(item, Mapping):
            extra = set(item) - {"action", "params"}
            spec, given = item.get("action"), item.get("params", {})
            if extra or not isinstance(spec, str) or not isinstance(given, Mapping):
                raise ConfigError(field, dict(item), want)
            if given and not spec.startswith("pipeline:"):
                # Only a pipeline takes params; silently dropping them would run something else than configured.
                raise ConfigError(f"{field}[{spec}].params", dict(given), "params only on a pipeline:NAME action")
            if given:
                try:
                    json.dumps(dict(given))
                except (TypeError, ValueError) as exc:
                    raise ConfigError(f"{field}[{spec}].params", dict(given), f"JSON values ({exc})") from None
                params[spec] = dict(given)
        elif isinstance(item, str):
            spec = item
        else:
            raise ConfigError(field, item, want)
        kind, sep, arg = spec.partition(":")
        if kind in ("pipeline", "rollback") and not (sep and arg.strip()):
            raise ConfigError(field, spec, f"'{kind}:NAME'")
        if spec in specs:
            raise ConfigError(field, spec, "each action once")
        specs.append(spec)
    return tuple(specs), params


def sink_from_mapping(data: Mapping[str, Any]) -> Sink:
    """A sink from one ``[[monitoring.sinks]]`` table: ``type = "log"``, ``"webhook"`` or ``"alertmanager"``."""
    kind = data.get("type")
    if kind == "log":
        return LogSink(path=data.get("path"))
    if kind in ("webhook", "alertmanager"):
        url = data.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError("monitoring.sinks.url", url, "an http(s) URL")
        timeout_s = data.get("timeout_s", 5.0)
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or timeout_s <= 0:
            raise ConfigError("monitoring.sinks.timeout_s", timeout_s, "a positive number of seconds")
        if kind == "webhook":
            return WebhookSink(url=url, timeout_s=float(timeout_s))
        expires_s = data.get("expires_s", 3600.0)
        if isinstance(expires_s, bool) or not isinstance(expires_s, int | float) or expires_s <= 0:
            raise ConfigError("monitoring.sinks.expires_s", expires_s, "a positive number of seconds")
        return AlertmanagerSink(url=url, timeout_s=float(timeout_s), expires_s=float(expires_s),
                                generator_url=str(data.get("generator_url", "")))
    raise ConfigError("monitoring.sinks.type", kind, "'log', 'webhook' or 'alertmanager'")


# ---- actions ----------------------------------------------------------------------------------

Action = Callable[[Alert], Any]


class ActionRegistry:
    """Named actions an alert can run when it starts firing.

    ``register("page_oncall", fn)`` adds an action by name; ``register_kind("notify", factory)``
    handles every ``"notify:<arg>"`` spec with ``factory(arg)``. Two kinds are built in (a
    registered kind of the same name replaces one): ``pipeline:<name>`` calls
    ``modelmill.training.trigger`` with the action's params and a key per alert episode and
    pipeline, so an alert seen by two monitors still starts the pipeline once; ``rollback:<model>``
    rolls the model back (see the module docstring).
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

    def resolve(self, spec: str, *, project: Project | None = None,
                params: Mapping[str, Any] | None = None) -> Action:
        if spec in self._named:
            return self._named[spec]
        kind, _, arg = spec.partition(":")
        if arg and kind in self._kinds:
            return self._kinds[kind](arg)
        if arg and kind == "pipeline":
            return _pipeline_action(arg, project, dict(params or {}))
        if arg and kind == "rollback":
            return _rollback_action(arg, project)
        raise NotFoundError("alert action", spec, "register it with ActionRegistry.register, or use "
                            f"one of the kinds {sorted({'pipeline', 'rollback', *self._kinds})}")

    def run(self, spec: str, alert: Alert, *, project: Project | None = None,
            params: Mapping[str, Any] | None = None) -> Any:
        return self.resolve(spec, project=project, params=params)(alert)


_TRIGGER_PREFIX = "alert:"


def alert_trigger_key(alert: Alert, pipeline: str) -> str:
    """The idempotency key of the trigger an alert episode queues for ``pipeline``."""
    return f"{_TRIGGER_PREFIX}{alert.fingerprint}:{alert.starts_at:.3f}:{pipeline}"


def _pipeline_action(pipeline: str, project: Project | None, params: dict[str, Any]) -> Action:
    def start(alert: Alert) -> Any:
        from modelmill.training import get_pipeline, trigger

        try:
            needed = get_pipeline(pipeline, project).params_needed
        except ModelmillError:  # not importable here; the scheduler resolves it and reports back
            needed = []
        missing = [p for p in needed if p not in params]
        if missing:
            # Queueing it would only fail in the scheduler: refuse now, on the alert, with what to add.
            raise InputError(f"params of pipeline {pipeline}",
                             f"missing {', '.join(missing)}: give them in the rule, e.g. actions = "
                             f'[{{ action = "pipeline:{pipeline}", params = {{ {missing[0]} = ... }} }}]',
                             sorted(params))
        return trigger(pipeline, f"alert {alert.rule} {alert.labels}", project=project, params=params,
                       key=alert_trigger_key(alert, pipeline))

    return start


def _rollback_action(model: str, project: Project | None) -> Action:
    """Roll back ``model``'s active rollout; with none, send all its traffic to its ``production`` alias."""

    def roll_back(alert: Alert) -> str:
        from modelmill.registry import Registry
        from modelmill.rollout import RolloutController
        from modelmill.serving import RouteTable, Variant

        if project is None:
            raise InputError("project", "a rollback action needs the project it acts on", None)
        reason = f"alert {alert.rule} fired ({', '.join(f'{k}={v}' for k, v in sorted(alert.labels.items()))})"
        ctl = RolloutController(project, actor="monitoring")
        if any(s.model == model for s in ctl.active()):
            step = ctl.rollback(model, actor="monitoring", reason=reason)
            return f"rolled back rollout {step.state.id} of {step.state.subject}: all traffic to {step.state.baseline}"
        production = Registry(project).aliases(model).get("production")
        if production is None:
            raise NotFoundError("production alias of model", model,
                                "nothing to roll back to: the model has no active rollout and no "
                                "'production' alias; set one with `modelmill models alias`")
        RouteTable(project).set(model, [Variant("stable", "production", 1.0)], actor="monitoring", reason=reason)
        return f"no active rollout of {model}: all traffic to production (version {production})"

    return roll_back


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


@dataclasses.dataclass(frozen=True)
class RuleStatus:
    """What one evaluation of a rule found: ``pass``, ``fail`` (some label set breached) or ``no_data``.

    ``no_data`` is never ``pass``: the rule's measure failed (``reason`` says why) or returned no value, so
    nothing was checked, and an alert that was firing stays firing rather than resolving for lack of data.
    """

    rule: str
    status: str
    reason: str = ""
    series: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class AlertEvaluator:
    """Evaluates rules against a :class:`Measure`, keeps alert state in the DB, notifies and acts.

    After each :meth:`evaluate`, :attr:`statuses` holds every rule's :class:`RuleStatus`.
    """

    def __init__(self, project: Project, rules: Sequence[Rule], *, measure: Measure,
                 sinks: Sequence[Sink] = (), actions: ActionRegistry | None = None) -> None:
        self.project = project
        self.rules = list(rules)
        self.measure = measure
        self.sinks = list(sinks)
        self.actions = actions or default_actions()
        self.statuses: dict[str, RuleStatus] = {}

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
                log.warning("rule %s not evaluated (no data): %s", rule.name, exc.message)
                self.statuses[rule.name] = RuleStatus(rule.name, "no_data", exc.message)
                continue
            unbased = 0
            if rule.kind in BASELINE_KINDS and rule.baseline is None:
                # a series with nothing to compare with is not measured: its alert keeps its state, and a
                # rule with no baseline for any series is "no data", never a pass
                values = dict(values)
                for labels, v in values.items():
                    if not math.isnan(v) and self.measure.baseline(rule, labels) is None:
                        values[labels] = math.nan
                        unbased += 1
            finite = {k: v for k, v in values.items() if not math.isnan(v)}
            if not finite:
                reason = (f"{rule.kind} has no baseline for {unbased} series (set the rule's baseline, or "
                          f"record {rule.metric} on the version)" if unbased else
                          f"{rule.kind} has no value in the last {rule.window:g} s")
                self.statuses[rule.name] = RuleStatus(
                    rule.name, "no_data", reason + (f" for model {rule.model}" if rule.model else ""))
                continue  # nothing measured: alerts keep their state (a firing one is not resolved)
            transitions = self._apply(rule, values, now)
            breached = sum(1 for labels, v in finite.items()
                           if rule.breached(v, self.measure.baseline(rule, labels)
                                            if rule.kind in BASELINE_KINDS else None))
            self.statuses[rule.name] = RuleStatus(rule.name, "fail" if breached else "pass",
                                                  f"{breached} of {len(finite)} series breach", len(finite))
            for status in ("firing", "resolved"):
                group = [a for a in transitions if a.status == status]
                if group:
                    self._notify(group)
            for alert in transitions:
                if alert.status == "firing":
                    self._act(rule, alert)
            changed.extend(transitions)
        self._repeat_firing({a.fingerprint for a in changed})
        return changed

    def _repeat_firing(self, sent: set[str]) -> None:
        """Send every alert still firing (not just sent) again to the sinks that need it (Alertmanager's API
        resolves an alert that is not re-sent)."""
        sinks = [s for s in self.sinks if getattr(s, "repeat_firing", False)]
        if not sinks:
            return
        rules = {r.name: r for r in self.rules}
        firing = [self._alert(rules[row["rule"]], "firing", row["labels"], row["annotations"], row["value"],
                              row["started_at"] or row["updated_at"], None, row["fingerprint"])
                  for row in self.active()
                  if row["state"] == "firing" and row["rule"] in rules and row["fingerprint"] not in sent]
        if not firing:
            return
        for sink in sinks:
            try:
                sink.send(firing)
            except Exception as exc:  # one broken sink must not silence the others
                log.error("sink %r failed: %s", sink, exc)

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
            if math.isnan(value):
                continue  # measured, but no value: its alert keeps its state (no data is not a resolution)
            all_labels = {"alertname": rule.name, "severity": rule.severity, **rule.labels, **dict(labels)}
            annotations = {"summary": rule.summary or f"{rule.kind} is {value:.4g}",
                           "value": f"{value:.6g}", "kind": rule.kind}
            row = existing.get(fp)
            state = row.state if row is not None else "inactive"
            baseline = self.measure.baseline(rule, labels) if rule.kind in BASELINE_KINDS else None
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
                emit(self.project, f"alert.{new}", {"rule": rule.name, "fingerprint": fp, "labels": dict(labels),
                                                    "annotations": dict(annotations), "value": value},
                     subject=rule.name, actor="monitoring", conn=conn)
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
        outcomes: list[dict[str, Any]] = []
        for spec in rule.actions:
            params = rule.action_params.get(spec)
            detail: dict[str, Any] = {"action": spec, "at": time.time()}
            if params:
                detail["params"] = dict(params)
            try:
                result = self.actions.run(spec, alert, project=self.project, params=params)
                detail |= {"ok": True, "result": _short(result)}
                if spec.startswith("pipeline:") and isinstance(result, int) and not isinstance(result, bool):
                    # Queued, not done: the scheduler's outcome arrives later (record_trigger_outcome).
                    detail |= {"trigger_id": result, "trigger_status": "pending"}
            except Exception as exc:  # an action failing is reported, never fatal to the monitor
                log.error("action %s of alert %s failed: %s", spec, rule.name, exc)
                message = exc.message if isinstance(exc, ModelmillError) else str(exc)
                detail |= {"ok": False, "error": message}
            outcomes.append(detail)
            with self.project.db.begin() as conn:
                self.project.db.audit(conn, actor="monitoring", action="alert.action", subject=rule.name,
                                      detail=detail | {"labels": alert.labels, "fingerprint": alert.fingerprint})
        if outcomes:
            t = monitoring_alerts
            with self.project.db.begin() as conn:
                before = conn.execute(sa.select(t.c.actions).where(t.c.fingerprint == alert.fingerprint)
                                      .with_for_update()).scalar()
                # A fast scheduler may have run a queued pipeline already and reported it: keep that outcome.
                reported = {a["trigger_id"]: a for a in (before or []) if a.get("trigger_status") not in
                            (None, "pending")}
                for o in outcomes:
                    done = reported.get(o.get("trigger_id"))
                    if done is not None:
                        o |= {k: done[k] for k in ("trigger_status", "ok", "error") if k in done}
                conn.execute(t.update().where(t.c.fingerprint == alert.fingerprint).values(actions=outcomes))

    def history(self, rule: str | None = None, *, limit: int = 100) -> list[dict[str, Any]]:
        """The audit trail of alerts, newest first: firing, resolved, each action and each queued run's outcome."""
        from modelmill.store.tables import audit_log

        q = sa.select(audit_log).where(audit_log.c.action.like("alert.%"))
        if rule is not None:
            q = q.where(audit_log.c.subject == rule)
        with self.project.db.engine.connect() as conn:
            rows = conn.execute(q.order_by(audit_log.c.id.desc()).limit(limit)).all()
        return [{"at": r.at, "action": r.action, "rule": r.subject, "detail": r.detail} for r in rows]


def record_trigger_outcome(project: Project, *, key: str, trigger_id: int, status: str,
                           error: str | None = None) -> bool:
    """Put the outcome of a pipeline run an alert queued on that alert and in the audit trail.

    The scheduler calls this for every trigger it ran; a key that no alert made is ignored
    (returns False). A failed run marks the alert's action ``ok: false``.
    """
    if not key.startswith(_TRIGGER_PREFIX):
        return False
    parts = key[len(_TRIGGER_PREFIX):].split(":", 2)  # fingerprint, episode start, pipeline
    fp = parts[0]
    t = monitoring_alerts
    with project.db.begin() as conn:
        row = conn.execute(sa.select(t.c.rule, t.c.labels, t.c.actions).where(t.c.fingerprint == fp)
                           .with_for_update()).first()
        if row is None:
            return False
        actions = [dict(a) for a in (row.actions or [])]
        mine = [a for a in actions if a.get("trigger_id") == trigger_id]
        if not mine:  # the run finished before the monitor wrote down that it queued it
            mine = [{"action": f"pipeline:{parts[-1]}", "trigger_id": trigger_id, "ok": True}]
            actions.extend(mine)
        for a in mine:
            a["trigger_status"] = status
            if status != "finished":
                a |= {"ok": False, "error": f"trigger {trigger_id} {status}: {error or 'no error recorded'}"}
        conn.execute(t.update().where(t.c.fingerprint == fp).values(actions=actions))
        project.db.audit(conn, actor="scheduler", action=f"alert.trigger.{status}", subject=row.rule,
                         detail={"trigger_id": trigger_id, "key": key, "error": error, "labels": row.labels,
                                 "fingerprint": fp})
    if status != "finished":
        log.error("pipeline run %s queued by alert %s %s: %s", trigger_id, row.rule, status, error)
    return True


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
