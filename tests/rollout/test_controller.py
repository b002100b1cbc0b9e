"""The controller's state machine on real metadata databases (SQLite, PostgreSQL), with in-memory traffic."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from tests.serving.conftest import signature, train_lr

from modelmill.config import Settings
from modelmill.errors import ArtifactIntegrityError, ConflictError, InputError, NotFoundError, RolloutError
from modelmill.project import Project
from modelmill.registry import Registry
from modelmill.rollout import Guardrails, Observation, RolloutController, Target, check, evaluate, parse_plan
from modelmill.serving import RouteTable
from modelmill.store.tables import audit_log


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class MemoryRoutes:
    def __init__(self) -> None:
        self.current: dict[str, list[Target]] = {}
        self.calls = 0

    def set_weights(self, model: str, variants: Sequence[Target], *, reason: str) -> None:
        self.current[model] = list(variants)
        self.calls += 1


class MemorySource:
    """Every variant answers ``n`` requests per window; ``fail`` sets the candidate's error share; ``labeled``
    is False for a window whose delayed labels have not arrived."""

    def __init__(self) -> None:
        self.n = 0
        self.fail = 0.0
        self.slow = 1.0
        self.labeled = True

    def mark(self, model: str) -> dict[str, Any]:
        return {"n": self.n}

    def window(self, model: str, *, since: float, mark: Mapping[str, Any],
               shadows: Sequence[str] = ()) -> dict[str, Observation]:
        rng = np.random.default_rng(0)
        out = rng.uniform(size=max(self.n, 1))[: self.n]
        lat = rng.uniform(1, 3, size=self.n)
        losses = (rng.uniform(size=self.n) < 0.2).astype(float) if self.labeled else np.zeros(0)
        return {"stable": Observation(requests=self.n, latencies_ms=lat, outputs=out, label_losses=losses),
                "candidate": Observation(requests=self.n, errors=int(self.fail * self.n),
                                         latencies_ms=lat * self.slow, outputs=out, label_losses=losses)}


def _controller(project: Project, clock: Clock, routes: MemoryRoutes, source: MemorySource) -> RolloutController:
    return RolloutController(project, routes=routes, source=source, clock=clock)


def _walk(project: Project) -> None:
    clock, routes, source = Clock(), MemoryRoutes(), MemorySource()
    ctl = _controller(project, clock, routes, source)
    state = ctl.start("m", 2, baseline=1, plan="shadow,5,10,50,100", min_requests=100, stage_seconds=30)
    assert state.current == "shadow"
    assert routes.current["m"] == [("stable", 1, 1.0, False), ("candidate", 2, 0.0, True)]
    with pytest.raises(ConflictError):
        ctl.start("m", 3, baseline=1)
    assert ctl.step("m").action == "hold"  # no time, no traffic yet
    source.n = 500
    assert ctl.step("m").action == "hold"  # traffic, but the stage has not run its seconds
    seen = []
    for _ in range(5):
        clock.now += 31
        seen.append(ctl.step("m"))
    assert [s.action for s in seen] == ["advance", "advance", "advance", "advance", "complete"]
    assert [str(s.state.current) for s in seen[:4]] == ["5", "10", "50", "100"]
    final = ctl.get("m")
    assert final.status == "completed" and routes.current["m"] == [("stable", 2, 1.0, False)]
    events = ctl.events(final.id)
    assert [e["action"] for e in events] == ["start", "advance", "advance", "advance", "advance", "complete",
                                             "alias"]
    assert "registry alias not moved" in events[-1]["detail"]["note"]
    with project.db.begin() as conn:
        audited = [r.action for r in conn.execute(sa.select(audit_log.c.action).where(
            audit_log.c.subject == "m@2").order_by(audit_log.c.id))]
    assert audited == ["rollout.start", "rollout.advance", "rollout.advance", "rollout.advance",
                       "rollout.advance", "rollout.complete", "rollout.alias"]
    assert ctl.step("m").action == "idle"


def test_good_candidate_walks_the_plan_sqlite(project: Project) -> None:
    _walk(project)


def test_good_candidate_walks_the_plan_postgres(pg_url: str, settings: Settings) -> None:
    p = Project(settings.replace(db=pg_url))
    try:
        _walk(p)
    finally:
        p.close()


def test_breach_rolls_back_at_the_next_evaluation(project: Project) -> None:
    clock, routes, source = Clock(), MemoryRoutes(), MemorySource()
    ctl = _controller(project, clock, routes, source)
    ctl.start("m", 2, baseline="production", plan="5,50,100", min_requests=50, stage_seconds=10)
    assert routes.current["m"] == [("candidate", 2, 5.0, False), ("stable", "production", 95.0, False)]
    source.n, source.fail = 200, 0.10
    step = ctl.step("m")
    assert step.action == "rollback" and [b.check for b in step.breaches] == ["error_rate"]
    assert routes.current["m"] == [("stable", "production", 1.0, False)]
    assert ctl.get("m").status == "rolled_back"
    with pytest.raises(RolloutError):
        ctl.rollback("m")
    # A slow candidate is caught by the latency guardrail.
    source.fail, source.slow = 0.0, 10.0
    ctl.start("m", 3, baseline="production", plan="10,100", min_requests=50, stage_seconds=10)
    assert [b.check for b in ctl.step("m").breaches] == ["latency_p95"]


def test_restarted_controller_resumes(project: Project) -> None:
    clock, routes, source = Clock(), MemoryRoutes(), MemorySource()
    first = _controller(project, clock, routes, source)
    first.start("m", 2, baseline=1, plan="shadow,5,100", min_requests=50, stage_seconds=10)
    source.n = 50
    clock.now += 11
    assert first.step("m").action == "advance"
    del first  # the process dies here; routes may have been changed by hand meanwhile
    routes.current["m"] = [("stable", 1, 1.0, False)]
    again = RolloutController(Project(project.settings), routes=routes, source=source, clock=clock)
    assert again.get("m").current == 5
    steps: list[str] = []

    def sleep(seconds: float) -> None:
        clock.now += seconds

    result = again.run("m", interval_s=5, sleep=sleep, max_seconds=10, on_step=lambda s: steps.append(s.action))
    assert routes.calls >= 3  # run() re-applied the stored stage before its first step
    assert steps == ["hold", "hold", "advance", "hold", "hold", "complete"]
    assert result.action == "complete" and routes.current["m"] == [("stable", 2, 1.0, False)]


def test_manual_promote_rollback_and_validation(project: Project) -> None:
    clock, routes, source = Clock(), MemoryRoutes(), MemorySource()
    ctl = _controller(project, clock, routes, source)
    ctl.start("m", 2, baseline=1, plan="shadow,50,100")
    assert ctl.promote("m").state.current == 50
    step = ctl.rollback("m", reason="on-call said so")
    assert step.state.status == "rolled_back" and step.state.reason == "on-call said so"
    with pytest.raises(NotFoundError):
        ctl.get("other")
    for bad in ("5,shadow,100", "5,50", "50,10,100", "x,100", "0,100"):
        with pytest.raises(InputError):
            parse_plan(bad)
    with pytest.raises(InputError):
        ctl.start("m", 1, baseline=1)


def _register(project: Project, versions: int = 2) -> None:
    registry = Registry(project)
    for seed in range(versions):
        registry.register("m", train_lr(seed), flavor="sklearn", signature=signature())
    registry.set_alias("m", "production", 1)


def test_serving_routes_sink(project: Project) -> None:
    _register(project)
    ctl = RolloutController(project, source=MemorySource())
    ctl.start("m", 2, baseline="production", plan="shadow,10,100")
    route = RouteTable(project).get("m")
    assert {v.name: (v.version, v.weight, v.shadow) for v in route.variants} == {
        "stable": ("production", 1.0, False), "candidate": (2, 0.0, True)}
    ctl.promote("m")
    assert {v.name: v.weight for v in RouteTable(project).get("m").live} == {"candidate": 10.0, "stable": 90.0}


def test_guardrail_checks() -> None:
    g = Guardrails()
    rng = np.random.default_rng(1)
    base = Observation(requests=2000, errors=4, latencies_ms=rng.uniform(1, 3, 2000),
                       outputs=rng.beta(2, 5, 2000), label_losses=(rng.uniform(size=2000) < 0.2).astype(float))
    same = Observation(requests=100, errors=1, latencies_ms=rng.uniform(1, 3, 100), outputs=rng.beta(2, 5, 100),
                       label_losses=(rng.uniform(size=100) < 0.2).astype(float))
    assert evaluate(same, base, g) == []
    shifted = Observation(requests=500, outputs=rng.beta(5, 2, 500))
    assert [b.check for b in evaluate(shifted, base, g)] == ["output_shift"]
    worse = Observation(requests=500, label_losses=(rng.uniform(size=500) < 0.4).astype(float))
    assert [b.check for b in evaluate(worse, base, g)] == ["label_loss"]
    assert evaluate(worse, base, Guardrails(max_label_loss_increase=None)) == []
    few = Observation(requests=10, errors=2)  # below min_errors: not enough evidence yet
    assert evaluate(few, base, g) == []


def test_latency_is_not_compared_while_one_side_is_a_shadow(project: Project) -> None:
    """At 100% production runs as a shadow whose logged latency is the model call alone: not comparable."""
    clock, routes, source = Clock(), MemoryRoutes(), MemorySource()
    ctl = _controller(project, clock, routes, source)
    ctl.start("m", 2, baseline=1, plan="50,100", min_requests=50, stage_seconds=10)
    source.n, source.slow = 200, 10.0
    assert [b.check for b in ctl.step("m").breaches] == ["latency_p95"]  # both live at 50%: compared
    ctl.start("m", 3, baseline=1, plan="50,100", min_requests=50, stage_seconds=10)
    source.slow = 1.0
    clock.now += 11
    assert ctl.step("m").action == "advance" and ctl.get("m").current == 100
    source.slow = 10.0
    clock.now += 11
    assert ctl.step("m").action == "complete"


def test_label_loss_of_probabilities_is_log_loss() -> None:
    import pandas as pd

    from modelmill.rollout.sources import _losses

    rows = pd.DataFrame({"label": [1.0, 0.0, None, 0.0], "output": [0.8, 0.6, 0.5, 0.1]})
    np.testing.assert_allclose(_losses(rows), -np.log([0.8, 0.4, 0.9]))
    # A model that says 0.6 for a flight that was on time is a little wrong, not as wrong as a miss.
    assert _losses(rows)[1] < 1.0
    scores = pd.DataFrame({"label": [1.0, 0.0], "output": [3.0, -1.0]})  # not probabilities: 0/1 error
    assert _losses(scores).tolist() == [0.0, 0.0]
    regression = pd.DataFrame({"label": [2.5, 4.0], "output": [3.0, 3.0]})
    assert _losses(regression).tolist() == [0.5, 1.0]


# ---- fail closed: a guardrail without data holds, never passes ---------------------------------------------


def test_a_guardrail_short_of_samples_holds_the_stage_then_rolls_back(project: Project) -> None:
    """A garbage candidate passed the 5% stage on 43 requests: the checks were silent below min_samples."""
    clock, routes, source = Clock(), MemoryRoutes(), MemorySource()
    ctl = _controller(project, clock, routes, source)
    ctl.start("m", 2, baseline=1, plan="5,100", min_requests=50, stage_seconds=10, max_stage_seconds=100)
    source.n = 43  # fewer than the guardrails' 50
    clock.now += 11
    step = ctl.step("m")
    assert step.action == "hold", step.reason
    assert {v.check: v.status for v in step.checks} == dict.fromkeys(
        ["error_rate", "latency_p95", "output_shift", "label_loss"], "no_data")
    assert "43 of the 50" in step.reason
    clock.now += 100  # past the stage's limit, still short of data: back to the baseline
    step = ctl.step("m")
    assert step.action == "rollback" and "without the data its guardrails need" in step.reason
    assert routes.current["m"] == [("stable", 1, 1.0, False)]


def test_on_timeout_hold_keeps_holding(project: Project) -> None:
    clock, routes, source = Clock(), MemoryRoutes(), MemorySource()
    ctl = _controller(project, clock, routes, source)
    ctl.start("m", 2, baseline=1, plan="5,100", min_requests=50, stage_seconds=10, max_stage_seconds=20,
              on_timeout="hold")
    source.n = 500
    source.labeled = False  # requests, but no delayed labels yet
    clock.now += 1000
    step = ctl.step("m")
    assert step.action == "hold" and "label_loss: 0 of the 50" in step.reason
    source.labeled = True
    assert ctl.step("m").action == "advance"


@pytest.mark.parametrize("missing", ["requests", "latencies", "outputs", "labels"])
def test_each_check_without_its_data_says_no_data(missing: str) -> None:
    """The fails-closed suite for the rollout guardrails: remove one check's data source, that check is no_data."""
    rng = np.random.default_rng(3)
    full = {"requests": 500, "latencies_ms": rng.uniform(1, 3, 500), "outputs": rng.uniform(size=500),
            "label_losses": (rng.uniform(size=500) < 0.2).astype(float)}
    field = {"requests": "requests", "latencies": "latencies_ms", "outputs": "outputs", "labels": "label_losses"}
    gone = {**full, field[missing]: 0 if missing == "requests" else np.zeros(0)}
    check_of = {"requests": "error_rate", "latencies": "latency_p95", "outputs": "output_shift",
                "labels": "label_loss"}[missing]
    base = Observation(**full)
    verdicts = {v.check: v.status for v in check(Observation(**gone), base, Guardrails())}
    assert verdicts[check_of] == "no_data"
    assert all(s == "pass" for c, s in verdicts.items() if c != check_of), verdicts
    # and with the baseline's data gone instead
    verdicts = {v.check: v.status for v in check(base, Observation(**gone), Guardrails())}
    assert verdicts[check_of] == "no_data"


def test_a_plan_below_the_guardrails_minimum_is_refused(project: Project) -> None:
    ctl = _controller(project, Clock(), MemoryRoutes(), MemorySource())
    with pytest.raises(InputError, match=r"min_requests.*minimum sample"):
        ctl.start("m", 2, baseline=1, plan="5,100", min_requests=40)
    with pytest.raises(InputError, match="on_timeout"):
        ctl.start("m", 2, baseline=1, plan="5,100", on_timeout="pass")
    ctl.start("m", 2, baseline=1, plan="5,100", min_requests=40, guardrails=Guardrails(min_samples=40))


def test_a_rollout_of_a_version_that_cannot_be_served_is_refused(project: Project) -> None:
    _register(project)
    ctl = RolloutController(project, source=MemorySource())
    with pytest.raises(NotFoundError, match="m@99"):
        ctl.start("m", 99)
    assert ctl.active() == []
    with pytest.raises(NotFoundError):
        RouteTable(project).get("m")  # no route was written for it
    # A version whose artifact no longer matches its checksum is refused the same way.
    mv = Registry(project).get("m", 2)
    (Path(project.settings.artifacts) / mv.artifact_path).write_bytes(b"tampered")
    with pytest.raises(ArtifactIntegrityError):
        ctl.start("m", 2)
    assert ctl.active() == []
