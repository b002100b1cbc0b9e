"""Rollouts against a real `modelmill serve` process, real traffic, the real prediction log and /metrics."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from tests.rollout.flaky import FlakyModel
from tests.serving.conftest import COLUMNS, ServeProcess, make_project, open_project_at, signature, train_lr

from modelmill.errors import NotFoundError
from modelmill.project import Project
from modelmill.registry import Registry
from modelmill.rollout import Guardrails, RolloutController, ServingGuardrails
from modelmill.serving import RouteTable, Variant

REPO = Path(__file__).resolve().parents[2]


def _truth() -> np.ndarray:
    """The weights behind clf v2's training labels (train_lr(1)): labels drawn from them favour v2 over v1."""
    rng = np.random.default_rng(1)
    rng.normal(size=(400, len(COLUMNS)))
    return rng.normal(size=len(COLUMNS))


class Traffic:
    """One client sending requests of random users, one at a time, until stopped (bounded in count and time).

    With ``labels`` (an offline store), each answered request's delayed label is written to table ``labels``
    every ``label_every`` requests, as a label feed would: the rollout's label guardrail joins them.
    """

    def __init__(self, url: str, *, max_requests: int = 60_000, max_seconds: float = 120.0,
                 labels: Any = None, label_every: int = 50) -> None:
        self.url = url
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.labels = labels
        self.label_every = label_every
        self.labelled = 0
        self.statuses: list[tuple[float, int, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> Traffic:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        rng = np.random.default_rng(0)
        w = _truth()
        pending: list[dict[str, Any]] = []
        deadline = time.monotonic() + self.max_seconds
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while not self._stop.is_set() and len(self.statuses) < self.max_requests and time.monotonic() < deadline:
                x = rng.normal(size=len(COLUMNS))
                rid = f"t{len(self.statuses)}"
                body = {"id": rid, "inputs": [{"name": c, "shape": [1], "datatype": "FP64", "data": [float(v)]}
                                              for c, v in zip(COLUMNS, x, strict=True)],
                        "parameters": {"routing_key": f"user-{rng.integers(1_000_000)}"}}
                r = client.post("/v2/models/clf/infer", json=body)
                version = r.json().get("model_version", "") if r.status_code == 200 else r.text[:200]
                self.statuses.append((time.time(), r.status_code, version))
                if self.labels is not None and r.status_code == 200:
                    pending.append({"request_id": rid, "ts": pd.Timestamp.now(tz="UTC"), "label": int(x @ w > 0)})
                    if len(pending) >= self.label_every:
                        self.labels.write("labels", pa.Table.from_pylist(pending), time_column="ts")
                        self.labelled += len(pending)
                        pending = []

    def errors(self, since: float = 0.0) -> tuple[int, int]:
        rows = [s for s in self.statuses if s[0] >= since]
        return sum(1 for s in rows if s[1] != 200), len(rows)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Callable[[], tuple[Path, ServeProcess]]]:
    procs: list[ServeProcess] = []

    def start() -> tuple[Path, ServeProcess]:
        root = make_project(tmp_path / "proj")  # clf v1 (production) and v2
        project = open_project_at(root)
        try:
            Registry(project).register("clf", FlakyModel(train_lr(1)), flavor="sklearn", signature=signature())
            RouteTable(project).set("clf", [Variant("stable", "production", 1.0)])  # what serves today
        finally:
            project.close()
        proc = ServeProcess(root, "--no-cache", env={"PYTHONPATH": str(REPO)})
        procs.append(proc)
        return root, proc.wait_ready()

    yield start
    for p in procs:
        p.stop()


def _controller(project: Project, proc: ServeProcess) -> RolloutController:
    source = ServingGuardrails(project, metrics_url=f"{proc.url}/metrics", settle_s=1.0)
    return RolloutController(project, source=source)


@pytest.mark.slow  # many CLI processes or a served model: .ci/run runs it, make test keeps its 10 minutes
def test_good_candidate_goes_all_the_way(served: Any) -> None:
    """Delayed labels arrive as the traffic runs: every stage passes on the label join, not for lack of data."""
    root, proc = served()
    project = open_project_at(root)
    traffic = Traffic(proc.url, labels=project.offline).start()
    try:
        ctl = _controller(project, proc)
        # The machine is shared with other test runs: latency gets a wide margin, and so does the output
        # shift between two honest but different models; errors and labels stay strict.
        ctl.start("clf", 2, plan="shadow,5,10,50,100", min_requests=50, stage_seconds=1.5,
                  guardrails=Guardrails(latency_slack_ms=100, max_output_shift=0.4))  # see the test below
        steps: list[Any] = []
        result = ctl.run("clf", interval_s=0.5, max_seconds=150, on_step=steps.append)
        events = ctl.events(result.state.id)
        assert result.action == "complete", result.reason
        assert [(e["action"], e["to"]) for e in events] == [
            ("start", "shadow"), ("advance", "5"), ("advance", "10"), ("advance", "50"), ("advance", "100"),
            ("complete", "done"), ("alias", None)]
        assert Registry(project).resolve("clf@production").version == 2
        # Each stage advanced on labels joined to its own requests (the label guardrail had data and passed).
        advanced = [s for s in steps if s.action in ("advance", "complete")]
        assert len(advanced) == 5 and all(s.observed["candidate"]["labeled"] >= 50 for s in advanced)
        assert all({v.check: v.status for v in s.checks}["label_loss"] == "pass" for s in advanced)
        time.sleep(1.0)  # the server reloads routes every 0.25 s
        t_after = time.time()
        time.sleep(1.0)
    finally:
        traffic.stop()
        project.close()
    errors, total = traffic.errors()
    assert errors == 0 and total > 200, [s for s in traffic.statuses if s[1] != 200][:3]
    assert {s[2] for s in traffic.statuses if s[0] > t_after} == {"2"}


@pytest.mark.slow  # many CLI processes or a served model: .ci/run runs it, make test keeps its 10 minutes
def test_failing_candidate_is_rolled_back_and_few_users_see_errors(served: Any) -> None:
    root, proc = served()
    traffic = Traffic(proc.url).start()
    project = open_project_at(root)
    try:
        ctl = _controller(project, proc)
        started = time.time()
        ctl.start("clf", 3, plan="5,50,100", min_requests=50, stage_seconds=3)
        result = ctl.run("clf", interval_s=0.5, max_seconds=60)
        rolled_back_at = time.time()
        assert result.action == "rollback", result.reason
        assert [b.check for b in result.breaches] == ["error_rate"]
        assert result.state.current == 5  # caught during the 5% canary
        route = RouteTable(project).get("clf")
        assert [(v.name, v.target, v.weight, v.shadow) for v in route.variants] == [
            ("stable", "production", 1.0, False)]  # only the stable variant is left
        time.sleep(1.0)
        quiet_from = time.time()
        time.sleep(3.0)
    finally:
        traffic.stop()
        project.close()
    assert_errors_within_stage(traffic, started, stage_share=0.05, failure_rate=0.10)
    assert_canary_share_within_stage(traffic, started, rolled_back_at, candidate="3", stage_share=0.05)
    assert traffic.errors(since=quiet_from) == (0, traffic.errors(since=quiet_from)[1])
    assert traffic.errors(since=quiet_from)[1] > 20  # and traffic did go on after the rollback


def assert_canary_share_within_stage(traffic: Traffic, since: float, until: float, *, candidate: str,
                                     stage_share: float) -> None:
    """The share of user requests the candidate got (its answers and its failures, the only ones) before the
    rollback is at most the stage's share, with three binomial standard deviations. The error share alone
    cannot show this: a router sending 40% to the canary gets it rolled back sooner, so fewer users see errors."""
    rows = [s for s in traffic.statuses if since <= s[0] < until]
    canary = sum(1 for s in rows if s[1] != 200 or s[2] == candidate)
    bound = stage_share + 3 * (stage_share * (1 - stage_share) / len(rows)) ** 0.5
    print(f"{canary} of {len(rows)} user requests went to the candidate ({canary / len(rows):.2%}); the stage is "
          f"{stage_share:.0%}, bound {bound:.2%}")
    assert len(rows) > 100 and 0 < canary / len(rows) <= bound


def assert_errors_within_stage(traffic: Traffic, since: float, *, stage_share: float, failure_rate: float) -> None:
    """The share of user requests that failed is what the stage implies (share x failure rate), with a margin
    of three binomial standard deviations. (A router sending 40% to the canary may still pass this, being
    rolled back sooner: :func:`assert_canary_share_within_stage` bounds the canary's share itself.)"""
    errors, total = traffic.errors(since=since)
    expected = stage_share * failure_rate
    bound = expected + 3 * (expected * (1 - expected) / total) ** 0.5
    print(f"{errors} of {total} user requests failed ({errors / total:.2%}); the stage implies {expected:.2%}, "
          f"bound {bound:.2%}")
    assert errors >= 1 and errors / total <= bound


@pytest.mark.slow
def test_shadow_stage_catches_a_failing_candidate_before_any_user_does(served: Any) -> None:
    root, proc = served()
    traffic = Traffic(proc.url).start()
    project = open_project_at(root)
    try:
        ctl = _controller(project, proc)
        ctl.start("clf", 3, plan="shadow,5,100", min_requests=50, stage_seconds=5)
        result = ctl.run("clf", interval_s=0.5, max_seconds=60)
    finally:
        traffic.stop()
        project.close()
    assert result.action == "rollback" and result.state.current == "shadow", result.reason
    assert traffic.errors()[0] == 0


def _cli(root: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "modelmill", "rollout", *args], cwd=root, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_killed_controller_resumes(served: Any) -> None:
    root, proc = served()
    traffic = Traffic(proc.url).start()
    metrics = f"{proc.url}/metrics"
    try:
        # This test is about resuming, not the guardrails' margins: a loaded CI machine must not trip the
        # latency guardrail, and v1 and v2 are different models whose outputs lie about 0.2 apart in KS
        # distance, the default limit (a breach seen once in CI: KS 0.202, p=0.02).
        first = _cli(root, "start", "clf@2", "--latency-slack-ms", "1000", "--max-output-shift", "0.4",
                     "--plan", "shadow,5,10,50,100", "--min-requests", "10", "--min-samples", "10",
                     "--off", "label_loss",
                     "--stage-seconds", "1.5", "--interval", "0.3", "--metrics-url", metrics)
        project = open_project_at(root)
        try:
            ctl = RolloutController(project)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    if ctl.get("clf").stage >= 2:
                        break
                except NotFoundError:  # the CLI has not written the rollout yet
                    pass
                time.sleep(0.1)
            first.kill()  # SIGKILL mid-rollout: no cleanup runs
            first.communicate(timeout=10)
            killed = ctl.get("clf")
            assert killed.status == "running" and killed.stage >= 2
        finally:
            project.close()
        second = _cli(root, "run", "clf", "--interval", "0.3", "--metrics-url", metrics, "--json")
        out, err = second.communicate(timeout=120)
        assert second.returncode == 0, err
        payload = json.loads(out)
        assert payload["action"] == "complete" and payload["rollout"]["status"] == "completed", payload.get("reason")
        actions = [(e["action"], e["to"]) for e in payload["events"]]
        assert actions[:3] == [("start", "shadow"), ("advance", "5"), ("advance", "10")]
        assert actions[-2:] == [("complete", "done"), ("alias", None)]
        assert [a for a, _ in actions].count("advance") == 4  # nothing repeated, nothing skipped
        status = subprocess.run([sys.executable, "-m", "modelmill", "rollout", "status", "clf", "--json"],
                                cwd=root, capture_output=True, text=True, timeout=60)
        assert json.loads(status.stdout)["rollout"]["status"] == "completed"
    finally:
        traffic.stop()
    assert traffic.errors()[0] == 0


@pytest.mark.slow  # many CLI processes or a served model: .ci/run runs it, make test keeps its 10 minutes
def test_readme_recipe_rolls_back_the_demos_faulty_model(served: Any) -> None:
    """The README's CI/CD step exactly as written (no --metrics-url: the prediction log alone counts every
    outcome), with the demo's FaultyModel as the candidate, against a real server under traffic."""
    from modelmill.demo.faulty import FaultyModel

    root, proc = served()
    project = open_project_at(root)
    try:
        Registry(project).register("clf", FaultyModel(train_lr(1), column=0, limit=1.2816), flavor="sklearn",
                                   signature=signature())  # clf@4: fails on about 10% of requests
    finally:
        project.close()
    traffic = Traffic(proc.url).start()
    started = time.time()
    try:
        recipe = _cli(root, "start", "clf@4", "--plan", "shadow,5,10,50,100", "--min-requests", "500")
        out, err = recipe.communicate(timeout=120)
        time.sleep(1.0)  # the server re-reads routes every 0.25 s
    finally:
        traffic.stop()
    assert recipe.returncode == 1, (out, err)  # a rolled-back rollout fails the pipeline step
    assert "rolled_back" in out and "error rate" in out, (out, err)
    project = open_project_at(root)
    try:
        state = RolloutController(project).get("clf")
        assert state.status == "rolled_back" and state.current in ("shadow", 5), state.reason
        stage_share = 0.0 if state.current == "shadow" else 0.05
        assert [(v.name, v.target, v.weight) for v in RouteTable(project).get("clf").variants] == [
            ("stable", "production", 1.0)]
    finally:
        project.close()
    errors, total = traffic.errors(since=started)
    if stage_share == 0.0:
        assert errors == 0 and total > 50  # caught in the shadow stage: no user saw a failure
    else:
        assert_errors_within_stage(traffic, started, stage_share=stage_share, failure_rate=0.10)
