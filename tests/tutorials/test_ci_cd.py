"""The CI/CD tutorial (docs/tutorials/ci-cd.md), run as written: its ``ci.sh`` job four times, CLI and HTTP only.

The first job promotes version 1 (no production yet: the gate's regression check is skipped), the second
rolls version 2 out to completion, the third's candidate passes the gate and is rolled back by the
output-shift guardrail (the job exits 1), the fourth's is rejected by the gate (exit 1, no rollout). What
is checked is read from the JSON each step wrote; this module imports nothing from modelmill.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.tutorials.runner import free_port, run_page

PAGE = Path(__file__).resolve().parents[2] / "docs" / "tutorials" / "ci-cd.md"
# four trainings, a server and two rollouts (2-6 min on a shared machine): .ci/run runs it
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tutorial(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("ci-cd")
    done = run_page(PAGE, workdir, port=free_port(), timeout=900)
    assert done.returncode == 0, f"the tutorial failed (exit {done.returncode}):\n{done.stdout[-6000:]}"
    return workdir


def _job(workdir: Path, job: str, step: str) -> Any:
    return json.loads((workdir / "jobs" / job / f"{step}.json").read_text())


def test_the_first_job_is_gated_without_a_baseline_and_promoted_by_alias(tutorial: Path) -> None:
    assert _job(tutorial, "first", "train")["model_version"] == "churn@1"
    gate = _job(tutorial, "first", "gate")
    assert gate["accepted"] and gate["against"] is None and "not set" in gate["reason"]
    assert [c["rule"] for c in gate["checks"]] == ["min"]  # the regression check was skipped, not passed
    assert _job(tutorial, "first", "promoted")["version"] == 1
    assert not (tutorial / "jobs" / "first" / "rollout.json").exists()


def test_a_better_candidate_is_gated_against_production_and_rolled_out_to_completion(tutorial: Path) -> None:
    gate = _job(tutorial, "leaves", "gate")
    assert gate["candidate"] == "churn@2" and gate["against"] == "churn@1" and gate["accepted"]
    regression = next(c for c in gate["checks"] if c["rule"] == "max_regression")
    assert regression["status"] == "pass" and regression["value"] >= regression["baseline"] - 0.02
    rollout = _job(tutorial, "leaves", "rollout")
    assert rollout["rollout"]["candidate"] == 2 and rollout["rollout"]["status"] == "completed"
    actions = [(e["action"], e["from"], e["to"]) for e in rollout["events"]]
    assert actions[:3] == [("start", None, "50"), ("advance", "50", "100"), ("complete", "100", "done")]
    assert rollout["events"][3]["action"] == "alias" and "version 2" in rollout["events"][3]["detail"]["note"]


def test_a_candidate_the_gate_accepts_is_rolled_back_by_the_output_shift_and_fails_the_job(tutorial: Path) -> None:
    gate = _job(tutorial, "one-round", "gate")
    assert gate["candidate"] == "churn@3" and gate["accepted"]
    rollout = _job(tutorial, "one-round", "rollout")
    assert rollout["rollout"]["status"] == "rolled_back" and rollout["action"] == "rollback"
    failed = [c for c in rollout["checks"] if c["status"] == "fail"]
    assert [c["check"] for c in failed] == ["output_shift"], rollout["checks"]
    assert (tutorial / "jobs" / "one-round" / "exit").read_text().strip() == "exit status 1"


def test_a_worse_candidate_is_rejected_at_the_gate_and_nothing_is_rolled_out(tutorial: Path) -> None:
    gate = _job(tutorial, "spend-only", "gate")
    assert gate["candidate"] == "churn@4" and not gate["accepted"] and gate["decision"] == "reject"
    assert gate["metrics"]["auc"] < 0.75
    assert {c["status"] for c in gate["checks"] if c["rule"] == "min"} == {"fail"}
    assert _job(tutorial, "spend-only", "train")["features"] == ["spend"]
    assert not (tutorial / "jobs" / "spend-only" / "rollout.json").exists()
    assert (tutorial / "jobs" / "spend-only" / "exit").read_text().strip() == "exit status 1"
    assert json.loads((tutorial / "production.json").read_text())["version"] == 2
