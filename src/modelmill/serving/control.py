"""The control plane over HTTP: the registry, rollouts, experiments, pipelines and monitoring.

Each route calls one function of :mod:`modelmill.control`, the implementation the CLI calls too, so
``POST /v1/rollouts`` and ``modelmill rollout start --detach`` store the same rollout. Reads need role
``read``, changes role ``admin``; every change is audited with the token's name as the actor
(``token:<name>``)::

    GET  /v1/models                          every model: versions, aliases
    GET  /v1/models/{name}/versions/{v}      one version: lineage, run, gate decisions, alias history
    GET  /v1/rollouts                        the active rollouts
    POST /v1/rollouts                        start one: {"model", "version", "plan", "guardrails", ...}
    GET  /v1/rollouts/{name}                 a model's newest rollout with its events
    POST /v1/rollouts/{name}/promote         to the next stage now: {"reason"}
    POST /v1/rollouts/{name}/rollback        back to the baseline: {"reason"}
    POST /v1/experiments                     create one: {"name", "variants", "metric", "model", ...}
    GET  /v1/experiments/{name}              exposures, the analysis and each treatment's decision
    POST /v1/experiments/{name}/stop         all traffic to the winner: {"winner"}
    POST /v1/pipelines/{name}/runs           enqueue a run: {"reason", "key", "params"}
    GET  /v1/pipelines/{name}/runs/{id}      the trigger's status and the run it started
    GET  /v1/monitoring                      the latest window per model version, and the alerts
    GET  /v1/webhooks/deliveries             the webhook outbox: each event's delivery status (status, kind, limit)

A rollout started over HTTP sets its first stage's traffic at once and is then driven by a
controller outside the server: ``modelmill rollout run NAME``, or ``modelmill loop`` for a model of its
``[models.NAME]`` tables. Promote and rollback act at once. A pipeline run is enqueued for
``modelmill scheduler`` (or ``modelmill loop``).
A change to traffic (rollouts, experiments) takes effect in this worker at once, in the others at
their next reload.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from modelmill import control
from modelmill.control import fields
from modelmill.errors import InputError
from modelmill.registry import check_version
from modelmill.security import actor
from modelmill.serving.admin import parse_object
from modelmill.serving.limits import read_body
from modelmill.serving.responses import error_response, json_response
from modelmill.serving.server import ModelServer

__all__ = ["ControlRoutes"]

_ID = re.compile(r"[0-9]{1,18}")


def _error(exc: BaseException) -> Response:
    return error_response(exc)  # a RolloutError is a 409, a ConfigError a 503 (responses.status_of)


def _trigger_id(raw: str) -> int:
    if not _ID.fullmatch(raw):
        raise InputError("id", "must be a trigger id: ASCII digits", raw)
    return int(raw)


class ControlRoutes:
    """The endpoints over one :class:`ModelServer` (the project of its registry and route table)."""

    def __init__(self, server: ModelServer) -> None:
        self.server = server

    def _project(self) -> Any:
        return self.server.project("show or change its registry, rollouts, experiments or pipelines")

    async def _body(self, request: Request, *, optional: bool = False) -> dict[str, Any]:
        body = await read_body(request.receive, request.headers, self.server.config.limits.max_body_bytes)
        if optional and not body.strip():
            return {}
        return parse_object(body)

    async def _call(self, fn: Callable[..., dict[str, Any]], *args: Any, reload: bool = False,
                    **kwargs: Any) -> Response:
        """``fn(project, *args, **kwargs)`` off the event loop (database and store I/O), as JSON."""
        def run() -> dict[str, Any]:
            return fn(self._project(), *args, **kwargs)

        try:
            answer = await asyncio.to_thread(run)
        except Exception as exc:
            return _error(exc)
        if reload:  # traffic changed: this worker applies it now, the others at their next reload
            try:
                await self.server.reload()
            except Exception:  # the periodic reload tries again; the change itself is stored
                pass
        return json_response(answer)

    # ---- registry ------------------------------------------------------------------------------

    async def list_models(self, request: Request) -> Response:
        return await self._call(control.list_models)

    async def get_version(self, request: Request) -> Response:
        name, version = request.path_params["name"], request.path_params["version"]
        try:
            ref = f"{name}@{check_version(version)}"
        except InputError as exc:
            return _error(exc)
        return await self._call(control.version_detail, ref)

    # ---- rollouts ------------------------------------------------------------------------------

    async def list_rollouts(self, request: Request) -> Response:
        return await self._call(control.list_rollouts)

    async def start_rollout(self, request: Request) -> Response:
        try:
            settings = control.start_request(await self._body(request))
        except Exception as exc:
            return _error(exc)
        return await self._call(control.start_rollout, settings.pop("model"), settings.pop("version"),
                                actor=actor(request), reload=True, **settings)

    async def get_rollout(self, request: Request) -> Response:
        return await self._call(control.rollout_status, request.path_params["name"])

    async def promote_rollout(self, request: Request) -> Response:
        return await self._transition(request, control.promote_rollout, "promoted by hand")

    async def rollback_rollout(self, request: Request) -> Response:
        return await self._transition(request, control.rollback_rollout, "rolled back by hand")

    async def _transition(self, request: Request, fn: Callable[..., dict[str, Any]], default: str) -> Response:
        try:
            body = await self._body(request, optional=True)
            fields.only(body, ("reason",), "a rollout action")
            reason = fields.string(body, "reason", default, max_length=1000)
        except Exception as exc:
            return _error(exc)
        return await self._call(fn, request.path_params["name"], actor=actor(request), reason=reason, reload=True)

    # ---- experiments ---------------------------------------------------------------------------

    async def create_experiment(self, request: Request) -> Response:
        try:
            settings = control.create_request(await self._body(request))
        except Exception as exc:
            return _error(exc)
        return await self._call(control.create_experiment, actor=actor(request), check_versions=True, reload=True,
                                **settings)

    async def get_experiment(self, request: Request) -> Response:
        return await self._call(control.experiment_results, request.path_params["name"])

    async def stop_experiment(self, request: Request) -> Response:
        try:
            body = await self._body(request, optional=True)
            fields.only(body, ("winner",), "an experiment stop")
            winner = fields.string(body, "winner", None, nullable=True)
        except Exception as exc:
            return _error(exc)
        return await self._call(control.stop_experiment, request.path_params["name"], actor=actor(request),
                                winner=winner, reload=True)

    # ---- pipelines -----------------------------------------------------------------------------

    async def trigger_run(self, request: Request) -> Response:
        try:
            settings = control.trigger_request(await self._body(request))
        except Exception as exc:
            return _error(exc)
        return await self._call(control.trigger_pipeline, request.path_params["name"], actor=actor(request),
                                known_only=True, **settings)

    async def get_run(self, request: Request) -> Response:
        try:
            trigger_id = _trigger_id(request.path_params["id"])
        except InputError as exc:
            return _error(exc)
        return await self._call(control.run_status, request.path_params["name"], trigger_id)

    # ---- monitoring ----------------------------------------------------------------------------

    async def monitoring(self, request: Request) -> Response:
        unknown = sorted(set(request.query_params) - {"model"})
        if unknown:
            return _error(InputError(unknown[0], "is not a query parameter of GET /v1/monitoring; use model"))
        return await self._call(control.monitoring_status, model=request.query_params.get("model"))

    # ---- webhooks ------------------------------------------------------------------------------

    async def webhook_deliveries(self, request: Request) -> Response:
        from modelmill.events import list_deliveries

        query = request.query_params
        unknown = sorted(set(query) - {"status", "kind", "limit"})
        try:
            if unknown:
                raise InputError(unknown[0], "is not a query parameter of GET /v1/webhooks/deliveries; use "
                                             "status, kind or limit")
            raw = query.get("limit", "100")
            if not re.fullmatch(r"[0-9]{1,5}", raw):
                raise InputError("limit", "must be an integer from 1 to 10000", raw)
        except InputError as exc:
            return _error(exc)
        return await self._call(list_deliveries, status=query.get("status"), kind=query.get("kind"), limit=int(raw))
