"""`modelmill rollout start --detach|status|promote|rollback --json` in process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from modelmill.cli import app


def run(*args: str) -> Any:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_detached_start_promote_rollback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "modelmill.toml").write_text('home = ".modelmill"\n')
    monkeypatch.chdir(tmp_path)
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
