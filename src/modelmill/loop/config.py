"""``[models.NAME]`` tables, parsed and validated in this one place (the format is in ``modelmill.loop``).

Every error is a :class:`~modelmill.errors.ConfigError` naming the exact key (``models.clicks.gate.min``)
and what is accepted; a key this module does not know is an error too, so a typo never turns a check off.

    >>> cfg = parse_models({"clicks": {
    ...     "pipeline": {"function": "mypkg.pipes:retrain", "params": {"days": 30}},
    ...     "gate": {"label": "clicked", "min": {"auc": 0.7}},
    ...     "rules": {"drift": {"share": 0.3, "window": "1h"}}}})
    >>> m = cfg.model("clicks")
    >>> m.gate.minimum, m.rules[0].kind, m.rules[0].window
    ({'auc': 0.7}, 'drift', 3600.0)
    >>> [r.name for r in m.monitoring_rules()]
    ['clicks.drift']
    >>> parse_models({"clicks": {"pipeline": {"function": "p:q"}, "gate": {"min": {"auc": 2}}, "colour": 1}})
    Traceback (most recent call last):
    ...
    modelmill.errors.ConfigError: setting 'models.clicks.colour' has value 1, which is not accepted; use one of the keys feature_service, gate, pipeline, rollout, rules
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from modelmill.errors import ConfigError, InputError
from modelmill.monitoring.alerts import Rule
from modelmill.monitoring.performance import parse_duration
from modelmill.rollout.controller import DEFAULT_PLAN, parse_plan
from modelmill.rollout.guardrails import Guardrails

__all__ = [
    "ACTIONS",
    "RULE_KINDS",
    "GateSpec",
    "LoopConfig",
    "ModelLoop",
    "PipelineSpec",
    "RolloutSpec",
    "RuleSpec",
    "load_loop_config",
    "parse_models",
]

#: The loop's rule kinds and the ``[monitoring]`` rule kind each one becomes.
RULE_KINDS: dict[str, str] = {"drift": "drift_share", "metric_drop": "metric_below_baseline",
                              "estimated_metric_drop": "estimated_metric_drop",
                              "latency": "latency_p95", "error_rate": "error_rate"}
#: What a firing rule may do: start the model's retraining pipeline, or roll the model back.
ACTIONS = ("retrain", "rollback")
#: Delayed-label metrics a ``metric_drop`` rule can watch (each higher-is-better: a drop is a loss).
DROP_METRICS = ("accuracy", "auc", "precision", "recall")
DEFAULT_WINDOW = 3600.0

_MODEL_KEYS = ("feature_service", "gate", "pipeline", "rollout", "rules")
_PIPELINE_KEYS = ("cron", "function", "params")
_GATE_KEYS = ("against", "data", "label", "max", "max_calibration_error", "max_log_loss", "max_log_loss_increase",
              "max_regression", "min")
_ROLLOUT_KEYS = ("guardrails", "max_stage_seconds", "min_requests", "on_timeout", "plan", "stage_seconds")
_COMMON_RULE_KEYS = ("actions", "for", "severity", "window")
_RULE_KEYS: dict[str, tuple[str, ...]] = {
    "drift": ("score", "share"),
    "metric_drop": ("baseline", "margin", "metric", "min_labels"),
    "estimated_metric_drop": ("baseline", "margin", "metric", "min_rows"),
    "latency": ("p95_ms",),
    "error_rate": ("max_rate", "min_requests"),
}
_GUARDRAIL_KEYS = tuple(f.name for f in dataclasses.fields(Guardrails))
_SWITCHABLE = ("max_error_rate_increase", "max_latency_ratio", "max_output_shift", "max_label_loss_increase",
               "max_estimated_loss_increase")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PipelineSpec:
    """``[models.NAME.pipeline]``: what retrains the model (a :class:`~modelmill.training.Pipeline`)."""

    function: str
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    cron: str | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class GateSpec:
    """``[models.NAME.gate]``: the thresholds a retrained version must meet on the pipeline's holdout."""

    label: str = "label"
    data: str = "holdout"
    against: str = "production"
    minimum: Mapping[str, float] = dataclasses.field(default_factory=dict)
    maximum: Mapping[str, float] = dataclasses.field(default_factory=dict)
    max_regression: Mapping[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RuleSpec:
    """One ``[models.NAME.rules.KIND]`` table; :meth:`ModelLoop.monitoring_rules` turns it into a
    :class:`~modelmill.monitoring.alerts.Rule` for the one alert evaluator."""

    kind: str  # drift | metric_drop | latency | error_rate
    threshold: float | None  # drift share, p95 ms, error rate; None for metric_drop (baseline - margin)
    window: float = DEFAULT_WINDOW
    for_s: float = 0.0
    actions: tuple[str, ...] = ("retrain",)
    severity: str = "warning"
    metric: str = "auc"
    baseline: float | None = None
    margin: float = 0.05
    min_count: int = 0  # labelled predictions (metric_drop), predictions (estimated_metric_drop) or requests
    #                     (error_rate) below which: no data
    score: str = "share"  # drift: the drifted share, or "importance" (monitoring.alerts.Rule.score)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RolloutSpec:
    """``[models.NAME.rollout]``: the plan and guardrails of the rollout of every accepted version."""

    plan: tuple[str | int, ...] = DEFAULT_PLAN
    min_requests: int = 100
    stage_seconds: float = 60.0
    max_stage_seconds: float | None = None
    on_timeout: str = "rollback"
    guardrails: Guardrails = dataclasses.field(default_factory=Guardrails)

    def start_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :meth:`~modelmill.rollout.RolloutController.start`."""
        return {"plan": self.plan, "min_requests": self.min_requests, "stage_seconds": self.stage_seconds,
                "max_stage_seconds": self.max_stage_seconds, "on_timeout": self.on_timeout,
                "guardrails": self.guardrails}


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelLoop:
    """One ``[models.NAME]`` table, validated."""

    name: str
    pipeline: PipelineSpec
    gate: GateSpec
    feature_service: str | None = None
    rules: tuple[RuleSpec, ...] = ()
    rollout: RolloutSpec = dataclasses.field(default_factory=RolloutSpec)

    def rule_name(self, kind: str) -> str:
        """The name of this model's rule of ``kind`` in ``monitoring_alerts`` (``clicks.drift``)."""
        return f"{self.name}.{kind}"

    def monitoring_rules(self, params: Mapping[str, Any] | None = None) -> list[Rule]:
        """The rules as the monitor evaluates them: ``retrain`` is ``pipeline:FUNCTION`` with ``params``
        (default: the configured ones), ``rollback`` is ``rollback:NAME``."""
        given = dict(self.pipeline.params if params is None else params)
        retrain = f"pipeline:{self.pipeline.function}"
        out = []
        for r in self.rules:
            specs = tuple(retrain if a == "retrain" else f"rollback:{self.name}" for a in r.actions)
            action_params = {retrain: given} if "retrain" in r.actions and given else {}
            out.append(Rule(name=self.rule_name(r.kind), kind=RULE_KINDS[r.kind],  # type: ignore[arg-type]
                            threshold=r.threshold, model=self.name, window=r.window, for_s=r.for_s,
                            metric=r.metric, baseline=r.baseline, margin=r.margin, severity=r.severity,
                            min_rows=r.min_count if r.kind == "estimated_metric_drop" else 0,
                            **({"score": r.score} if r.kind == "drift" else {}),
                            summary=f"{self.name}: {r.kind} rule of the loop", actions=specs,
                            action_params=action_params, labels={"loop_model": self.name}))
        return out

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["rollout"]["guardrails"] = self.rollout.guardrails.as_dict()
        out["rollout"]["plan"] = list(self.rollout.plan)
        return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoopConfig:
    """Every ``[models.NAME]`` table of ``modelmill.toml``, in name order."""

    models: tuple[ModelLoop, ...] = ()

    def model(self, name: str) -> ModelLoop:
        for m in self.models:
            if m.name == name:
                return m
        raise ConfigError(f"models.{name}", None, f"one of the configured models {[m.name for m in self.models]}")

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.models]


def load_loop_config(settings: Any) -> LoopConfig:
    """The ``[models]`` section of ``settings`` (a :class:`~modelmill.config.Settings`), validated."""
    return parse_models(settings.section("models"))


def parse_models(section: Mapping[str, Any]) -> LoopConfig:
    """Validate the raw ``[models]`` table (``{name: {...}}``)."""
    if not isinstance(section, Mapping):
        raise ConfigError("models", section, "a table of [models.NAME] tables")
    models = [_model(str(name), body) for name, body in sorted(section.items())]
    owners: dict[str, str] = {}
    for m in models:
        other = owners.get(m.pipeline.function)
        if other is not None:
            raise ConfigError(f"models.{m.name}.pipeline.function", m.pipeline.function,
                              f"a pipeline no other model uses (models.{other} uses it; the loop tells whose "
                              "retraining a run was by its pipeline: register the function under a second name)")
        owners[m.pipeline.function] = m.name
    return LoopConfig(models=tuple(models))


# ---- the tables ---------------------------------------------------------------------------------


def _model(name: str, body: Any) -> ModelLoop:
    key = f"models.{name}"
    from modelmill.registry.versions import check_model_name

    try:
        check_model_name(name)
    except InputError as exc:
        raise ConfigError(key, name, f"a model name ({exc.problem})") from None
    table = _table(key, body, _MODEL_KEYS)
    if "pipeline" not in table:
        raise ConfigError(f"{key}.pipeline", None, 'a table [models.NAME.pipeline] with function = "module:attr"')
    if "gate" not in table:
        raise ConfigError(f"{key}.gate", None, "a table [models.NAME.gate] with at least one of min, max, "
                          "max_regression (a retrained version is never rolled out unchecked)")
    service = table.get("feature_service")
    if service is not None and (not isinstance(service, str) or not service.strip()):
        raise ConfigError(f"{key}.feature_service", service, "the name of a feature service")
    rules = _table(f"{key}.rules", table.get("rules", {}), tuple(RULE_KINDS))
    return ModelLoop(name=name, feature_service=service, pipeline=_pipeline(f"{key}.pipeline", table["pipeline"]),
                     gate=_gate(f"{key}.gate", table["gate"]),
                     rules=tuple(_rule(f"{key}.rules.{kind}", kind, rules[kind]) for kind in RULE_KINDS
                                 if kind in rules),
                     rollout=_rollout(f"{key}.rollout", table.get("rollout", {})))


def _pipeline(key: str, body: Any) -> PipelineSpec:
    table = _table(key, body, _PIPELINE_KEYS)
    fn = table.get("function")
    if not isinstance(fn, str) or not fn.strip() or fn != fn.strip():
        raise ConfigError(f"{key}.function", fn, "'module:attr' naming a modelmill Pipeline, or a registered "
                          "pipeline's name")
    params = table.get("params", {})
    if not isinstance(params, Mapping):
        raise ConfigError(f"{key}.params", params, "a table of the pipeline's params, e.g. params = { days = 30 }")
    try:
        json.dumps(dict(params))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}.params", dict(params), f"JSON values ({exc})") from None
    cron = table.get("cron")
    if cron is not None:
        from croniter import croniter

        if not isinstance(cron, str) or not croniter.is_valid(cron):
            raise ConfigError(f"{key}.cron", cron, "a 5-field cron expression (UTC), e.g. '0 3 * * *'")
    return PipelineSpec(function=fn, params=dict(params), cron=cron)


def _thresholds(key: str, raw: Any) -> dict[str, float]:
    from modelmill.registry.gate import GATE_METRIC_NAMES as known

    # Any task's metric: the candidate's task is known only when the gate runs, which refuses one it lacks.
    want = f"a table of metric = number, e.g. {{ auc = 0.7 }}; metrics: {', '.join(known)}"
    if not isinstance(raw, Mapping):
        raise ConfigError(key, raw, want)
    out: dict[str, float] = {}
    for metric, value in raw.items():
        if metric not in known:
            raise ConfigError(f"{key}.{metric}", value, f"a metric of {', '.join(known)}")
        out[str(metric)] = _number(f"{key}.{metric}", value)
    return out


def _gate(key: str, body: Any) -> GateSpec:
    from modelmill.registry.gate import named_thresholds

    table = _table(key, body, _GATE_KEYS)
    minimum = _thresholds(f"{key}.min", table.get("min", {}))
    maximum = _thresholds(f"{key}.max", table.get("max", {}))
    regression = _thresholds(f"{key}.max_regression", table.get("max_regression", {}))
    for metric, value in regression.items():
        if value < 0:
            raise ConfigError(f"{key}.max_regression.{metric}", value, "0 or more (how much worse it may be)")
    named = {n: _number(f"{key}.{n}", table[n]) for n in ("max_calibration_error", "max_log_loss",
                                                           "max_log_loss_increase") if n in table}
    try:  # the named calibration bounds are max / max_regression entries (calibration_error, logloss)
        named_thresholds(maximum, regression, **named)
    except InputError as exc:
        raise ConfigError(f"{key}.{exc.field}", exc.value, "a number, 0 or more, not in conflict with the same "
                          "metric's max or max_regression entry") from None
    if not (minimum or maximum or regression):
        raise ConfigError(f"{key}.min", None, "at least one threshold in min, max or max_regression, "
                          "e.g. min = { auc = 0.7 }")
    strings = {}
    for name, default in (("label", "label"), ("data", "holdout"), ("against", "production")):
        value = table.get(name, default)
        if not isinstance(value, str) or not value.strip():
            what = {"label": "the label column of the holdout", "data": "the name of the pipeline output "
                    "holding the labelled holdout frame", "against": "the alias the candidate must not regress "
                    "against"}[name]
            raise ConfigError(f"{key}.{name}", value, what)
        strings[name] = value
    return GateSpec(minimum=minimum, maximum=maximum, max_regression=regression, **strings)


def _rule(key: str, kind: str, body: Any) -> RuleSpec:
    table = _table(key, body, (*_RULE_KEYS[kind], *_COMMON_RULE_KEYS))
    window = _duration(f"{key}.window", table.get("window", DEFAULT_WINDOW))
    raw_for = table.get("for", 0)
    for_s = 0.0 if raw_for in (0, "0", "0s") else _duration(f"{key}.for", raw_for)
    actions = table.get("actions", ["retrain"])
    if isinstance(actions, str) or not isinstance(actions, Sequence) or not all(a in ACTIONS for a in actions) \
            or len(set(actions)) != len(actions):
        raise ConfigError(f"{key}.actions", actions, f"a list of distinct actions out of {list(ACTIONS)}")
    severity = table.get("severity", "warning")
    if not isinstance(severity, str) or not severity:
        raise ConfigError(f"{key}.severity", severity, "a label such as 'warning' or 'critical'")
    common: dict[str, Any] = {"kind": kind, "window": window, "for_s": for_s, "actions": tuple(actions),
                              "severity": severity}
    if kind == "drift":
        share = _required(key, table, "share", "the share of drifted columns above which it fires, in (0, 1]")
        if not 0 < share <= 1:
            raise ConfigError(f"{key}.share", share, "a share in (0, 1]")
        score = table.get("score", "share")
        if score not in ("share", "importance"):
            raise ConfigError(f"{key}.score", score, "'share' (of drifted columns) or 'importance' (weighted)")
        return RuleSpec(threshold=share, score=score, **common)
    if kind == "latency":
        p95 = _required(key, table, "p95_ms", "the p95 latency in ms above which it fires")
        if p95 <= 0:
            raise ConfigError(f"{key}.p95_ms", p95, "a positive number of milliseconds")
        return RuleSpec(threshold=p95, **common)
    if kind == "error_rate":
        rate = _required(key, table, "max_rate", "the error rate above which it fires, in [0, 1)")
        if not 0 <= rate < 1:
            raise ConfigError(f"{key}.max_rate", rate, "a share in [0, 1)")
        return RuleSpec(threshold=rate, min_count=_count(f"{key}.min_requests", table.get("min_requests", 100)),
                        **common)
    metric = table.get("metric", "auc")
    estimated = kind == "estimated_metric_drop"
    if estimated:
        from modelmill.monitoring.estimate import ESTIMATED_METRICS

        if metric not in ESTIMATED_METRICS:
            raise ConfigError(f"{key}.metric", metric, f"one of {', '.join(ESTIMATED_METRICS)}")
    elif metric not in DROP_METRICS:
        raise ConfigError(f"{key}.metric", metric, f"one of {', '.join(DROP_METRICS)}")
    margin = _number(f"{key}.margin", table.get("margin", 0.05))
    if margin < 0:
        raise ConfigError(f"{key}.margin", margin, "0 or more (how far below the baseline it may fall)")
    baseline = table.get("baseline")
    if baseline is not None:
        baseline = _number(f"{key}.baseline", baseline)
    least = ("min_rows", "min_labels")[not estimated]
    return RuleSpec(threshold=None, metric=metric, margin=margin, baseline=baseline,
                    min_count=_count(f"{key}.{least}", table.get(least, 100)), **common)


def _rollout(key: str, body: Any) -> RolloutSpec:
    table = _table(key, body, _ROLLOUT_KEYS)
    try:
        plan = parse_plan(table.get("plan", DEFAULT_PLAN))
    except InputError as exc:
        raise ConfigError(f"{key}.plan", table.get("plan"), f"stages 'shadow' then strictly increasing "
                          f"percentages ending at 100, e.g. [\"shadow\", 5, 50, 100] ({exc.problem})") from None
    guardrails = _guardrails(f"{key}.guardrails", table.get("guardrails", {}))
    min_requests = _count(f"{key}.min_requests", table.get("min_requests", max(100, guardrails.min_samples)))
    if min_requests < guardrails.min_samples:
        raise ConfigError(f"{key}.min_requests", min_requests,
                          f"at least guardrails.min_samples ({guardrails.min_samples}): a stage would pass "
                          "before any guardrail could judge it")
    stage = _duration(f"{key}.stage_seconds", table.get("stage_seconds", 60))
    limit = table.get("max_stage_seconds")
    max_stage = None if limit is None else _duration(f"{key}.max_stage_seconds", limit)
    if max_stage is not None and max_stage < stage:
        raise ConfigError(f"{key}.max_stage_seconds", limit, f"at least stage_seconds ({stage:g} s)")
    on_timeout = table.get("on_timeout", "rollback")
    if on_timeout not in ("rollback", "hold"):
        raise ConfigError(f"{key}.on_timeout", on_timeout, "'rollback' or 'hold'")
    return RolloutSpec(plan=plan, min_requests=min_requests, stage_seconds=stage, max_stage_seconds=max_stage,
                       on_timeout=on_timeout, guardrails=guardrails)


def _guardrails(key: str, body: Any) -> Guardrails:
    table = _table(key, body, _GUARDRAIL_KEYS)
    values: dict[str, Any] = {}
    for name, raw in table.items():
        if name in _SWITCHABLE and raw is False:
            values[name] = None  # TOML has no null: false turns the check off
        elif name in ("min_errors", "min_samples"):
            values[name] = _count(f"{key}.{name}", raw, minimum=1)
        else:
            values[name] = _number(f"{key}.{name}", raw)
            if values[name] < 0:
                raise ConfigError(f"{key}.{name}", raw, "0 or more" + (", or false to turn the check off"
                                                                      if name in _SWITCHABLE else ""))
    try:
        return Guardrails(**values)
    except InputError as exc:
        raise ConfigError(f"{key}.significance", table.get("significance"), exc.problem) from None


# ---- values -------------------------------------------------------------------------------------


def _table(key: str, body: Any, known: Sequence[str]) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise ConfigError(key, body, f"a table with the keys {', '.join(sorted(known))}")
    for name in sorted(body):
        if name not in known:
            raise ConfigError(f"{key}.{name}", body[name], f"one of the keys {', '.join(sorted(known))}")
    return body


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(key, value, "a finite number")
    return float(value)


def _count(key: str, value: Any, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(key, value, f"a whole number of at least {minimum}")
    return value


def _required(key: str, table: Mapping[str, Any], name: str, what: str) -> float:
    if name not in table:
        raise ConfigError(f"{key}.{name}", None, what)
    return _number(f"{key}.{name}", table[name])


def _duration(key: str, value: Any) -> float:
    if isinstance(value, bool):
        raise ConfigError(key, value, "a duration such as '90s', '15m', '1h' or a number of seconds")
    try:
        return parse_duration(value, field=key)
    except InputError:
        raise ConfigError(key, value, "a positive duration such as '90s', '15m', '1h' or a number of seconds") \
            from None
