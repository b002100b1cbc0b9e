"""What the loop decides about a finished retraining run: gate its version, then start its rollout.

Each finished (or failed) trigger of a model's pipeline gets one row in ``loop_decisions``, claimed by its
``INSERT`` (``trigger_id`` is unique), and moves::

    pending ─► rejected                      the gate said no (the decision is on the version too)
            ─► failed                        the run failed, named no version of the model, lacks its data,
                                             or the gate could not score the version on it
            ─► accepted ─► rolling_out       a rollout of the version started (``rollout_id``)
                        ─► rejected          the version was rolled back before (a cached re-run names it again)
                        ─► waiting ─► …      no baseline alias yet, or another rollout is active: retried
                                             each round, until a newer accepted version supersedes it
            ─► skipped                       the version is already the baseline
    superseded                               a newer run of the same model was decided first

Of several runs that finished between two rounds only the newest is decided (the others are
``superseded``), and a trigger older than the model's newest decision is never picked up. A loop that died
half-way leaves the row ``pending`` or ``accepted``; the next round takes it up from there (the gate is
deterministic, and a rollout already started for the version is adopted, not started twice).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from modelmill.errors import ConflictError, InputError, ModelmillError, NotFoundError, StoreError
from modelmill.loop.config import ModelLoop
from modelmill.store.tables.experiments import rollouts
from modelmill.store.tables.loop import loop_decisions
from modelmill.store.tables.training import pipeline_runs, triggers

__all__ = ["OPEN", "Decider", "decision_dict"]

log = logging.getLogger("modelmill.loop")

#: Decisions a round takes up again.
OPEN = ("pending", "accepted", "waiting")


def decision_dict(row: Any) -> dict[str, Any]:
    return {"id": row.id, "model": row.model, "trigger_id": row.trigger_id, "pipeline_run_id": row.pipeline_run_id,
            "version": row.version, "status": row.status, "gate": row.gate, "rollout_id": row.rollout_id,
            "reason": row.reason, "created_at": row.created_at, "updated_at": row.updated_at}


class Decider:
    """Decides the finished runs of one model's pipeline. ``still_leader()`` is asked before each write
    that acts (the gate's record, a rollout's start): a loop that lost its lease stops there."""

    def __init__(self, project: Any, model: ModelLoop, *, controller: Any, actor: str = "loop",
                 still_leader: Callable[[], bool] = lambda: True, clock: Callable[[], float] = time.time) -> None:
        self.project = project
        self.model = model
        self.controller = controller
        self.actor = actor
        self.still_leader = still_leader
        self.clock = clock

    def __repr__(self) -> str:
        return f"Decider(model={self.model.name!r})"

    # ---- one round -------------------------------------------------------------------------------

    def round(self) -> list[dict[str, Any]]:
        """Claim the newly finished runs, then carry every open decision as far as it goes; returns what moved."""
        out = [d for d in self._claim_new() if d["status"] not in OPEN]  # failed or superseded on arrival
        for row in self._open():
            if not self.still_leader():
                break
            after = self._carry(row)
            if after is not None:
                out.append(after)
        return out

    def _claim_new(self) -> list[dict[str, Any]]:
        t, d = triggers.c, loop_decisions.c
        with self.project.db.engine.connect() as conn:
            newest = conn.execute(sa.select(sa.func.max(d.trigger_id)).where(d.model == self.model.name)).scalar()
            q = sa.select(triggers).where(t.pipeline == self.model.pipeline.function,
                                          t.status.in_(("finished", "failed"))).order_by(t.id)
            if newest is not None:
                q = q.where(t.id > newest)
            done = conn.execute(q).all()
        made = []
        for i, trig in enumerate(done):
            if i < len(done) - 1:
                made.append(self._insert(trig, "superseded", f"a newer run of {self.model.pipeline.function} "
                                         f"(trigger {done[-1].id}) finished before this one was decided"))
            elif trig.status != "finished":
                made.append(self._insert(trig, "failed", f"retraining run of trigger {trig.id} failed: "
                                         f"{(trig.error or 'no error recorded')[-500:]}"))
            else:
                made.append(self._insert(trig, "pending", f"retraining run of trigger {trig.id} finished "
                                         f"({trig.reason})"))
        return [d for d in made if d is not None]

    def _insert(self, trig: Any, status: str, reason: str) -> dict[str, Any] | None:
        now = self.clock()
        d = loop_decisions.c
        try:
            with self.project.db.begin() as conn:
                conn.execute(loop_decisions.insert().values(
                    model=self.model.name, trigger_id=trig.id, pipeline_run_id=trig.pipeline_run_id,
                    status=status, reason=reason, created_at=now, updated_at=now))
                return decision_dict(conn.execute(sa.select(loop_decisions).where(d.trigger_id == trig.id)).one())
        except sa.exc.IntegrityError:
            return None  # decided already (a loop that lost its lease got here first)

    def _open(self) -> list[Any]:
        d = loop_decisions.c
        with self.project.db.engine.connect() as conn:
            return list(conn.execute(sa.select(loop_decisions).where(
                d.model == self.model.name, d.status.in_(OPEN)).order_by(d.id)).all())

    def _update(self, row: Any, status: str, reason: str, **values: Any) -> dict[str, Any]:
        d = loop_decisions.c
        with self.project.db.begin() as conn:
            conn.execute(loop_decisions.update().where(d.id == row.id, d.status == row.status).values(
                status=status, reason=reason, updated_at=self.clock(), **values))
            self.project.db.audit(conn, actor=self.actor, action=f"loop.{status}", subject=f"model:{self.model.name}",
                                  detail={"trigger_id": row.trigger_id, "reason": reason,
                                          **{k: v for k, v in values.items() if k != "gate"}})
            if status == "accepted":  # the newest accepted version replaces any that still waits
                conn.execute(loop_decisions.update().where(
                    d.model == self.model.name, d.id < row.id, d.status.in_(OPEN)).values(
                    status="superseded", reason=f"trigger {row.trigger_id}'s version was accepted later",
                    updated_at=self.clock()))
            new = conn.execute(sa.select(loop_decisions).where(d.id == row.id)).one()
        log.info("model %s: trigger %s %s: %s", self.model.name, row.trigger_id, status, reason)
        return decision_dict(new)

    # ---- one decision ----------------------------------------------------------------------------

    def _carry(self, row: Any) -> dict[str, Any] | None:
        try:
            if row.status == "pending":
                return self._gate(row)
            return self._start(row)
        except StoreError:
            raise  # persistence failed (a server away): the decision stays open, the next round retries it
        except ModelmillError as exc:
            return self._update(row, "failed", exc.message)
        except Exception as exc:  # the candidate's own code failed (its predict, its pickle): it is not rolled out
            log.exception("model %s: deciding trigger %s failed", self.model.name, row.trigger_id)
            return self._update(row, "failed", f"{type(exc).__name__}: {exc}"[:1000])

    def _gate(self, row: Any) -> dict[str, Any] | None:
        from modelmill.registry import Registry, gate
        from modelmill.training import get_pipeline

        version = self._version(row)
        if version is None:
            return self._update(row, "failed", f"pipeline run {row.pipeline_run_id} registered no version of "
                                f"{self.model.name}: record it with ctx.record(model_version=\"{self.model.name}@V\")")
        spec = self.model.gate
        pipeline = get_pipeline(self.model.pipeline.function, self.project)
        try:
            data = pipeline.output(self.project, row.pipeline_run_id, spec.data)
        except NotFoundError:
            return self._update(row, "failed", f"pipeline run {row.pipeline_run_id} has no output {spec.data!r}, "
                                f"the labelled holdout the gate judges {self.model.name}@{version} on "
                                f"(models.{self.model.name}.gate.data)", version=version)
        if not hasattr(data, "columns") or spec.label not in data.columns:
            return self._update(row, "failed", f"output {spec.data!r} of pipeline run {row.pipeline_run_id} is not "
                                f"a frame with the label column {spec.label!r} (models.{self.model.name}.gate.label)",
                                version=version)
        if not self.still_leader():
            return decision_dict(row)
        registry = Registry(self.project)
        try:
            result = gate(registry, registry.get(self.model.name, version), data=data,
                          against=f"{self.model.name}@{spec.against}", label=spec.label, minimum=dict(spec.minimum),
                          maximum=dict(spec.maximum), max_regression=dict(spec.max_regression), actor=self.actor)
        except StoreError:
            raise
        except Exception as exc:  # the holdout does not fit the model, or the model fails on it
            why = exc.message if isinstance(exc, ModelmillError) else f"{type(exc).__name__}: {exc}"
            return self._update(row, "failed", f"the gate could not judge {self.model.name}@{version}: {why}"[:1000],
                                version=version)
        status = "accepted" if result.accepted else "rejected"
        after = self._update(row, status, result.reason, version=version, gate=result.to_dict())
        if not result.accepted:
            return after
        with self.project.db.engine.connect() as conn:
            fresh = conn.execute(sa.select(loop_decisions).where(loop_decisions.c.id == row.id)).one()
        return self._start(fresh)

    def _version(self, row: Any) -> int | None:
        if row.pipeline_run_id is None:
            return None
        with self.project.db.engine.connect() as conn:
            lineage = conn.execute(sa.select(pipeline_runs.c.lineage).where(
                pipeline_runs.c.id == row.pipeline_run_id)).scalar()
        ref = (lineage or {}).get("model_version")
        if isinstance(ref, int) and not isinstance(ref, bool):
            return ref
        if isinstance(ref, str):
            name, _, number = ref.rpartition("@")
            if name == self.model.name and number.isdigit():
                return int(number)
        return None

    def _start(self, row: Any) -> dict[str, Any] | None:
        from modelmill.registry import Registry

        name, version, against = self.model.name, int(row.version), self.model.gate.against
        baseline = Registry(self.project).aliases(name).get(against)
        if baseline is None:
            return self._wait(row, f"{name}@{against} is not set, so there is no baseline to roll "
                              f"{name}@{version} out against; set it with `modelmill models alias {name} "
                              f"{against} V`")
        if baseline == version:
            return self._update(row, "skipped", f"{name}@{version} is {name}@{against} already")
        r = rollouts.c
        with self.project.db.engine.connect() as conn:
            mine = conn.execute(sa.select(rollouts.c.id).where(r.model == name, r.candidate == version,
                                                               r.created_at >= row.created_at)
                                .order_by(r.id.desc()).limit(1)).scalar()
            busy = conn.execute(sa.select(rollouts.c.id, r.candidate).where(
                r.model == name, r.status == "running")).first()
            failed = conn.execute(sa.select(rollouts.c.id, r.reason).where(
                r.model == name, r.candidate == version, r.status == "rolled_back").order_by(r.id.desc())).first()
        if mine is not None:  # started by a loop that died before it wrote so down
            return self._update(row, "rolling_out", f"rollout {mine} of {name}@{version} (resumed)", rollout_id=mine)
        if failed is not None:  # a re-run that hit the cache names the same version: it is not tried again
            return self._update(row, "rejected", f"{name}@{version} was rolled back before (rollout {failed.id}: "
                                f"{(failed.reason or 'no reason recorded')[:300]}); the loop does not roll it out again")
        if busy is not None:
            return self._wait(row, f"rollout {busy.id} of {name}@{busy.candidate} is active; {name}@{version} "
                              "starts when it ends")
        if not self.still_leader():
            return None
        try:
            state = self.controller.start(name, version, baseline=against, **self.model.rollout.start_kwargs())
        except ConflictError as exc:
            return self._wait(row, exc.message)
        except (InputError, NotFoundError) as exc:
            return self._update(row, "failed", f"rollout of {name}@{version} refused: {exc.message}")
        return self._update(row, "rolling_out", f"rollout {state.id} of {name}@{version} started at stage "
                            f"{state.current} against {name}@{against} (version {baseline})", rollout_id=state.id)

    def _wait(self, row: Any, reason: str) -> dict[str, Any] | None:
        if row.status == "waiting" and row.reason == reason:
            return None  # nothing moved
        return self._update(row, "waiting", reason)
