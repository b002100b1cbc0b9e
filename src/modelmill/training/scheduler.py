"""The scheduler: starts pipelines on cron expressions and on triggers, each exactly once.

Both paths go through one table of triggers. :func:`trigger` inserts a row
(``pending``); a cron tick inserts one keyed by its schedule and tick time, so
two schedulers cannot both enqueue one tick. A scheduler starts a pipeline
only after it claims the trigger with ``UPDATE ... WHERE status = 'pending'``,
which one process alone can win: many schedulers may run against one
database and each trigger still starts its pipeline once.

A claim is a lease: the scheduler running a trigger renews it (every third of
``lease`` seconds) while the pipeline runs. A trigger whose scheduler died (its
lease expired unrenewed) is reclaimed by the next scheduler that polls, with the
same atomic ``UPDATE``: the dead scheduler's pipeline run is marked failed and
resumed (its finished steps are reused), so the trigger still ends with one
pipeline run. A person can still put a stuck trigger back by hand
(:meth:`Scheduler.requeue`).

    >>> import tempfile
    >>> from modelmill.config import Settings
    >>> from modelmill.project import Project
    >>> project = Project(Settings.defaults(home=tempfile.mkdtemp()))
    >>> t = trigger("nightly", "drift alert on dep_delay", key="alert-17", project=project)
    >>> trigger("nightly", "drift alert on dep_delay", key="alert-17", project=project) == t
    True
    >>> project.close()
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from croniter import croniter

from modelmill.errors import ConflictError, InputError, NotFoundError
from modelmill.project import Project, open_project
from modelmill.store.tables.training import pipeline_runs, schedules, triggers
from modelmill.training.pipeline import Pipeline, PipelineResult, get_pipeline

__all__ = ["Scheduler", "TriggerInfo", "trigger"]

log = logging.getLogger("modelmill.training.scheduler")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TriggerInfo:
    id: int
    key: str
    pipeline: str
    reason: str
    status: str  # pending | running | finished | failed
    created_at: float
    claimed_by: str | None = None
    pipeline_run_id: str | None = None
    error: str | None = None
    lease_expires_at: float | None = None
    reclaims: int = 0


def trigger(pipeline_name: str, reason: str, *, key: str | None = None, params: Mapping[str, Any] | None = None,
            project: Project | None = None) -> int:
    """Ask for one run of ``pipeline_name``; returns the trigger's id. Monitoring alerts call this.

    ``key`` makes it idempotent: a second call with the same key returns the first trigger's id
    (an alert that fires twice retrains once). The pipeline starts when a scheduler next polls.
    """
    if not isinstance(pipeline_name, str) or not pipeline_name:
        raise InputError("pipeline", "must be a pipeline name or 'module:attr'", pipeline_name)
    if not isinstance(reason, str) or not reason.strip():
        raise InputError("reason", "say why the pipeline should run (it is recorded)", reason)
    own = project is None
    proj = project or open_project()
    try:
        return _enqueue(proj, pipeline_name, reason[:500], key or f"manual:{uuid.uuid4().hex}", dict(params or {}))
    finally:
        if own:
            proj.close()


def _enqueue(project: Project, pipeline: str, reason: str, key: str, params: dict[str, Any]) -> int:
    db = project.db
    try:
        with db.begin() as conn:
            result = conn.execute(triggers.insert().values(
                key=key, pipeline=pipeline, reason=reason, params=params, status="pending", created_at=time.time()))
            return int(result.inserted_primary_key[0])  # type: ignore[index]
    except sa.exc.IntegrityError:
        with db.engine.connect() as conn:
            found = conn.execute(sa.select(triggers.c.id).where(triggers.c.key == key)).scalar_one()
        return int(found)


class Scheduler:
    """Polls schedules and triggers and runs the pipelines it claims, in this process."""

    def __init__(self, project: Project, *, poll_interval: float = 1.0, worker: str | None = None,
                 resolve: Callable[[str, Project], Pipeline] = get_pipeline, lease: float = 60.0) -> None:
        if poll_interval <= 0:
            raise InputError("poll_interval", "must be a positive number of seconds", poll_interval)
        if isinstance(lease, bool) or not isinstance(lease, int | float) or not 1 <= lease <= 86400:
            raise InputError("lease", "must be 1 to 86400 seconds", lease)
        self.project = project
        self.poll_interval = poll_interval
        self.lease = float(lease)
        self.worker = worker or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.resolve = resolve

    def __repr__(self) -> str:
        return f"Scheduler(worker={self.worker!r}, poll_interval={self.poll_interval}, lease={self.lease:g})"

    # ---- schedules ---------------------------------------------------------------------------

    def schedule(self, pipeline: str, cron: str, *, params: Mapping[str, Any] | None = None,
                 now: float | None = None) -> None:
        """Run ``pipeline`` on ``cron`` (5-field, UTC), from now on; replaces its earlier schedule."""
        if not croniter.is_valid(cron):
            raise InputError("cron", "must be a cron expression such as '0 3 * * *' (minute hour day month weekday)",
                             cron)
        at = time.time() if now is None else now
        with self.project.db.begin() as conn:
            conn.execute(schedules.delete().where(schedules.c.pipeline == pipeline))
            conn.execute(schedules.insert().values(pipeline=pipeline, cron=cron, params=dict(params or {}),
                                                   last_tick=at, created_at=at))

    def unschedule(self, pipeline: str) -> None:
        with self.project.db.begin() as conn:
            if conn.execute(schedules.delete().where(schedules.c.pipeline == pipeline)).rowcount == 0:
                raise NotFoundError("schedule", pipeline, "list schedules with `modelmill pipeline schedules`")

    def schedules(self) -> list[dict[str, Any]]:
        with self.project.db.engine.connect() as conn:
            rows = conn.execute(sa.select(schedules).order_by(schedules.c.pipeline)).all()
        return [{"pipeline": r.pipeline, "cron": r.cron, "params": r.params, "last_tick": r.last_tick,
                 "next_tick": _next(r.cron, r.last_tick)} for r in rows]

    def enqueue_due(self, now: float | None = None) -> list[int]:
        """Turn every cron tick that is due into a trigger. Ticks missed while no scheduler ran
        collapse into one run (the newest), rather than a burst of catch-up runs."""
        at = time.time() if now is None else now
        made = []
        for sched in self.schedules():
            if sched["next_tick"] > at:
                continue
            tick = _last_tick_before(sched["cron"], at)
            stamp = datetime.fromtimestamp(tick, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            made.append(_enqueue(self.project, sched["pipeline"], f"cron {sched['cron']} at {stamp}",
                                 f"cron:{sched['pipeline']}:{stamp}", dict(sched["params"])))
            with self.project.db.begin() as conn:
                conn.execute(schedules.update().where(
                    (schedules.c.pipeline == sched["pipeline"]) & (schedules.c.last_tick < tick)
                ).values(last_tick=tick))
        return made

    # ---- triggers ----------------------------------------------------------------------------

    def claim(self, now: float | None = None) -> TriggerInfo | None:
        """Claim the oldest pending trigger, or else the oldest one whose scheduler's lease expired
        (``now``: the time to judge leases by, default the clock); None when there is none (or another
        scheduler won it)."""
        t = triggers.c
        for _ in range(10):
            at = time.time() if now is None else now
            with self.project.db.engine.connect() as conn:
                row = conn.execute(sa.select(triggers).where(t.status == "pending").order_by(t.id).limit(1)).first()
                if row is None:
                    expired = (t.lease_expires_at < at) | (t.lease_expires_at.is_(None) & (t.started_at < at - self.lease))
                    row = conn.execute(sa.select(triggers).where((t.status == "running") & expired)
                                       .order_by(t.id).limit(1)).first()
            if row is None:
                return None
            lease_until = time.time() + self.lease
            with self.project.db.begin() as conn:
                if row.status == "pending":
                    won = conn.execute(triggers.update().where((t.id == row.id) & (t.status == "pending")).values(
                        status="running", claimed_by=self.worker, started_at=time.time(),
                        lease_expires_at=lease_until)).rowcount
                    reclaims = row.reclaims or 0
                else:
                    # Only if nobody renewed or reclaimed it since we read it: the same atomic claim.
                    same_lease = (t.lease_expires_at.is_(None) if row.lease_expires_at is None
                                  else t.lease_expires_at == row.lease_expires_at)
                    reclaims = (row.reclaims or 0) + 1
                    won = conn.execute(triggers.update().where(
                        (t.id == row.id) & (t.status == "running") & (t.claimed_by == row.claimed_by) & same_lease
                    ).values(claimed_by=self.worker, lease_expires_at=lease_until, reclaims=reclaims)).rowcount
                    if won == 1:
                        log.warning("trigger %s: scheduler %s's lease expired; %s reclaims it", row.id,
                                    row.claimed_by, self.worker)
            if won == 1:
                return _trigger_info(row, status="running", claimed_by=self.worker, lease_expires_at=lease_until,
                                     reclaims=reclaims)
        return None

    def renew(self, trigger_id: int) -> bool:
        """Extend this scheduler's lease on a trigger it runs; False when it no longer holds it."""
        t = triggers.c
        with self.project.db.begin() as conn:
            return conn.execute(triggers.update().where(
                (t.id == trigger_id) & (t.status == "running") & (t.claimed_by == self.worker)
            ).values(lease_expires_at=time.time() + self.lease)).rowcount == 1

    def run_trigger(self, info: TriggerInfo) -> TriggerInfo:
        """Run a claimed trigger's pipeline; record and return the trigger's outcome."""
        t = triggers.c
        result: PipelineResult | None = None
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(info.id, stop), daemon=True,
                                name=f"mm-lease-{info.id}")
        beat.start()
        try:
            pipeline = self.resolve(info.pipeline, self.project)
            with self.project.db.engine.connect() as conn:
                params, earlier = conn.execute(sa.select(t.params, t.pipeline_run_id).where(t.id == info.id)).one()
            resume = self._take_over(earlier, info) if earlier else None
            if resume is not None:
                result = pipeline.run(self.project, resume=resume)
            else:
                new_id = uuid.uuid4().hex
                with self.project.db.begin() as conn:  # known before it starts: a reclaim resumes this run
                    conn.execute(triggers.update().where(t.id == info.id).values(pipeline_run_id=new_id))
                result = pipeline.run(self.project, params=params, reason=f"trigger {info.id}: {info.reason}"[:500],
                                      run_id=new_id)
            error = result.error
        except Exception as exc:
            error = "".join(traceback.format_exception_only(exc)).strip()[-4000:]
        finally:
            stop.set()
            beat.join()
        status = "finished" if result is not None and result.status == "finished" else "failed"
        run_id = None if result is None else result.id
        with self.project.db.begin() as conn:
            values: dict[str, Any] = {"status": status, "ended_at": time.time(), "error": error}
            if run_id is not None:
                values["pipeline_run_id"] = run_id
            kept = conn.execute(triggers.update().where((t.id == info.id) & (t.claimed_by == self.worker))
                                .values(**values)).rowcount
        if kept != 1:
            log.error("trigger %s was reclaimed from %s while it ran (its lease lapsed): its outcome, %s, "
                      "is left to the scheduler that holds it", info.id, self.worker, status)
        self._report(info, status, error)
        return dataclasses.replace(info, status=status, error=error, pipeline_run_id=run_id)

    def _heartbeat(self, trigger_id: int, stop: threading.Event) -> None:
        while not stop.wait(self.lease / 3):
            try:
                if not self.renew(trigger_id):
                    log.error("trigger %s: %s no longer holds its lease", trigger_id, self.worker)
                    return
            except Exception as exc:  # a database hiccup: try again next beat, the lease has slack
                log.warning("trigger %s: could not renew the lease: %s", trigger_id, exc)

    def _take_over(self, pipeline_run_id: str, info: TriggerInfo) -> str | None:
        """The pipeline run a dead scheduler left ``running`` for this trigger, marked failed to be resumed;
        None when there is none to resume (it never started, or it ended)."""
        pr = pipeline_runs.c
        with self.project.db.begin() as conn:
            row = conn.execute(sa.select(pr.status).where(pr.id == pipeline_run_id)).first()
            if row is None:
                return None
            if row.status == "running":
                conn.execute(pipeline_runs.update().where((pr.id == pipeline_run_id) & (pr.status == "running"))
                             .values(status="failed", ended_at=time.time(),
                                     error=f"its scheduler stopped renewing the lease of trigger {info.id}"))
            elif row.status != "failed":
                return None
        return pipeline_run_id

    def _report(self, info: TriggerInfo, status: str, error: str | None) -> None:
        """Tell the alert that queued this trigger (if one did) how its run ended."""
        if not info.key.startswith("alert:"):
            return
        from modelmill.monitoring.alerts import record_trigger_outcome

        try:
            record_trigger_outcome(self.project, key=info.key, trigger_id=info.id, status=status, error=error)
        except Exception as exc:  # the trigger row holds the outcome already; the alert's copy is a courtesy
            log.error("could not record trigger %s's outcome on its alert: %s", info.id, exc)

    def requeue(self, trigger_id: int) -> None:
        """Put a trigger stuck in ``running`` (its scheduler died) back to ``pending``."""
        t = triggers.c
        with self.project.db.begin() as conn:
            if conn.execute(triggers.update().where((t.id == trigger_id) & (t.status == "running"))
                            .values(status="pending", claimed_by=None, lease_expires_at=None)).rowcount != 1:
                raise ConflictError(f"trigger {trigger_id} is not running; only a running trigger is requeued",
                                    trigger_id=trigger_id)

    def triggers(self, *, limit: int = 50) -> list[TriggerInfo]:
        with self.project.db.engine.connect() as conn:
            rows = conn.execute(sa.select(triggers).order_by(triggers.c.id.desc()).limit(limit)).all()
        return [_trigger_info(r) for r in rows]

    # ---- the loop ----------------------------------------------------------------------------

    def tick(self, now: float | None = None) -> list[TriggerInfo]:
        """Enqueue due cron ticks, then run every trigger this scheduler can claim; returns those it ran."""
        self.enqueue_due(now)
        ran = []
        while (info := self.claim()) is not None:
            ran.append(self.run_trigger(info))
        return ran

    def run(self, *, once: bool = False, max_seconds: float | None = None,
            on_tick: Callable[[list[TriggerInfo]], None] | None = None) -> list[TriggerInfo]:
        """Poll until interrupted, or one pass (``once``), or for ``max_seconds``; returns what it ran."""
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        ran: list[TriggerInfo] = []
        while True:
            done = self.tick()
            ran.extend(done)
            if on_tick is not None:
                on_tick(done)
            if once or (deadline is not None and time.monotonic() >= deadline):
                return ran
            wait = self.poll_interval if deadline is None else min(self.poll_interval, deadline - time.monotonic())
            time.sleep(max(0.0, wait))


def _trigger_info(row: Any, **changes: Any) -> TriggerInfo:
    info = TriggerInfo(id=row.id, key=row.key, pipeline=row.pipeline, reason=row.reason, status=row.status,
                       created_at=row.created_at, claimed_by=row.claimed_by, pipeline_run_id=row.pipeline_run_id,
                       error=row.error, lease_expires_at=row.lease_expires_at, reclaims=row.reclaims or 0)
    return dataclasses.replace(info, **changes)


def _next(cron: str, after: float) -> float:
    return float(croniter(cron, datetime.fromtimestamp(after, UTC)).get_next(float))


def _last_tick_before(cron: str, now: float) -> float:
    """The newest tick of ``cron`` at or before ``now`` (cron ticks fall on whole seconds)."""
    return float(croniter(cron, datetime.fromtimestamp(now + 1, UTC)).get_prev(float))
