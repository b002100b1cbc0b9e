"""What a rollout's user sees of each controller decision: the stored state, the events and audit lines, the
routes, and the reasons and errors in their words.

Written against the survivors of mutation testing (docs/mutation.md): each test states a promise of the
controller, on a real SQLite metadata database, with a recording route sink and a scripted guardrail source.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from tests.serving.conftest import signature, train_lr

from modelmill.config import Settings
from modelmill.errors import ConflictError, InputError, NotFoundError, RolloutError
from modelmill.project import Project
from modelmill.registry import Registry
from modelmill.rollout import Guardrails, Observation, RolloutController, Target, parse_plan
from modelmill.rollout.controller import RolloutState, Step, routes_for
from modelmill.serving import RouteTable
from modelmill.store.tables import audit_log
from modelmill.store.tables.events import webhook_deliveries
from modelmill.store.tables.experiments import rollouts

T0 = 1_000_000.0
ALL_SHORT = ("error_rate: 0 of the 50 candidate requests it needs; latency_p95: 0 of the 50 latencies per variant "
             "it needs; output_shift: 0 of the 50 outputs per variant it needs; label_loss: 0 of the 50 labelled "
             "requests per variant it needs")


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class Routes:
    """Records every route change with its reason, and every ``check`` before a start."""

    def __init__(self) -> None:
        self.log: list[tuple[str, list[Target], str]] = []
        self.checked: list[tuple[str, list[int | str]]] = []

    def check(self, model: str, targets: Sequence[int | str]) -> None:
        self.checked.append((model, list(targets)))

    def set_weights(self, model: str, variants: Sequence[Target], *, reason: str) -> None:
        self.log.append((model, list(variants), reason))

    def last(self, model: str = "m") -> list[Target]:
        return [v for m, v, _ in self.log if m == model][-1]


def traffic(n: int, *, errors: int = 0, slow: float = 1.0, labeled: bool = True) -> Observation:
    rng = np.random.default_rng(7)
    return Observation(requests=n, errors=errors, latencies_ms=rng.uniform(1, 3, n) * slow,
                       outputs=rng.uniform(size=n),
                       label_losses=(rng.uniform(size=n) < 0.2).astype(float) if labeled else np.zeros(0))


class Source:
    """Answers ``seen`` for every window (both variants alike by default) and records what it was asked."""

    def __init__(self) -> None:
        self.seen: dict[str, Observation] = {}
        self.marks = 0
        self.asked: list[tuple[str, float, dict[str, Any], list[str]]] = []
        self.during: Callable[[], None] | None = None

    def both(self, n: int, **candidate: Any) -> None:
        self.seen = {"candidate": traffic(n, **candidate), "stable": traffic(n)}

    def mark(self, model: str) -> dict[str, Any]:
        self.marks += 1
        return {"model": model, "mark": self.marks}

    def window(self, model: str, *, since: float, mark: Mapping[str, Any],
               shadows: Sequence[str] = ()) -> dict[str, Observation]:
        self.asked.append((model, since, dict(mark), list(shadows)))
        if self.during is not None:
            self.during()
        return dict(self.seen)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def routes() -> Routes:
    return Routes()


@pytest.fixture
def source() -> Source:
    return Source()


@pytest.fixture
def ctl(project: Project, clock: Clock, routes: Routes, source: Source) -> RolloutController:
    return RolloutController(project, routes=routes, source=source, clock=clock, actor="bot")


def audit_rows(project: Project, subject: str) -> list[Any]:
    with project.db.begin() as conn:
        return list(conn.execute(sa.select(audit_log).where(audit_log.c.subject == subject)
                                 .order_by(audit_log.c.id)))


def _register(project: Project, model: str = "m") -> None:
    registry = Registry(project)
    for seed in range(2):
        registry.register(model, train_lr(seed), flavor="sklearn", signature=signature())
    registry.set_alias(model, "production", 1)


# ---- plans and routes ----------------------------------------------------------------------------------


def test_a_plan_is_read_from_text_or_a_sequence() -> None:
    assert parse_plan(" shadow , 5 ,100 ") == ("shadow", 5, 100)
    assert parse_plan(["shadow", "5", 100]) == ("shadow", 5, 100)
    assert parse_plan("1,99,100") == (1, 99, 100)
    assert parse_plan("100") == (100,)


@pytest.mark.parametrize(("spec", "problem"), [
    ("5,shadow,100", "'shadow' can only be the first stage"),
    ("shadow,shadow,100", "'shadow' can only be the first stage"),
    ("x,100", "stages are 'shadow' or whole percentages, e.g. shadow,5,10,50,100"),
    ((None, 100), "stages are 'shadow' or whole percentages, e.g. shadow,5,10,50,100"),
    ("0,100", "percentages must lie in 1..100 and strictly increase"),
    ("5,101", "percentages must lie in 1..100 and strictly increase"),
    ("50,50,100", "percentages must lie in 1..100 and strictly increase"),
    ("50,10,100", "percentages must lie in 1..100 and strictly increase"),
    ("5,50", "the last stage must be 100 (the candidate takes all traffic)"),
    ("shadow", "the last stage must be 100 (the candidate takes all traffic)"),
    ((), "the last stage must be 100 (the candidate takes all traffic)"),
])
def test_a_bad_plan_is_refused_naming_the_plan(spec: Any, problem: str) -> None:
    with pytest.raises(InputError) as err:
        parse_plan(spec)
    assert (err.value.field, err.value.problem, err.value.value) == ("plan", problem, spec)


def test_the_routes_of_each_stage() -> None:
    assert routes_for("shadow", 2, "production") == [("stable", "production", 1.0, False),
                                                     ("candidate", 2, 0.0, True)]
    assert routes_for(5, 2, 1) == [("candidate", 2, 5.0, False), ("stable", 1, 95.0, False)]
    assert routes_for("99", 2, 1) == [("candidate", 2, 99.0, False), ("stable", 1, 1.0, False)]
    assert routes_for(100, 2, 1) == [("candidate", 2, 1.0, False), ("stable", 1, 0.0, True)]


# ---- starting ------------------------------------------------------------------------------------------


def test_a_started_rollout_as_stored_evented_audited_and_routed(project: Project, ctl: RolloutController,
                                                                 clock: Clock, routes: Routes,
                                                                 source: Source) -> None:
    state = ctl.start("m", 2, baseline=1, plan="shadow,5,100", min_requests=60, stage_seconds=30)
    assert state.as_dict() == {
        "id": state.id, "model": "m", "candidate": 2, "baseline": 1, "plan": ["shadow", 5, 100], "stage": "shadow",
        "stage_index": 0, "status": "running", "min_requests": 60, "stage_seconds": 30.0, "max_stage_seconds": 600.0,
        "on_timeout": "rollback", "guardrails": Guardrails().as_dict(), "stage_started_at": T0, "created_at": T0,
        "updated_at": T0, "reason": "started"}
    assert state.marks == {"model": "m", "mark": 1}
    assert (state.current, state.active, state.subject) == ("shadow", True, "m@2")
    assert ctl.get("m") == state
    assert routes.checked == [("m", [2, 1])]  # both versions checked before anything is written
    assert routes.log == [("m", [("stable", 1, 1.0, False), ("candidate", 2, 0.0, True)],
                           "rollout m@2: stage shadow")]
    detail = {"plan": ["shadow", 5, 100], "baseline": "1", "min_requests": 60, "stage_seconds": 30,
              "max_stage_seconds": 600.0, "on_timeout": "rollback"}
    assert ctl.events(state.id) == [{"at": T0, "action": "start", "from": None, "to": "shadow", "actor": "bot",
                                     "detail": detail}]
    [line] = audit_rows(project, "m@2")
    assert (line.actor, line.action, line.detail) == ("bot", "rollout.start",
                                                      {"rollout": state.id, "from": None, "to": "shadow", **detail})
    assert source.asked == []  # starting observes nothing


def test_a_named_baseline_and_the_default_stage_limit(ctl: RolloutController) -> None:
    state = ctl.start("m", 1, stage_seconds=61, on_timeout="hold")
    assert (state.baseline, state.plan, state.min_requests) == ("production", ("shadow", 5, 10, 50, 100), 100)
    assert (state.max_stage_seconds, state.on_timeout) == (610.0, "hold")  # ten times the stage ...
    assert ctl.get("m").baseline == "production"
    other = ctl.start("n", 2, baseline=1, stage_seconds=0, max_stage_seconds=None)
    assert (other.stage_seconds, other.max_stage_seconds) == (0.0, 600.0)  # ... and at least ten minutes
    third = ctl.start("o", 2, baseline=1, stage_seconds=30, max_stage_seconds=30, min_requests=50)
    assert (third.max_stage_seconds, third.min_requests) == (30.0, 50)  # the bounds themselves are accepted
    quick = ctl.start("p", 2, baseline=1, stage_seconds=0, max_stage_seconds=0.5)
    assert quick.max_stage_seconds == 0.5  # any limit above 0 will do for a stage with no minimum time
    with pytest.raises(InputError) as err:
        ctl.start("q", 2, baseline=1, stage_seconds=0, max_stage_seconds=0)
    assert err.value.problem == "must be above 0 and at least stage_seconds (0)"


def test_a_row_from_before_stage_limits_reads_as_unlimited(project: Project, ctl: RolloutController) -> None:
    state = ctl.start("m", 2, baseline=1, plan="5,100", stage_seconds=30)
    settings = {k: v for k, v in ctl.get("m").as_dict().items() if k in ("min_requests", "stage_seconds")}
    settings["guardrails"] = Guardrails().as_dict()
    with project.db.begin() as conn:
        conn.execute(rollouts.update().where(rollouts.c.id == state.id).values(settings=settings))
    old = ctl.get("m")
    assert (old.max_stage_seconds, old.on_timeout, old.as_dict()["max_stage_seconds"]) == (float("inf"), "rollback",
                                                                                           None)
    with project.db.begin() as conn:
        conn.execute(rollouts.update().where(rollouts.c.id == state.id).values(
            settings={**settings, "max_stage_seconds": None, "on_timeout": "hold"}))
    assert (ctl.get("m").max_stage_seconds, ctl.get("m").on_timeout) == (float("inf"), "hold")


@pytest.mark.parametrize(("change", "field", "problem", "value"), [
    ({"candidate": True}, "candidate", "must be a version number of at least 1", True),
    ({"candidate": 0}, "candidate", "must be a version number of at least 1", 0),
    ({"candidate": "2"}, "candidate", "must be a version number of at least 1", "2"),
    ({"baseline": "2"}, "baseline", "must differ from the candidate", "2"),
    ({"min_requests": -1}, "min_requests", "min_requests and stage_seconds must be 0 or more", None),
    ({"stage_seconds": -1}, "min_requests", "min_requests and stage_seconds must be 0 or more", None),
    ({"min_requests": 0}, "min_requests", "is below the guardrails' minimum sample (50): a stage would pass before "
     "any guardrail could judge it; give at least 50, or lower the guardrails' min_samples", 0),
    ({"min_requests": 49}, "min_requests", "is below the guardrails' minimum sample (50): a stage would pass before "
     "any guardrail could judge it; give at least 50, or lower the guardrails' min_samples", 49),
    ({"on_timeout": "pass"}, "on_timeout", "must be 'rollback' or 'hold'", "pass"),
    ({"max_stage_seconds": 0}, "max_stage_seconds", "must be above 0 and at least stage_seconds (30)", 0),
    ({"max_stage_seconds": -5}, "max_stage_seconds", "must be above 0 and at least stage_seconds (30)", -5),
    ({"max_stage_seconds": 29.5}, "max_stage_seconds", "must be above 0 and at least stage_seconds (30)", 29.5),
])
def test_a_start_that_cannot_be_guarded_is_refused_before_anything_happens(
        ctl: RolloutController, routes: Routes, change: dict[str, Any], field: str, problem: str,
        value: Any) -> None:
    args: dict[str, Any] = {"candidate": 2, "baseline": 1, "plan": "5,100", "stage_seconds": 30.0, **change}
    with pytest.raises(InputError) as err:
        ctl.start("m", **args)
    assert (err.value.field, err.value.problem, err.value.value) == (field, problem, value)
    assert ctl.active() == [] and routes.log == [] and routes.checked == []


def test_one_active_rollout_per_model(ctl: RolloutController) -> None:
    first = ctl.start("m", 2, baseline=1, plan="5,100")
    with pytest.raises(ConflictError) as err:
        ctl.start("m", 3, baseline=1, plan="5,100")
    assert err.value.message == ("model 'm' already has an active rollout of version 2; wait for it, promote it "
                                 "or roll it back")
    assert err.value.context == {"model": "m", "rollout": first.id}
    other = ctl.start("n", 3, baseline=1, plan="5,100")  # another model is free
    assert [s.id for s in ctl.active()] == [first.id, other.id]
    ctl.rollback("m")
    assert [s.model for s in ctl.active()] == ["n"]
    again = ctl.start("m", 3, baseline=1, plan="5,100")  # a finished rollout does not block the next
    assert ctl.get("m") == again and again.id > first.id and ctl.get("n") == other
    assert [e["action"] for e in ctl.events(first.id)] == ["start", "rollback"]
    assert [e["action"] for e in ctl.events(again.id)] == ["start"]
    with pytest.raises(NotFoundError) as missing:
        ctl.get("x")
    assert missing.value.message == "rollout 'x' not found; start one with `modelmill rollout start NAME@VERSION`"


def test_the_defaults_record_the_controller_and_the_time(project: Project) -> None:
    _register(project)
    ctl = RolloutController(project)
    assert repr(ctl) == f"RolloutController({project!r})"
    before = time.time()
    state = ctl.start("m", 2, plan="5,100")
    assert before <= state.created_at <= time.time()
    assert state.marks == {"counters": {}}  # serving's own guardrail source marks its counters
    [event] = ctl.events(state.id)
    assert event["actor"] == "rollout-controller"
    [route_set] = [r for r in audit_rows(project, "m") if r.action == "serving.route.set"]
    assert (route_set.actor, route_set.detail["reason"]) == ("rollout-controller", "rollout m@2: stage 5")
    assert {v.name: v.weight for v in RouteTable(project).get("m").live} == {"candidate": 5.0, "stable": 95.0}
    step = ctl.step("m")  # nothing served yet: the empty prediction log holds the stage
    assert step.action == "hold" and step.reason.startswith("holding at 5: ")
    assert "/60 s, 0/100 candidate requests, no data yet: error_rate: 0 of the 50" in step.reason


# ---- stepping ------------------------------------------------------------------------------------------


def test_a_stage_without_data_holds_and_says_what_it_lacks(ctl: RolloutController, clock: Clock,
                                                           source: Source) -> None:
    state = ctl.start("m", 2, baseline=1, plan="5,100", min_requests=50, stage_seconds=30, max_stage_seconds=100)
    clock.now += 12.4
    step = ctl.step("m")
    assert (step.action, step.state, step.breaches) == ("hold", state, ())
    assert step.reason == f"holding at 5: 12/30 s, 0/50 candidate requests, no data yet: {ALL_SHORT}"
    assert step.observed == {"candidate": Observation(requests=0).summary(), "stable": Observation(requests=0).summary()}
    assert [(v.check, v.status) for v in step.checks] == [
        ("error_rate", "no_data"), ("latency_p95", "no_data"), ("output_shift", "no_data"), ("label_loss", "no_data")]
    assert source.asked == [("m", T0, {"model": "m", "mark": 1}, [])]
    assert step.as_dict() == {"action": "hold", "reason": step.reason, "breaches": [],
                              "checks": [v.as_dict() for v in step.checks], "observed": step.observed,
                              "rollout": state.as_dict()}
    assert [e["action"] for e in ctl.events(state.id)] == ["start"]  # a hold writes nothing


def test_a_stage_past_its_limit_without_data_rolls_back_at_the_limit(ctl: RolloutController, clock: Clock,
                                                                      routes: Routes) -> None:
    state = ctl.start("m", 2, baseline=1, plan="5,100", min_requests=50, stage_seconds=30, max_stage_seconds=100)
    clock.now += 99.6
    assert ctl.step("m").action == "hold"
    clock.now = T0 + 100
    step = ctl.step("m")
    reason = f"stage 5 ran 100 s, past its limit of 100 s, without the data its guardrails need: {ALL_SHORT}"
    assert (step.action, step.reason, step.breaches, step.state.status) == ("rollback", reason, (), "rolled_back")
    assert step.state.reason == reason and len(step.checks) == 4
    [_, back] = ctl.events(state.id)
    assert (back["action"], back["from"], back["to"], back["actor"], back["at"]) == ("rollback", "5", "baseline",
                                                                                     "bot", T0 + 100)
    assert back["detail"] == {"reason": reason, "no_data": [v.as_dict() for v in step.checks],
                              "observed": step.observed}
    assert routes.log[-1] == ("m", [("stable", 1, 1.0, False)], "rollout m@2: rolled_back")
    assert ctl.step("m") == Step("idle", step.state, "rollout is rolled_back")


def test_a_stage_advances_exactly_when_its_time_and_requests_are_met(ctl: RolloutController, clock: Clock,
                                                                     routes: Routes, source: Source) -> None:
    state = ctl.start("m", 2, baseline=1, plan="5,100", min_requests=80, stage_seconds=30)
    source.both(79)
    clock.now = T0 + 30
    step = ctl.step("m")
    assert (step.action, step.reason) == ("hold", "holding at 5: 30/30 s, 79/80 candidate requests, guardrails pass")
    assert (step.breaches, step.observed) == ((), {"candidate": traffic(79).summary(), "stable": traffic(79).summary()})
    assert {v.status for v in step.checks} == {"pass"}
    source.both(80)
    clock.now = T0 + 29.9
    assert ctl.step("m").reason == "holding at 5: 30/30 s, 80/80 candidate requests, guardrails pass"
    clock.now = T0 + 30
    step = ctl.step("m")
    reason = "stage 5 passed: 80 candidate requests in 30 s, guardrails pass"
    assert (step.action, step.reason, step.breaches) == ("advance", reason, ())
    assert [v.check for v in step.checks] == ["error_rate", "latency_p95", "output_shift", "label_loss"]
    assert step.observed == {"candidate": traffic(80).summary(), "stable": traffic(80).summary()}
    after = step.state
    assert (after.current, after.stage, after.status, after.reason) == (100, 1, "running", reason)
    assert (after.stage_started_at, after.updated_at, after.marks) == (T0 + 30, T0 + 30, {"model": "m", "mark": 2})
    assert (after.created_at, after.id) == (state.created_at, state.id)
    advance = ctl.events(state.id)[-1]
    assert (advance["action"], advance["from"], advance["to"], advance["actor"]) == ("advance", "5", "100", "bot")
    assert advance["detail"] == {"reason": reason, "observed": step.observed}
    assert routes.log[-1] == ("m", [("candidate", 2, 1.0, False), ("stable", 1, 0.0, True)],
                              "rollout m@2: stage 100")
    # the new stage is watched from its own start and mark, with production as the shadow
    ctl.step("m")
    assert source.asked[-1] == ("m", T0 + 30, {"model": "m", "mark": 2}, ["stable"])


def test_the_last_stage_completes_and_reports_the_alias_note(project: Project, clock: Clock, routes: Routes,
                                                             source: Source) -> None:
    seen: list[RolloutState] = []

    def note(state: RolloutState) -> str:
        seen.append(state)
        return "alias moved by the test"

    ctl = RolloutController(project, routes=routes, source=source, clock=clock, actor="bot", on_complete=note)
    state = ctl.start("m", 2, baseline=1, plan="100", min_requests=50, stage_seconds=10)
    source.both(60)
    clock.now += 10
    step = ctl.step("m")
    reason = "stage 100 passed: 60 candidate requests in 10 s, guardrails pass"
    assert (step.action, step.reason, step.state.status, step.state.reason) == ("complete", reason, "completed",
                                                                                 reason)
    assert step.observed["candidate"]["requests"] == 60 and len(step.checks) == 3  # no latency beside a shadow
    assert step.breaches == () and step.as_dict()["breaches"] == []
    assert [s.status for s in seen] == ["completed"]
    events = ctl.events(state.id)
    assert [(e["action"], e["from"], e["to"], e["actor"]) for e in events] == [
        ("start", None, "100", "bot"), ("complete", "100", "done", "bot"), ("alias", None, None, "bot")]
    assert events[1]["detail"] == {"reason": reason, "observed": step.observed}
    assert events[2]["detail"] == {"note": "alias moved by the test"}
    assert [(r.action, r.actor) for r in audit_rows(project, "m@2")][-1] == ("rollout.alias", "bot")
    assert routes.log[-1] == ("m", [("stable", 2, 1.0, False)], "rollout m@2: completed")


def test_a_completion_without_a_note_writes_no_alias_event(project: Project, clock: Clock, routes: Routes,
                                                           source: Source) -> None:
    ctl = RolloutController(project, routes=routes, source=source, clock=clock, on_complete=lambda s: "")
    state = ctl.start("m", 2, baseline=1, plan="100")
    ctl.promote("m")
    assert [e["action"] for e in ctl.events(state.id)] == ["start", "complete"]


def test_completion_moves_the_production_alias(project: Project, clock: Clock, source: Source) -> None:
    _register(project)
    ctl = RolloutController(project, source=source, clock=clock, actor="bot")
    state = ctl.start("m", 2, plan="100")
    step = ctl.promote("m", actor="alice", reason="ship it")
    assert (step.action, step.reason, step.observed) == ("complete", "ship it", {})
    assert Registry(project).aliases("m")["production"] == 2
    [move] = Registry(project).alias_history("m", "production")[-1:]
    assert (move.actor, move.version, move.previous, move.reason) == ("bot", 2, 1, f"rollout {state.id} completed")
    alias = ctl.events(state.id)[-1]
    assert (alias["action"], alias["actor"]) == ("alias", "alice")
    assert alias["detail"] == {"note": "m@production now points at version 2"}


def test_completion_of_an_unregistered_model_says_the_alias_did_not_move(ctl: RolloutController) -> None:
    state = ctl.start("m", 2, baseline=1, plan="100")
    ctl.promote("m")
    assert ctl.events(state.id)[-1]["detail"]["note"].startswith("registry alias not moved: model 'm' not found")


def test_a_breach_rolls_back_with_every_breach_in_the_reason(project: Project, ctl: RolloutController,
                                                              clock: Clock, routes: Routes, source: Source) -> None:
    state = ctl.start("m", 2, baseline="production", plan="5,100", min_requests=50, stage_seconds=30)
    source.both(400, errors=40, slow=10.0)
    clock.now += 1
    step = ctl.step("m")
    assert [b.check for b in step.breaches] == ["error_rate", "latency_p95"]
    reason = "guardrail breached: " + "; ".join(b.message for b in step.breaches)
    assert (step.action, step.reason, step.state.status, step.state.reason) == ("rollback", reason, "rolled_back",
                                                                                 reason)
    assert [v.status for v in step.checks] == ["fail", "fail", "pass", "pass"]
    assert step.observed["candidate"]["errors"] == 40
    back = ctl.events(state.id)[-1]
    assert (back["action"], back["from"], back["to"]) == ("rollback", "5", "baseline")
    assert back["detail"] == {"reason": reason, "breaches": [b.as_dict() for b in step.breaches],
                              "observed": step.observed}
    assert audit_rows(project, "m@2")[-1].detail == {"rollout": state.id, "from": 5, "to": "baseline",
                                                     **back["detail"]}
    assert routes.log[-1] == ("m", [("stable", "production", 1.0, False)], "rollout m@2: rolled_back")


def test_latency_is_not_judged_against_a_shadow(ctl: RolloutController, clock: Clock, source: Source) -> None:
    ctl.start("m", 2, baseline=1, plan="shadow,5,100", min_requests=50, stage_seconds=10)
    source.both(200, slow=10.0)
    clock.now += 10
    step = ctl.step("m")
    assert step.action == "advance" and [v.check for v in step.checks] == ["error_rate", "output_shift",
                                                                           "label_loss"]
    assert source.asked[-1][3] == ["candidate"]
    assert ctl.get("m").guardrails.max_latency_ratio == 1.5  # the stored guardrails keep their latency check
    assert [b.check for b in ctl.step("m").breaches] == ["latency_p95"]  # and judge it at 5%


# ---- operators -----------------------------------------------------------------------------------------


def test_promote_and_rollback_by_hand_are_audited_as_such(project: Project, ctl: RolloutController,
                                                           routes: Routes) -> None:
    state = ctl.start("m", 2, baseline=1, plan="shadow,5,100")
    step = ctl.promote("m")
    assert (step.action, step.reason, step.observed, step.checks) == ("advance", "promoted by hand", {}, ())
    assert step.state.current == 5
    event = ctl.events(state.id)[-1]
    assert (event["actor"], event["from"], event["to"]) == ("cli", "shadow", "5")
    assert event["detail"] == {"reason": "promoted by hand", "manual": True}
    step = ctl.rollback("m")
    assert (step.action, step.reason, step.state.reason, step.breaches) == ("rollback", "rolled back by hand",
                                                                             "rolled back by hand", ())
    event = ctl.events(state.id)[-1]
    assert (event["actor"], event["from"], event["to"]) == ("cli", "5", "baseline")
    assert event["detail"] == {"reason": "rolled back by hand", "manual": True}
    assert [(r.actor, r.action) for r in audit_rows(project, "m@2")] == [
        ("bot", "rollout.start"), ("cli", "rollout.advance"), ("cli", "rollout.rollback")]
    assert routes.log[-1] == ("m", [("stable", 1, 1.0, False)], "rollout m@2: rolled_back")
    for act, verb in ((ctl.promote, "promote"), (ctl.rollback, "roll back")):
        with pytest.raises(RolloutError) as err:
            act("m")
        assert err.value.message == f"rollout of m@2 is rolled_back; nothing to {verb}"
        assert err.value.context == {"model": "m", "status": "rolled_back"}


@pytest.mark.parametrize("other", ["promote", "rollback"])
def test_a_controller_that_acted_on_a_stale_state_is_refused(project: Project, ctl: RolloutController,
                                                              clock: Clock, source: Source, other: str) -> None:
    state = ctl.start("m", 2, baseline=1, plan="5,50,100", min_requests=50, stage_seconds=10)
    rival = RolloutController(project, routes=Routes(), source=Source(), clock=clock)
    source.during = lambda: getattr(rival, other)("m", actor="operator")  # acts while this one is looking
    source.both(100)
    clock.now += 10
    with pytest.raises(ConflictError) as err:
        ctl.step("m")
    assert err.value.message == ("rollout of m@2 changed under this controller; another controller or operator "
                                 "acted first")
    assert err.value.context == {"rollout": state.id}
    assert [(e["action"], e["actor"]) for e in ctl.events(state.id)] == [("start", "bot"), (
        "advance" if other == "promote" else "rollback", "operator")]


# ---- running -------------------------------------------------------------------------------------------


def test_run_sleeps_only_while_holding_and_returns_when_done(ctl: RolloutController, clock: Clock,
                                                             routes: Routes, source: Source) -> None:
    ctl.start("m", 2, baseline=1, plan="5,100", min_requests=50, stage_seconds=10)
    routes.log.clear()
    source.both(60)
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.now += seconds

    result = ctl.run("m", interval_s=5, sleep=sleep, max_seconds=3600)
    assert result.action == "complete" and slept == [5, 5, 5, 5]
    assert routes.log[0] == ("m", routes_for(5, 2, 1), "rollout m@2: stage 5")  # re-applied before the first step
    with pytest.raises(InputError) as err:
        ctl.run("m", interval_s=0)
    assert (err.value.field, err.value.problem, err.value.value) == ("interval_s", "must be above 0", 0)


def test_run_without_a_limit_runs_to_the_end_and_a_spent_limit_stops_at_once(ctl: RolloutController, clock: Clock,
                                                                           source: Source) -> None:
    ctl.start("m", 2, baseline=1, plan="5,100", min_requests=50, stage_seconds=10)
    source.both(60)
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.now += seconds

    assert ctl.run("m", interval_s=10, sleep=sleep, max_seconds=0).action == "hold" and slept == []
    assert ctl.run("m", interval_s=10, sleep=sleep).action == "complete" and slept == [10, 10]


def test_run_steps_every_five_seconds_by_default_and_takes_any_positive_interval(ctl: RolloutController,
                                                                                 clock: Clock, source: Source) -> None:
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.now += seconds

    ctl.start("m", 2, baseline=1, plan="100", min_requests=50, stage_seconds=10)
    source.both(60)
    assert ctl.run("m", sleep=sleep).action == "complete" and slept == [5.0, 5.0]
    ctl.start("n", 2, baseline=1, plan="100", min_requests=50, stage_seconds=1)
    slept.clear()
    assert ctl.run("n", interval_s=0.5, sleep=sleep).action == "complete" and slept == [0.5, 0.5]


def test_active_rollouts_are_listed_in_the_order_they_started_postgres(pg_url: str, settings: Settings,
                                                                       clock: Clock) -> None:
    """PostgreSQL returns an updated row after the others unless the query orders them."""
    p = Project(settings.replace(db=pg_url))
    try:
        ctl = RolloutController(p, routes=Routes(), source=Source(), clock=clock)
        first = ctl.start("m", 2, baseline=1, plan="shadow,5,100")
        second = ctl.start("n", 2, baseline=1, plan="shadow,5,100")
        ctl.promote("m")  # rewrites the first rollout's row
        assert [s.id for s in ctl.active()] == [first.id, second.id]
        assert [e["action"] for e in ctl.events(first.id)] == ["start", "advance"]
    finally:
        p.close()


def test_each_transition_goes_to_the_webhooks_outbox_with_its_audit_detail(settings: Settings, clock: Clock,
                                                                         source: Source) -> None:
    hooked = Project(dataclasses.replace(settings, extra={"webhooks": [
        {"url": "http://127.0.0.1:9/hook", "secret": "s3cret-for-tests", "events": ["rollout.*"]}]}))
    try:
        ctl = RolloutController(hooked, routes=Routes(), source=source, clock=clock, actor="bot")
        ctl.start("m", 2, baseline=1, plan="5,100")
        ctl.promote("m", actor="alice")
        ctl.rollback("m")
        with hooked.db.begin() as conn:
            events = [json.loads(r.body) for r in conn.execute(
                sa.select(webhook_deliveries.c.body).order_by(webhook_deliveries.c.id))]
        assert [(e["kind"], e["subject"], e["actor"]) for e in events] == [
            ("rollout.start", "m@2", "bot"), ("rollout.advance", "m@2", "alice"), ("rollout.rollback", "m@2", "cli")]
        audited = [json.loads(json.dumps(r.detail)) for r in audit_rows(hooked, "m@2")]
        assert [e["data"] for e in events] == [{**detail, "model": "m"} for detail in audited]
    finally:
        hooked.close()
