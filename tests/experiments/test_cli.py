"""`modelmill experiment ...` as a user runs it: one JSON object on stdout, clean errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from statsmodels.stats.proportion import proportions_ztest
from typer.testing import CliRunner

from modelmill.cli import app

OBD = Path(__file__).resolve().parent.parent / "data" / "obd" / "clicks.csv.gz"


def mm(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real console entry point in a subprocess (how errors are rendered)."""
    return subprocess.run([sys.executable, "-m", "modelmill", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def run(*args: str) -> dict:  # type: ignore[type-arg]
    """In process, for speed; the command must succeed and print exactly one JSON object."""
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_analyze_obd_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = run("experiment", "analyze", "--input", str(OBD), "--variant-column", "policy", "--metric", "click",
              "--control", "random", "--json")
    z, p = proportions_ztest([38, 42], [10_000, 10_000])
    assert out["statistic"] == pytest.approx(z, abs=1e-9) and out["p_value"] == pytest.approx(p, abs=1e-9)
    assert out["treatment"] == {"name": "bts", "n": 10_000, "mean": 0.0042}
    assert out["decision"] == "continue"
    seq = run("experiment", "analyze", "--input", str(OBD), "--variant-column", "policy", "--metric", "click",
              "--control", "random", "--test", "sequential", "--json")
    assert seq["test"] == "sequential" and seq["p_value"] >= out["p_value"]
    bad = mm(tmp_path, "experiment", "analyze", "--input", str(OBD), "--variant-column", "nope", "--metric",
             "click", "--json")
    assert bad.returncode == 2 and "nope" in json.loads(bad.stdout)["error"] and "Traceback" not in bad.stderr


def test_create_status_stop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "modelmill.toml").write_text('home = ".modelmill"\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MODELMILL_HOME", raising=False)
    created = run("experiment", "create", "ranker", "--variant", "control:90", "--variant", "treatment:10",
                  "--metric", "click", "--min-sample-size", "1000", "--json")
    assert created["salt"] == "ranker"
    st = run("experiment", "status", "ranker", "--json")
    assert st["exposures"] == {"control": 0, "treatment": 0} and st["min_sample_reached"] is False
    assert [e["name"] for e in run("experiment", "status", "--json")["experiments"]] == ["ranker"]
    assert run("experiment", "stop", "ranker", "--json")["status"] == "stopped"
    again = mm(tmp_path, "experiment", "stop", "ranker", "--json")
    assert again.returncode == 1 and "already stopped" in json.loads(again.stdout)["error"]
