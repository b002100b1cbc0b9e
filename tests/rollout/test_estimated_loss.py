"""The ``estimated_loss`` guardrail (off by default): the real controller holds or rolls back a candidate whose
expected log loss is clearly worse before any label arrives, and steps aside once labels are in."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from modelmill.errors import ConfigError
from modelmill.loop.config import parse_models
from modelmill.project import Project
from modelmill.rollout import Guardrails, Observation, RolloutController, check
from modelmill.rollout.guardrails import CHECKS, OPTIONAL_CHECKS

from .test_controller import Clock, MemoryRoutes


class Outputs:
    """Each variant answers ``n`` requests with probabilities: production confident (Beta(0.5, 0.5), mostly near
    0 and 1), the candidate ``candidate(rng, n)``; ``labeled`` gives both variants label losses."""

    def __init__(self) -> None:
        self.n = 0
        self.candidate = lambda rng, n: rng.beta(0.5, 0.5, size=n)
        self.labeled = False

    def mark(self, model: str) -> dict[str, Any]:
        return {}

    def window(self, model: str, *, since: float, mark: Mapping[str, Any],
               shadows: Sequence[str] = ()) -> dict[str, Observation]:
        rng = np.random.default_rng(0)
        lat = np.full(self.n, 2.0)
        base = rng.beta(0.5, 0.5, size=self.n)
        cand = self.candidate(rng, self.n)
        losses = np.full(self.n if self.labeled else 0, 0.3)
        return {"stable": Observation(requests=self.n, latencies_ms=lat, outputs=base, label_losses=losses),
                "candidate": Observation(requests=self.n, latencies_ms=lat, outputs=cand, label_losses=losses)}


#: Only the estimate judges the loss: the other checks pass on these observations, or are off.
ESTIMATE_ONLY = Guardrails(max_output_shift=None, max_label_loss_increase=None, max_estimated_loss_increase=0.02)


def _start(project: Project, source: Outputs, g: Guardrails, **kw: Any) -> tuple[RolloutController, Clock]:
    clock = Clock()
    ctl = RolloutController(project, routes=MemoryRoutes(), source=source, clock=clock)
    ctl.start("m", 2, baseline=1, plan="shadow,50,100", min_requests=100, stage_seconds=10, guardrails=g, **kw)
    return ctl, clock


def _estimated(step: Any) -> Any:
    [v] = [v for v in step.checks if v.check == "estimated_loss"]
    return v


def test_a_candidate_unsure_of_everything_is_rolled_back_before_any_label(project: Project) -> None:
    source = Outputs()
    source.candidate = lambda rng, n: rng.uniform(0.4, 0.6, size=n)  # entropy near log 2: a far worse loss
    ctl, clock = _start(project, source, ESTIMATE_ONLY)
    source.n = 300
    clock.now += 11
    step = ctl.step("m")
    assert step.action == "rollback" and [b.check for b in step.breaches] == ["estimated_loss"]
    assert step.state.status == "rolled_back" and "estimated log loss" in step.reason
    breach = step.breaches[0]
    assert breach.candidate > breach.limit == pytest.approx(breach.baseline + 0.02)


def test_a_candidate_as_confident_as_production_walks_the_plan(project: Project) -> None:
    source = Outputs()
    ctl, clock = _start(project, source, ESTIMATE_ONLY)
    source.n = 300
    actions = []
    for _ in range(3):
        clock.now += 11
        step = ctl.step("m")
        actions.append(step.action)
        assert _estimated(step).status == "pass"
    assert actions == ["advance", "advance", "complete"]


def test_a_slightly_worse_estimate_within_its_uncertainty_is_not_a_breach() -> None:
    """One-sided: the lower bound of the difference must clear the allowed increase, not the point estimate."""
    rng = np.random.default_rng(1)
    base = Observation(requests=60, outputs=rng.beta(2, 5, size=60))
    cand = Observation(requests=60, outputs=np.clip(base.outputs + 0.03, 0, 1))
    [v] = check(cand, base, ESTIMATE_ONLY)[-1:]
    assert v.check == "estimated_loss" and v.status == "pass", v.message
    said = v.message
    low = float(said.split("at least ")[1].split(" ")[0])
    assert low < 0.02


def test_too_few_outputs_hold_the_stage_then_roll_back_past_its_limit(project: Project) -> None:
    source = Outputs()
    ctl, clock = _start(project, source, ESTIMATE_ONLY, max_stage_seconds=600)
    source.n = 30  # below min_samples (50)
    clock.now += 11
    step = ctl.step("m")
    assert step.action == "hold" and _estimated(step).status == "no_data"
    assert "30 of the 50 outputs per variant" in _estimated(step).message
    clock.now += 600
    step = ctl.step("m")
    assert step.action == "rollback" and "without the data its guardrails need" in step.reason


def test_outputs_that_are_not_probabilities_are_no_data_and_hold(project: Project) -> None:
    source = Outputs()
    source.candidate = lambda rng, n: rng.normal(50, 10, size=n)  # a regression model
    ctl, clock = _start(project, source, ESTIMATE_ONLY)
    source.n = 300
    clock.now += 11
    step = ctl.step("m")
    assert step.action == "hold" and _estimated(step).status == "no_data"
    assert "not probabilities" in _estimated(step).message


def test_once_labels_arrive_the_label_loss_check_judges_instead(project: Project) -> None:
    source = Outputs()
    source.candidate = lambda rng, n: rng.uniform(0.4, 0.6, size=n)
    g = Guardrails(max_output_shift=None, max_estimated_loss_increase=0.02)
    ctl, clock = _start(project, source, g)
    source.n, source.labeled = 300, True  # equal realised losses: the candidate's labels say it is fine
    clock.now += 11
    step = ctl.step("m")
    assert step.action == "advance", step.reason
    assert _estimated(step).status == "pass" and "label_loss judges" in _estimated(step).message


def test_off_by_default_and_reported_after_the_default_checks() -> None:
    obs = Observation(requests=100, latencies_ms=np.full(100, 2.0), outputs=np.full(100, 0.5),
                      label_losses=np.full(100, 0.3))
    assert [v.check for v in check(obs, obs, Guardrails())] == list(CHECKS)
    on = Guardrails(max_estimated_loss_increase=0.02)
    assert [v.check for v in check(obs, obs, on)] == [*CHECKS, *OPTIONAL_CHECKS]


def test_the_loop_config_turns_it_on_and_off() -> None:
    def rollout(guardrails: dict[str, Any]) -> Guardrails:
        cfg = parse_models({"m": {"pipeline": {"function": "p:q"}, "gate": {"min": {"auc": 0.6}},
                                  "rollout": {"guardrails": guardrails}}})
        return cfg.model("m").rollout.guardrails

    assert rollout({}).max_estimated_loss_increase is None
    assert rollout({"max_estimated_loss_increase": 0.05}).max_estimated_loss_increase == 0.05
    assert rollout({"max_estimated_loss_increase": False}).max_estimated_loss_increase is None
    with pytest.raises(ConfigError) as info:
        rollout({"max_estimated_loss_increase": -1})
    assert info.value.key == "models.m.rollout.guardrails.max_estimated_loss_increase"


def test_the_cli_and_the_http_body_turn_it_on(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.serving.conftest import make_project

    from modelmill.control.rollouts import start_request

    from .test_cli import run

    monkeypatch.chdir(make_project(tmp_path / "proj"))
    monkeypatch.delenv("MODELMILL_HOME", raising=False)
    started = run("rollout", "start", "clf@2", "--max-estimated-loss-increase", "0.03", "--detach", "--json")
    assert started["rollout"]["guardrails"]["max_estimated_loss_increase"] == 0.03
    body = start_request({"model": "clf", "version": 2, "guardrails": {"max_estimated_loss_increase": 0.05}})
    assert body["guardrails"].max_estimated_loss_increase == 0.05
