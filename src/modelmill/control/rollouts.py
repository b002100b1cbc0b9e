"""Rollouts as the control plane runs them: list, start, status with events, promote, roll back, drive.

``modelmill rollout ...`` and the ``/v1/rollouts`` routes call these, so a rollout started over
HTTP is the same row a CLI start writes. Starting one sets its first stage's traffic split at once
and stores the rollout; a controller then drives it, stage by stage, by its guardrails:
``modelmill rollout run MODEL`` (or ``modelmill loop``, which drives every active rollout of the
models it runs). Promote and rollback act at once, without a controller.

Every change is audited with ``actor`` (over HTTP, the token's name): the rollout's events, the
route it sets and, when the last stage completes, the move of the ``production`` alias.

    >>> guardrails({"max_latency_ratio": 2.0}, off=["label_loss"]).max_label_loss_increase is None
    True
    >>> start_request({"model": "clf", "version": 2, "plan": ["shadow", 100], "off": ["label_loss"]})["plan"]
    ['shadow', 100]
    >>> start_request({"model": "clf", "version": 2, "guardrails": {"max_latency": 2}})
    Traceback (most recent call last):
    ...
    modelmill.errors.InputError: guardrails.max_latency: is not a field of guardrails; the fields are latency_slack_ms, max_error_rate_increase, max_estimated_loss_increase, max_label_loss_increase, max_latency_ratio, max_output_shift, min_errors, min_samples, significance
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from modelmill.control import fields
from modelmill.errors import InputError
from modelmill.registry import check_version
from modelmill.registry.aliases import check_alias
from modelmill.registry.versions import check_model_name
from modelmill.rollout import CHECKS, Guardrails, RolloutController, ServingGuardrails, Step
from modelmill.rollout.controller import ON_TIMEOUT

__all__ = ["CHECK_LIMITS", "START_FIELDS", "controller", "drive_rollout", "guardrails", "list_rollouts",
           "promote_rollout", "rollback_rollout", "rollout_status", "start_request", "start_rollout"]

#: The Guardrails setting that turns each check off when it is None.
CHECK_LIMITS = {"error_rate": "max_error_rate_increase", "latency_p95": "max_latency_ratio",
                "output_shift": "max_output_shift", "label_loss": "max_label_loss_increase"}
#: What ``POST /v1/rollouts`` takes: the options of ``modelmill rollout start``.
START_FIELDS = ("model", "version", "baseline", "plan", "min_requests", "stage_seconds", "max_stage_seconds",
                "on_timeout", "guardrails", "off")
_GUARDRAIL_FIELDS = tuple(f.name for f in dataclasses.fields(Guardrails))


def controller(project: Any, *, actor: str, metrics_url: str | None = None) -> RolloutController:
    """The controller every command and route uses: serving's route table and prediction log (and the
    server's ``/metrics`` counters when ``metrics_url`` is given), acting as ``actor``."""
    return RolloutController(project, source=ServingGuardrails(project, metrics_url=metrics_url), actor=actor)


def guardrails(settings: Mapping[str, Any] | None = None, *, off: Sequence[str] = ()) -> Guardrails:
    """:class:`Guardrails` with ``settings`` (its field names; None turns a check off) and the checks named
    in ``off`` (see :data:`~modelmill.rollout.CHECKS`) turned off."""
    unknown = sorted(set(off) - set(CHECKS))
    if unknown:
        raise InputError("off", f"names no guardrail; the guardrails are {', '.join(CHECKS)}", unknown[0])
    # checked as the HTTP body is (a negative allowed increase, a significance of 2...), whoever calls: the CLI's
    # options and the loop's config reach the controller through here too
    values = _guardrail_settings(dict(settings or {}))
    values.update(dict.fromkeys((CHECK_LIMITS[c] for c in off), None))
    return Guardrails(**values)


def _guardrail_settings(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise InputError("guardrails", "must be an object of guardrail settings", raw)
    try:
        fields.only(raw, _GUARDRAIL_FIELDS, "guardrails")
    except InputError as exc:
        raise InputError(f"guardrails.{exc.field}", exc.problem) from None
    out: dict[str, Any] = {}
    for key in raw:
        where = f"guardrails.{key}"
        if key in ("min_samples", "min_errors"):
            out[key] = fields.integer({where: raw[key]}, where, minimum=1)
        elif key == "significance":
            out[key] = fields.number({where: raw[key]}, where, exclusive=True, maximum=0.999999)
        else:  # a threshold; null turns its check off (latency_slack_ms is always on)
            out[key] = fields.number({where: raw[key]}, where, None, nullable=key != "latency_slack_ms")
    return out


def _plan(body: Mapping[str, Any]) -> str | list[str | int] | None:
    if "plan" not in body:
        return None
    plan = body["plan"]
    if isinstance(plan, str) and len(plan) <= 200:
        return plan
    if isinstance(plan, list) and 0 < len(plan) <= 100 and all(
            p == "shadow" or (isinstance(p, int) and not isinstance(p, bool)) for p in plan):
        return list(plan)
    raise InputError("plan", "must be a string such as 'shadow,5,10,50,100' or an array such as "
                             "['shadow', 5, 10, 50, 100]", plan)


def _baseline(body: Mapping[str, Any]) -> int | str:
    baseline = body.get("baseline", "production")
    if isinstance(baseline, int) and not isinstance(baseline, bool):
        return check_version(baseline, "baseline")
    try:
        return check_alias(baseline)
    except InputError:
        raise InputError("baseline", "must be a version number or an alias (production, ...)", baseline) from None


def start_request(body: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of :func:`start_rollout` a ``POST /v1/rollouts`` body gives (checked)."""
    fields.only(body, START_FIELDS, "a rollout")
    model = check_model_name(fields.string(body, "model", max_length=128))
    if isinstance(body.get("version"), bool) or not isinstance(body.get("version"), int):
        raise InputError("version", "is required: the candidate's version number (a JSON integer)",
                         body.get("version"))
    out: dict[str, Any] = {"model": model, "version": check_version(body["version"]), "baseline": _baseline(body)}
    plan = _plan(body)
    if plan is not None:
        out["plan"] = plan
    if "min_requests" in body:
        out["min_requests"] = fields.integer(body, "min_requests")
    if "stage_seconds" in body:
        out["stage_seconds"] = fields.number(body, "stage_seconds", maximum=10**9)
    out["max_stage_seconds"] = fields.number(body, "max_stage_seconds", None, nullable=True, exclusive=True,
                                             maximum=10**10)
    on_timeout = fields.string(body, "on_timeout", "rollback")
    if on_timeout not in ON_TIMEOUT:
        raise InputError("on_timeout", "must be 'rollback' or 'hold'", on_timeout)
    out["on_timeout"] = on_timeout
    out["guardrails"] = guardrails(_guardrail_settings(body.get("guardrails", {})), off=fields.strings(body, "off"))
    return out


def list_rollouts(project: Any) -> dict[str, Any]:
    """``{"rollouts": [rollout, ...]}``: the active ones, oldest first."""
    return {"rollouts": [s.as_dict() for s in RolloutController(project).active()]}


def start_rollout(project: Any, model: str, version: int, *, actor: str, metrics_url: str | None = None,
                  **settings: Any) -> dict[str, Any]:
    """Start a rollout of ``model@version`` (``settings`` as :meth:`RolloutController.start` takes them);
    ``{"rollout": ...}``. Its first stage's traffic is set now; a controller drives the rest."""
    state = controller(project, actor=actor, metrics_url=metrics_url).start(model, version, **settings)
    return {"rollout": state.as_dict()}


def rollout_status(project: Any, model: str) -> dict[str, Any]:
    """``{"rollout": ..., "events": [...]}`` of ``model``'s newest rollout, active or finished."""
    ctl = RolloutController(project)
    state = ctl.get(model)
    return {"rollout": state.as_dict(), "events": ctl.events(state.id)}


def promote_rollout(project: Any, model: str, *, actor: str, reason: str = "promoted by hand") -> dict[str, Any]:
    """Move ``model``'s rollout to its next stage now (past the last one: completed, and ``production``
    moves to the candidate); the step as ``{"action", "reason", ..., "rollout"}``."""
    return controller(project, actor=actor).promote(model, actor=actor, reason=reason).as_dict()


def rollback_rollout(project: Any, model: str, *, actor: str, reason: str = "rolled back by hand") -> dict[str, Any]:
    """Send all of ``model``'s traffic back to the baseline and end the rollout; the step."""
    return controller(project, actor=actor).rollback(model, actor=actor, reason=reason).as_dict()


def drive_rollout(project: Any, model: str, *, actor: str, interval_s: float = 5.0,
                  max_seconds: float | None = None, metrics_url: str | None = None,
                  on_step: Callable[[Step], None] | None = None) -> dict[str, Any]:
    """Step ``model``'s active rollout until it finishes (or ``max_seconds``): the last step with ``events``."""
    ctl = controller(project, actor=actor, metrics_url=metrics_url)
    step = ctl.run(model, interval_s=interval_s, max_seconds=max_seconds, on_step=on_step)
    return {**step.as_dict(), "events": ctl.events(step.state.id)}
