"""Pipeline runs as the control plane asks for them: trigger one, and follow it to its result.

``modelmill pipeline trigger`` and ``POST /v1/pipelines/{name}/runs`` call :func:`trigger_pipeline`:
the run is enqueued (a ``pending`` trigger), and a scheduler starts it on its next poll
(``modelmill scheduler``, or ``modelmill loop``). ``GET /v1/pipelines/{name}/runs/{id}`` follows
the trigger: ``pending``, ``running``, then ``finished`` or ``failed``, with the pipeline run it
started (its steps with their attempts, and lineage; a trigger reclaimed from a dead scheduler
counts its ``reclaims``).

Over HTTP only a pipeline that the project itself names may be triggered: a registered one, one
defined in a module of ``[training] pipelines``, or one that has a schedule. A ``module:attr`` of
any other module is refused (404) without importing it, so a token cannot make the server import
code nobody configured.

    >>> import tempfile
    >>> from modelmill.config import Settings
    >>> from modelmill.project import Project
    >>> project = Project(Settings.defaults(home=tempfile.mkdtemp()))
    >>> queued = trigger_pipeline(project, "nightly", reason="drift on dep_delay", actor="ann")
    >>> run_status(project, "nightly", queued["trigger_id"])["trigger"]["status"]
    'pending'
    >>> project.close()
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from modelmill.control import fields
from modelmill.errors import InputError, NotFoundError
from modelmill.store.tables.training import pipeline_runs, pipeline_steps, triggers
from modelmill.training.pipeline import get_pipeline
from modelmill.training.scheduler import Scheduler, trigger

__all__ = ["TRIGGER_FIELDS", "check_known", "importable_cwd", "run_status", "trigger_pipeline", "trigger_request"]

#: What ``POST /v1/pipelines/{name}/runs`` takes: the options of ``modelmill pipeline trigger``.
TRIGGER_FIELDS = ("reason", "key", "params")


def importable_cwd() -> None:
    """Put the working directory on ``sys.path``: ``module:attr`` names and ``[training] pipelines``
    modules are the project's own files, and a console script does not put it there."""
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)


def trigger_request(body: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of :func:`trigger_pipeline` a ``POST /v1/pipelines/{name}/runs`` body gives."""
    fields.only(body, TRIGGER_FIELDS, "a pipeline trigger")
    params = body.get("params", {})
    if not isinstance(params, dict):
        raise InputError("params", "must be an object of the pipeline's parameters", params)
    reason = fields.string(body, "reason", max_length=500)
    if not reason.strip():
        raise InputError("reason", "say why the pipeline should run (it is recorded)", reason)
    return {"reason": reason, "key": fields.string(body, "key", None, max_length=300, nullable=True),
            "params": params}


def check_known(project: Any, name: str) -> None:
    """Raise :class:`NotFoundError` unless ``name`` is a pipeline the project names (see the module docstring)."""
    listed = project.settings.section("training").get("pipelines", [])
    modules = {str(m) for m in listed} if isinstance(listed, list) else set()
    if ":" in name:
        scheduled = {s["pipeline"] for s in Scheduler(project).schedules()}
        if name.split(":", 1)[0] not in modules and name not in scheduled:
            raise NotFoundError("pipeline", name, "over HTTP a 'module:attr' pipeline must be in a module listed in "
                                "modelmill.toml [training] pipelines, or have a schedule")
    importable_cwd()
    get_pipeline(name, project)


def trigger_pipeline(project: Any, name: str, *, reason: str, actor: str, key: str | None = None,
                     params: Mapping[str, Any] | None = None, known_only: bool = False) -> dict[str, Any]:
    """Enqueue one run of pipeline ``name``; ``{"trigger_id", "pipeline"}``, audited with ``actor``.

    A repeated ``key`` returns the first trigger's id and starts nothing more. ``known_only``
    refuses a pipeline the project does not name (see :func:`check_known`).
    """
    if known_only:
        check_known(project, name)
    trigger_id = trigger(name, reason, key=key, params=params, project=project)
    with project.db.begin() as conn:
        project.db.audit(conn, actor=actor, action="pipeline.trigger", subject=f"pipeline:{name}",
                         detail={"trigger_id": trigger_id, "reason": reason, "key": key,
                                 "params": dict(params or {})})
    return {"trigger_id": trigger_id, "pipeline": name}


def run_status(project: Any, name: str, trigger_id: int) -> dict[str, Any]:
    """``{"trigger": {id, pipeline, status, ...}, "run": pipeline run or null}`` of trigger ``trigger_id``
    of pipeline ``name`` (``status``: pending, running, finished or failed)."""
    t = triggers.c
    with project.db.engine.connect() as conn:
        row = conn.execute(sa.select(triggers).where(t.id == trigger_id, t.pipeline == name)).first()
        if row is None:
            raise NotFoundError("pipeline run", f"{name}/{trigger_id}",
                                f"trigger one with POST /v1/pipelines/{name}/runs")
        run = None
        if row.pipeline_run_id:
            found = conn.execute(sa.select(pipeline_runs).where(pipeline_runs.c.id == row.pipeline_run_id)).first()
            if found is not None:
                steps = conn.execute(sa.select(pipeline_steps).where(
                    pipeline_steps.c.pipeline_run_id == found.id).order_by(pipeline_steps.c.started_at)).all()
                run = {"id": found.id, "pipeline": found.pipeline, "status": found.status, "attempts": found.attempts,
                       "params": found.params, "lineage": found.lineage, "run_id": found.run_id,
                       "started_at": found.started_at, "ended_at": found.ended_at, "failed_step": found.failed_step,
                       "error": found.error,
                       "steps": [{"step": s.step, "status": s.status, "error": s.error,
                                  "attempts": s.attempts or 0, "attempt_log": s.attempt_log or []} for s in steps]}
    info = {"id": row.id, "pipeline": row.pipeline, "key": row.key, "reason": row.reason, "params": row.params,
            "status": row.status, "created_at": row.created_at, "started_at": row.started_at,
            "ended_at": row.ended_at, "claimed_by": row.claimed_by, "pipeline_run_id": row.pipeline_run_id,
            "error": row.error, "lease_expires_at": row.lease_expires_at, "reclaims": row.reclaims or 0}
    return {"trigger": info, "run": run}
