"""The rollout controller: shadow → canary → gradual → full, with guardrails and automatic rollback.

A rollout is a row in the metadata database (plan, current stage, when it
began, the guardrail counters at that moment); the controller holds nothing
else, so a controller killed at any point and started again resumes where the
row says. Every transition is written with its reason to ``rollout_events``
and to the audit trail, in the same transaction as the state change, and is
guarded by the stage it expects (two controllers cannot both advance).

Each :meth:`RolloutController.step` looks at the current stage once:

- a guardrail breached → roll back at once (all traffic to the baseline);
- a guardrail without enough data to pass (see :func:`~modelmill.rollout.guardrails.check`)
  → hold, and once the stage has run ``max_stage_seconds`` → roll back
  (``on_timeout="rollback"``, the default) or keep holding (``"hold"``): a
  rollout that cannot see its candidate never advances;
- the stage has run ``stage_seconds``, the candidate has answered
  ``min_requests`` and every guardrail passed → next stage, or ``completed``
  after the last one;
- otherwise → hold.

A plan whose ``min_requests`` is below the guardrails' ``min_samples`` is
refused when it starts, and so is a candidate or baseline that the registry
cannot resolve (see :meth:`RouteSink.check`).

:meth:`RolloutController.run` calls ``step`` every ``interval_s`` seconds, so a
breach is acted on within one evaluation interval.

Routes per stage (the split is sticky: ``candidate`` sorts before ``stable``, so
the canary's users stay in it as it grows)::

    shadow   stable 100%, candidate mirrored (answers nobody)
    5 .. 99  candidate k%, stable 100-k%
    100      candidate 100%, stable mirrored (a reference for the guardrails)
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa

from modelmill.errors import ConflictError, InputError, NotFoundError, RolloutError
from modelmill.events import emit
from modelmill.rollout.guardrails import FAIL, NO_DATA, Breach, Guardrails, Observation, Verdict, check
from modelmill.rollout.sources import GuardrailSource, RouteSink, Target
from modelmill.store.tables.experiments import experiments, rollout_events, rollouts

__all__ = ["CANDIDATE", "DEFAULT_PLAN", "STABLE", "RolloutController", "RolloutState", "Step", "parse_plan", "routes_for"]

DEFAULT_PLAN: tuple[str | int, ...] = ("shadow", 5, 10, 50, 100)
ON_TIMEOUT = ("rollback", "hold")
CANDIDATE, STABLE = "candidate", "stable"
ACTIVE = "running"


def parse_plan(spec: str | Sequence[str | int]) -> tuple[str | int, ...]:
    """``"shadow,5,10,50,100"`` → ``("shadow", 5, 10, 50, 100)``; percentages strictly increase and end at 100.

        >>> parse_plan("shadow,5,10,50,100")
        ('shadow', 5, 10, 50, 100)
    """
    parts = [p.strip() for p in spec.split(",")] if isinstance(spec, str) else list(spec)
    out: list[str | int] = []
    for i, p in enumerate(parts):
        if p == "shadow":
            if i != 0:
                raise InputError("plan", "'shadow' can only be the first stage", spec)
            out.append("shadow")
            continue
        try:
            pct = int(p)
        except (TypeError, ValueError):
            raise InputError("plan", "stages are 'shadow' or whole percentages, e.g. shadow,5,10,50,100",
                             spec) from None
        if not 0 < pct <= 100 or (out and isinstance(out[-1], int) and pct <= out[-1]):
            raise InputError("plan", "percentages must lie in 1..100 and strictly increase", spec)
        out.append(pct)
    if not out or out[-1] != 100:
        raise InputError("plan", "the last stage must be 100 (the candidate takes all traffic)", spec)
    return tuple(out)


def routes_for(stage: str | int, candidate: int, baseline: int | str) -> list[Target]:
    """The traffic split of one stage (see the module docstring)."""
    if stage == "shadow":
        return [(STABLE, baseline, 1.0, False), (CANDIDATE, candidate, 0.0, True)]
    pct = int(stage)
    if pct >= 100:
        return [(CANDIDATE, candidate, 1.0, False), (STABLE, baseline, 0.0, True)]
    return [(CANDIDATE, candidate, float(pct), False), (STABLE, baseline, float(100 - pct), False)]


@dataclasses.dataclass(frozen=True)
class RolloutState:
    """One rollout as stored."""

    id: int
    model: str
    candidate: int
    baseline: int | str
    plan: tuple[str | int, ...]
    stage: int
    status: str
    min_requests: int
    stage_seconds: float
    guardrails: Guardrails
    stage_started_at: float
    marks: dict[str, Any]
    created_at: float
    updated_at: float
    reason: str
    max_stage_seconds: float = math.inf
    on_timeout: str = "rollback"

    @property
    def current(self) -> str | int:
        return self.plan[self.stage]

    @property
    def active(self) -> bool:
        return self.status == ACTIVE

    @property
    def subject(self) -> str:
        return f"{self.model}@{self.candidate}"

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "model": self.model, "candidate": self.candidate, "baseline": self.baseline,
                "plan": list(self.plan), "stage": str(self.current), "stage_index": self.stage,
                "status": self.status, "min_requests": self.min_requests, "stage_seconds": self.stage_seconds,
                "max_stage_seconds": None if math.isinf(self.max_stage_seconds) else self.max_stage_seconds,
                "on_timeout": self.on_timeout,
                "guardrails": self.guardrails.as_dict(), "stage_started_at": self.stage_started_at,
                "created_at": self.created_at, "updated_at": self.updated_at, "reason": self.reason}

    @classmethod
    def from_row(cls, row: Any) -> RolloutState:
        s = row.settings
        base = row.baseline
        return cls(id=row.id, model=row.model, candidate=row.candidate,
                   baseline=int(base) if base.isdigit() else base,
                   plan=tuple(int(p) if p != "shadow" else p for p in row.plan), stage=row.stage,
                   status=row.status, min_requests=int(s["min_requests"]), stage_seconds=float(s["stage_seconds"]),
                   guardrails=Guardrails(**s["guardrails"]), stage_started_at=row.stage_started_at,
                   marks=dict(row.marks or {}), created_at=row.created_at, updated_at=row.updated_at,
                   reason=row.reason,
                   max_stage_seconds=math.inf if s.get("max_stage_seconds") is None else float(s["max_stage_seconds"]),
                   on_timeout=str(s.get("on_timeout", "rollback")))


@dataclasses.dataclass(frozen=True)
class Step:
    """What one evaluation did: ``hold``, ``advance``, ``complete``, ``rollback`` or ``idle`` (not running)."""

    action: str
    state: RolloutState
    reason: str
    breaches: tuple[Breach, ...] = ()
    observed: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    checks: tuple[Verdict, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"action": self.action, "reason": self.reason, "breaches": [b.as_dict() for b in self.breaches],
                "checks": [v.as_dict() for v in self.checks], "observed": self.observed,
                "rollout": self.state.as_dict()}


class RolloutController:
    """Starts, steps, promotes and rolls back rollouts of ``project``'s models.

    ``routes`` sets traffic (default: serving's route table), ``source`` observes
    it (default: serving's prediction log). ``clock`` is injectable for tests.
    ``on_complete(state)`` runs after the last stage passes (default: move the
    registry alias ``production`` to the candidate when the model is registered).
    """

    def __init__(self, project: Any, *, routes: RouteSink | None = None, source: GuardrailSource | None = None,
                 actor: str = "rollout-controller", clock: Callable[[], float] = time.time,
                 on_complete: Callable[[RolloutState], str] | None = None) -> None:
        self.project = project
        self.actor = actor
        self.clock = clock
        self._routes = routes
        self._source = source
        self._on_complete = on_complete

    def __repr__(self) -> str:
        return f"RolloutController({self.project!r})"

    @property
    def routes(self) -> RouteSink:
        if self._routes is None:
            from modelmill.rollout.sources import ServingRoutes

            self._routes = ServingRoutes(self.project, actor=self.actor)
        return self._routes

    @property
    def source(self) -> GuardrailSource:
        if self._source is None:
            from modelmill.rollout.sources import ServingGuardrails

            self._source = ServingGuardrails(self.project)
        return self._source

    # ---- reading -------------------------------------------------------------------------------

    def get(self, model: str) -> RolloutState:
        """The newest rollout of ``model`` (active or finished)."""
        with self.project.db.begin() as conn:
            row = conn.execute(sa.select(rollouts).where(rollouts.c.model == model)
                               .order_by(rollouts.c.id.desc()).limit(1)).first()
        if row is None:
            raise NotFoundError("rollout", model, "start one with `modelmill rollout start NAME@VERSION`")
        return RolloutState.from_row(row)

    def active(self) -> list[RolloutState]:
        with self.project.db.begin() as conn:
            rows = conn.execute(sa.select(rollouts).where(rollouts.c.status == ACTIVE)
                                .order_by(rollouts.c.id)).all()
        return [RolloutState.from_row(r) for r in rows]

    def events(self, rollout_id: int) -> list[dict[str, Any]]:
        with self.project.db.begin() as conn:
            rows = conn.execute(sa.select(rollout_events).where(rollout_events.c.rollout_id == rollout_id)
                                .order_by(rollout_events.c.id)).all()
        return [{"at": r.at, "action": r.action, "from": r.from_stage, "to": r.to_stage, "actor": r.actor,
                 "detail": r.detail} for r in rows]

    # ---- transitions ---------------------------------------------------------------------------

    def start(self, model: str, candidate: int, *, baseline: int | str = "production",
              plan: str | Sequence[str | int] = DEFAULT_PLAN, min_requests: int = 100,
              stage_seconds: float = 60.0, guardrails: Guardrails | None = None,
              max_stage_seconds: float | None = None, on_timeout: str = "rollback") -> RolloutState:
        """Begin a rollout at its first stage; one active rollout per model.

        ``max_stage_seconds`` (default: ten times ``stage_seconds``, at least ten minutes) bounds how
        long a stage may hold for lack of data before ``on_timeout`` acts.
        """
        stages = parse_plan(plan)
        if isinstance(candidate, bool) or not isinstance(candidate, int) or candidate < 1:
            raise InputError("candidate", "must be a version number of at least 1", candidate)
        if str(baseline) == str(candidate):
            raise InputError("baseline", "must differ from the candidate", baseline)
        if min_requests < 0 or stage_seconds < 0:
            raise InputError("min_requests", "min_requests and stage_seconds must be 0 or more")
        g = guardrails or Guardrails()
        if min_requests < g.min_samples:
            raise InputError("min_requests", f"is below the guardrails' minimum sample ({g.min_samples}): a stage "
                             f"would pass before any guardrail could judge it; give at least {g.min_samples}, "
                             "or lower the guardrails' min_samples", min_requests)
        if on_timeout not in ON_TIMEOUT:
            raise InputError("on_timeout", "must be 'rollback' or 'hold'", on_timeout)
        limit = max(10 * stage_seconds, 600.0) if max_stage_seconds is None else float(max_stage_seconds)
        if not limit > 0 or limit < stage_seconds:
            raise InputError("max_stage_seconds", f"must be above 0 and at least stage_seconds ({stage_seconds:g})",
                             max_stage_seconds)
        checker = getattr(self.routes, "check", None)
        if checker is not None:  # a version the servers could not load is refused now, not ignored later
            checker(model, [candidate, baseline])
        now = self.clock()
        mark = self.source.mark(model)
        db = self.project.db
        with db.begin() as conn:
            busy = conn.execute(sa.select(rollouts.c.id, rollouts.c.candidate).where(
                rollouts.c.model == model, rollouts.c.status == ACTIVE)).first()
            if busy is not None:
                raise ConflictError(f"model {model!r} already has an active rollout of version {busy.candidate}; "
                                    "wait for it, promote it or roll it back", model=model, rollout=busy.id)
            testing = conn.execute(sa.select(experiments.c.name).where(
                experiments.c.model == model, experiments.c.status == "running")).scalar()
            if testing is not None:  # its split owns the model's route: a rollout would overwrite it
                raise ConflictError(f"experiment {testing!r} is running on model {model!r} and owns its traffic "
                                    f"route; stop it first (`modelmill experiment stop {testing}`)",
                                    model=model, experiment=testing)
            rid = conn.execute(rollouts.insert().values(
                model=model, candidate=candidate, baseline=str(baseline), plan=list(stages), stage=0,
                status=ACTIVE, settings={"min_requests": min_requests, "stage_seconds": stage_seconds,
                                         "max_stage_seconds": limit, "on_timeout": on_timeout,
                                         "guardrails": g.as_dict()},
                stage_started_at=now, marks=mark, created_at=now, updated_at=now, reason="started",
            ).returning(rollouts.c.id)).scalar_one()
            detail = {"plan": list(stages), "baseline": str(baseline), "min_requests": min_requests,
                      "stage_seconds": stage_seconds, "max_stage_seconds": limit, "on_timeout": on_timeout}
            self._event(conn, rid, "start", None, stages[0], detail, subject=f"{model}@{candidate}")
        state = self._load(rid)
        self.apply(state)
        return state

    def apply(self, state: RolloutState) -> None:
        """Set the routes the stored state calls for (idempotent; a resumed controller calls it first)."""
        if state.status == ACTIVE:
            self.routes.set_weights(state.model, routes_for(state.current, state.candidate, state.baseline),
                                    reason=f"rollout {state.subject}: stage {state.current}")
        elif state.status == "completed":
            self.routes.set_weights(state.model, [(STABLE, state.candidate, 1.0, False)],
                                    reason=f"rollout {state.subject}: completed")
        else:
            self.routes.set_weights(state.model, [(STABLE, state.baseline, 1.0, False)],
                                    reason=f"rollout {state.subject}: {state.status}")

    def step(self, model: str) -> Step:
        """Evaluate the current stage once and act on it."""
        state = self.get(model)
        if not state.active:
            return Step("idle", state, f"rollout is {state.status}")
        now = self.clock()
        shadows = [CANDIDATE] if state.current == "shadow" else [STABLE] if state.current == 100 else []
        seen = self.source.window(model, since=state.stage_started_at, mark=state.marks, shadows=shadows)
        cand = seen.get(CANDIDATE, Observation(requests=0))
        base = seen.get(STABLE, Observation(requests=0))
        observed = {CANDIDATE: cand.summary(), STABLE: base.summary()}
        g = state.guardrails
        if shadows:
            # A shadow runs on its own low-priority executor after the answer is sent, and its logged latency is
            # the model call alone: it is not comparable with what users of the live variant see. So while one
            # side is a shadow (the candidate in the shadow stage, production at 100%), only errors, the
            # prediction shift and labels are compared; latency was judged at the stages in between.
            g = dataclasses.replace(g, max_latency_ratio=None)
        verdicts = tuple(check(cand, base, g))
        breaches = tuple(v.breach for v in verdicts if v.status == FAIL and v.breach is not None)
        if breaches:
            reason = "guardrail breached: " + "; ".join(b.message for b in breaches)
            after = self._finish(state, "rolled_back", "rollback", reason,
                                 {"breaches": [b.as_dict() for b in breaches], "observed": observed})
            return Step("rollback", after, reason, breaches, observed, verdicts)
        elapsed = now - state.stage_started_at
        lacking = [v for v in verdicts if v.status == NO_DATA]
        if lacking:
            why = "; ".join(v.message for v in lacking)
            if elapsed >= state.max_stage_seconds and state.on_timeout == "rollback":
                reason = (f"stage {state.current} ran {elapsed:.0f} s, past its limit of "
                          f"{state.max_stage_seconds:g} s, without the data its guardrails need: {why}")
                after = self._finish(state, "rolled_back", "rollback", reason,
                                     {"no_data": [v.as_dict() for v in lacking], "observed": observed})
                return Step("rollback", after, reason, (), observed, verdicts)
            reason = (f"holding at {state.current}: {elapsed:.0f}/{state.stage_seconds:g} s, "
                      f"{cand.requests}/{state.min_requests} candidate requests, no data yet: {why}")
            return Step("hold", state, reason, (), observed, verdicts)
        if elapsed < state.stage_seconds or cand.requests < state.min_requests:
            reason = (f"holding at {state.current}: {elapsed:.0f}/{state.stage_seconds:g} s, "
                      f"{cand.requests}/{state.min_requests} candidate requests, guardrails pass")
            return Step("hold", state, reason, (), observed, verdicts)
        step = self._advance(state, f"stage {state.current} passed: {cand.requests} candidate requests in "
                                    f"{elapsed:.0f} s, guardrails pass", {"observed": observed}, observed)
        return dataclasses.replace(step, checks=verdicts)

    def promote(self, model: str, *, actor: str = "cli", reason: str = "promoted by hand") -> Step:
        """Move to the next stage now, skipping the checks (an operator's decision, audited as such)."""
        state = self.get(model)
        if not state.active:
            raise RolloutError(f"rollout of {state.subject} is {state.status}; nothing to promote",
                               model=model, status=state.status)
        return self._advance(state, reason, {"manual": True}, {}, actor=actor)

    def rollback(self, model: str, *, actor: str = "cli", reason: str = "rolled back by hand") -> Step:
        """Send all traffic back to the baseline and end the rollout."""
        state = self.get(model)
        if not state.active:
            raise RolloutError(f"rollout of {state.subject} is {state.status}; nothing to roll back",
                               model=model, status=state.status)
        after = self._finish(state, "rolled_back", "rollback", reason, {"manual": True}, actor=actor)
        return Step("rollback", after, reason)

    def run(self, model: str, *, interval_s: float = 5.0, max_seconds: float | None = None,
            on_step: Callable[[Step], None] | None = None, sleep: Callable[[float], None] = time.sleep) -> Step:
        """Resume ``model``'s rollout and step it every ``interval_s`` until it finishes (or ``max_seconds``)."""
        if interval_s <= 0:
            raise InputError("interval_s", "must be above 0", interval_s)
        state = self.get(model)
        self.apply(state)  # whatever happened before a crash, traffic matches the stored stage
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        while True:
            result = self.step(model)
            if on_step is not None:
                on_step(result)
            if not result.state.active or (deadline is not None and time.monotonic() >= deadline):
                return result
            if result.action == "hold":
                sleep(interval_s)

    # ---- internals -----------------------------------------------------------------------------

    def _load(self, rid: int) -> RolloutState:
        with self.project.db.begin() as conn:
            row = conn.execute(sa.select(rollouts).where(rollouts.c.id == rid)).one()
        return RolloutState.from_row(row)

    def _event(self, conn: Any, rid: int, action: str, before: str | int | None, after: str | int | None,
               detail: dict[str, Any], *, subject: str, actor: str | None = None) -> None:
        who = actor or self.actor
        conn.execute(rollout_events.insert().values(
            rollout_id=rid, at=self.clock(), action=action, actor=who, detail=detail,
            from_stage=None if before is None else str(before), to_stage=None if after is None else str(after)))
        self.project.db.audit(conn, actor=who, action=f"rollout.{action}", subject=subject,
                              detail={"rollout": rid, "from": before, "to": after, **detail})
        emit(self.project, f"rollout.{action}", {"rollout": rid, "model": subject.split("@")[0], "from": before,
                                                 "to": after, **detail}, subject=subject, actor=who, conn=conn)

    def _transition(self, state: RolloutState, values: dict[str, Any], action: str, to: str | int | None,
                    detail: dict[str, Any], *, actor: str | None = None) -> RolloutState:
        db = self.project.db
        with db.begin() as conn:
            n = conn.execute(rollouts.update().where(
                rollouts.c.id == state.id, rollouts.c.stage == state.stage, rollouts.c.status == ACTIVE,
            ).values(updated_at=self.clock(), **values)).rowcount
            if n != 1:
                raise ConflictError(f"rollout of {state.subject} changed under this controller; "
                                    "another controller or operator acted first", rollout=state.id)
            self._event(conn, state.id, action, state.current, to, detail, subject=state.subject, actor=actor)
        after = self._load(state.id)
        self.apply(after)
        return after

    def _advance(self, state: RolloutState, reason: str, detail: dict[str, Any],
                 observed: dict[str, dict[str, Any]], *, actor: str | None = None) -> Step:
        if state.stage + 1 >= len(state.plan):
            after = self._finish(state, "completed", "complete", reason, detail, actor=actor)
            return Step("complete", after, after.reason, (), observed)
        nxt = state.plan[state.stage + 1]
        mark = self.source.mark(state.model)
        after = self._transition(state, {"stage": state.stage + 1, "stage_started_at": self.clock(), "marks": mark,
                                         "reason": reason}, "advance", nxt, {"reason": reason, **detail},
                                 actor=actor)
        return Step("advance", after, reason, (), observed)

    def _finish(self, state: RolloutState, status: str, action: str, reason: str, detail: dict[str, Any],
                *, actor: str | None = None) -> RolloutState:
        to = "baseline" if status == "rolled_back" else "done"
        after = self._transition(state, {"status": status, "reason": reason}, action, to,
                                 {"reason": reason, **detail}, actor=actor)
        if status == "completed":
            note = (self._on_complete or self._move_production_alias)(after)
            if note:
                with self.project.db.begin() as conn:
                    self._event(conn, after.id, "alias", None, None, {"note": note}, subject=after.subject,
                                actor=actor)
        return after

    def _move_production_alias(self, state: RolloutState) -> str:
        try:
            from modelmill.registry import Registry

            Registry(self.project).set_alias(state.model, "production", state.candidate, actor=self.actor,
                                             reason=f"rollout {state.id} completed")
        except NotFoundError as exc:
            return f"registry alias not moved: {exc.message}"
        return f"{state.model}@production now points at version {state.candidate}"
