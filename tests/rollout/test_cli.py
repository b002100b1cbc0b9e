"""`modelmill rollout start --detach|status|promote|rollback --json` in process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tests.serving.conftest import make_project
from typer.testing import CliRunner

from modelmill.cli import app


def run(*args: str) -> Any:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_detached_start_promote_rollback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_project(tmp_path / "proj")  # clf v1 (production) and v2
    monkeypatch.chdir(root)
    monkeypatch.delenv("MODELMILL_HOME", raising=False)
    started = run("rollout", "start", "clf@2", "--plan", "shadow,5,100", "--baseline", "1", "--detach", "--json")
    assert started["rollout"]["stage"] == "shadow" and started["rollout"]["baseline"] == 1
    assert run("rollout", "status", "--json")["rollouts"][0]["model"] == "clf"
    promoted = run("rollout", "promote", "clf", "--reason", "looks fine", "--json")
    assert promoted["action"] == "advance" and promoted["rollout"]["stage"] == "5"
    back = run("rollout", "rollback", "clf", "--json")
    assert back["action"] == "rollback" and back["rollout"]["status"] == "rolled_back"
    status = run("rollout", "status", "clf", "--json")
    assert [e["action"] for e in status["events"]] == ["start", "advance", "rollback"]
    assert status["events"][1]["actor"] == "cli" and status["events"][1]["detail"]["reason"] == "looks fine"
    bad = CliRunner().invoke(app, ["rollout", "start", "clf", "--json"])
    assert bad.exit_code != 0 and "NAME@VERSION" in str(bad.exception)


def fails(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code != 0, result.output
    return result.output + str(result.exception or "")


def test_start_refuses_what_it_cannot_guard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_project(tmp_path / "proj")
    monkeypatch.chdir(root)
    monkeypatch.delenv("MODELMILL_HOME", raising=False)
    # A version that does not exist: refused up front (it used to get a shadow variant the server ignored).
    assert "clf@99" in fails("rollout", "start", "clf@99", "--detach", "--json")
    # A minimum below the guardrails' own: the stage would pass before any guardrail could judge it.
    assert "minimum sample" in fails("rollout", "start", "clf@2", "--min-requests", "40", "--detach", "--json")
    assert "names no guardrail" in fails("rollout", "start", "clf@2", "--off", "latency", "--detach", "--json")
    # A negative allowed increase (a candidate must be better than production by that much) is refused, as the
    # HTTP body and the loop's config refuse it, naming the setting
    for option in ("--max-label-loss-increase", "--max-error-rate-increase", "--max-estimated-loss-increase"):
        said = fails("rollout", "start", "clf@2", option, "-0.1", "--detach", "--json")
        assert option[2:].replace("-", "_") in said and "at least 0" in said, said
    assert run("rollout", "status", "--json")["rollouts"] == []
    started = run("rollout", "start", "clf@2", "--min-requests", "40", "--min-samples", "40", "--off", "label_loss",
                  "--max-stage-seconds", "900", "--on-timeout", "hold", "--detach", "--json")["rollout"]
    assert started["guardrails"]["max_label_loss_increase"] is None and started["guardrails"]["min_samples"] == 40
    assert (started["max_stage_seconds"], started["on_timeout"]) == (900, "hold")
