"""The clicks scenario at a small scale, run as a user runs it: ``modelmill demo --scenario clicks``.

Everything it checks comes from the scenario's JSON, which reports what modelmill decided (through
the CLI, the HTTP routes and ``modelmill loop``) next to what the generator planted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def run_clicks(folder: Path, *args: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELMILL_")}
    out = subprocess.run([sys.executable, "-m", "modelmill", "demo", "--scenario", "clicks", "--json", *args],
                         cwd=folder, env=env, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    result: dict = json.loads(out.stdout)
    return result


# Eight simulated hours of 6,000 impressions, each hour one monitoring window of about 16 s, plus the setup
# (every step a `modelmill` child process): four to six minutes on a quiet 2-core machine.
@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_clicks_small_scale(tmp_path: Path) -> None:
    result = run_clicks(tmp_path, "--users", "4000")
    truth = result["truth"]
    assert truth["drifted_columns"] == ["session_len", "device"] and truth["ab_sign"] == 1
    windows = result["windows"]
    drift_hour = next(w["window"] for w in windows if w["drifted_truth"])
    # Every impression was answered by the feature route and labelled through the labels route.
    assert all(w["errors"] == 0 and w["predictions"] == w["labels"] == result["per_window"] for w in windows)

    # The planted drift is found in the first window past it, and never before it.
    dataset = result["detectors"][0]
    assert dataset["detector"] == "dataset drift (monitor)"
    assert dataset["first_hit_window"] == drift_hour and dataset["false_alarms"] == 0
    columns = {d["detector"]: d for d in result["detectors"][1:]}
    assert columns["column session_len"]["hits"] >= 1 and columns["column device_web"]["hits"] >= 1
    quiet = [w for w in windows if not w["drifted_truth"]]
    assert quiet and all(d["status"] == "pass" for w in quiet for d in w["drift"])

    # The loop retrained on the drifted hour, the gate accepted, the canary went 10% → 50% → 100%.
    retrain = result["retrain"]
    assert retrain["window"] == drift_hour and retrain["accepted"] and retrain["version"] == 2
    rollout = result["rollout"]
    assert rollout["status"] == "completed" and rollout["production"] == 2, rollout
    assert result["versions"] == [1, 2]
    assert any(set(w["served"]) == {"1", "2"} for w in windows)  # the canary split traffic
    assert windows[-1]["served"] == {"2": result["per_window"]}

    # The A/B test on the promoted model finds the planted effect with its sign.
    ab = result["ab"]
    assert ab["version"] == 2 and ab["decision"] == "switch_to_treatment"
    assert ab["right_sign"] and ab["found"] and ab["measured_lift"] > 0 and ab["true_effect"] > 0
    assert (tmp_path / "modelmill.toml").read_text().count("[models.clicks") >= 4
