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

    # Every window was judged whole: the monitor saw each of its predictions (no window is left to "no data"; at
    # the canary's last stage the baseline's mirrored answers are logged and judged too).
    assert all(sum(d["n_rows"] for d in w["drift"]) >= w["predictions"] for w in windows), result["events"]
    # The planted drift is found in the first window past it, and never before it.
    dataset = result["detectors"][0]
    assert dataset["detector"] == "dataset drift (monitor)"
    events = "\n".join(result["events"])
    assert dataset["first_hit_window"] == drift_hour and dataset["false_alarms"] == 0, (result["detectors"], events)
    columns = {d["detector"]: d for d in result["detectors"][1:]}
    assert columns["column session_len"]["hits"] >= 1 and columns["column device_web"]["hits"] >= 1
    quiet = [w for w in windows if not w["drifted_truth"]]
    assert quiet and all(d["status"] == "pass" for w in quiet for d in w["drift"])

    # The loop retrained on the drifted hour, the gate accepted, the canary went 10% → 50% → 100%.
    retrain = result["retrain"]
    assert retrain["window"] == drift_hour and retrain["accepted"] and retrain["version"] == 2, events
    rollout = result["rollout"]
    assert rollout["status"] == "completed" and rollout["production"] == 2, events
    assert result["versions"] == [1, 2]
    assert any(set(w["served"]) == {"1", "2"} for w in windows)  # the canary split traffic
    assert windows[-1]["served"] == {"2": result["per_window"]}

    # The A/B test on the promoted model finds the planted effect with its sign.
    ab = result["ab"]
    assert ab["version"] == 2 and ab["decision"] == "switch_to_treatment", events
    assert ab["right_sign"] and ab["found"] and ab["measured_lift"] > 0 and ab["true_effect"] > 0
    assert (tmp_path / "modelmill.toml").read_text().count("[models.clicks") >= 4


def test_detectors_are_scored_against_the_planted_drift() -> None:
    from modelmill.demo.clicks import WindowRow, score_detectors

    def window(i: int, drifted: bool, *versions: tuple[int, str, list[str]]) -> WindowRow:
        row = WindowRow(window=i, start="", drifted_truth=drifted)
        row.drift = [{"version": v, "drift_share": 0.5, "status": s, "drifted": d} for v, s, d in versions]
        return row

    rows = [window(1, False, (1, "pass", ["users__affinity"])),
            window(2, True, (1, "fail", ["session_len", "device_web", "__prediction__"])),
            # v2 was trained past the drift: a flag on it is a false alarm, silence a quiet window
            window(3, True, (1, "pass", ["session_len"]), (2, "fail", ["device_web"]))]
    dataset, *columns = score_detectors(rows, {1: False, 2: True})
    assert (dataset["hits"], dataset["misses"], dataset["false_alarms"], dataset["quiet_windows"],
            dataset["first_hit_window"]) == (1, 1, 1, 1, 2)
    by = {c["detector"]: c for c in columns}
    assert (by["column session_len"]["hits"], by["column session_len"]["misses"]) == (2, 0)
    assert (by["column device_web"]["hits"], by["column device_web"]["misses"],
            by["column device_web"]["false_alarms"]) == (1, 1, 1)
    assert by["column users__affinity"]["false_alarms"] == 1 and not by["column users__affinity"]["planted"]
    assert by["column __prediction__"]["flagged"] == 1 and by["column __prediction__"]["hits"] == 0


def test_the_generator_plants_what_it_reports() -> None:
    import numpy as np
    import pandas as pd

    from modelmill.datasets import ClickStream

    gen = ClickStream(users=2_000, seed=3, drift_at=pd.Timestamp("2024-01-01 02:00", tz="UTC"), drift_shift=1.0,
                      ab_lift=0.5)
    quiet, drifted = gen.window(1, 20_000), gen.window(2, 20_000)
    assert quiet["ts"].max() < gen.truth().drift_at <= drifted["ts"].min()
    assert not gen.truth().drifted(quiet["ts"].max()) and gen.truth().drifted(drifted["ts"].min())
    ratio = drifted["session_len"].median() / quiet["session_len"].median()
    assert abs(ratio - np.exp(0.5)) < 0.05
    assert (drifted["device"] == "web").mean() > (quiet["device"] == "web").mean() + 0.15
    assert abs(drifted["tenure_days"].mean() / quiet["tenure_days"].mean() - 1) < 0.05  # not planted: unmoved
    # Treated impressions click more, by what ab_effect says.
    treated, control = gen.clicks(quiet, np.ones(len(quiet), bool)), gen.clicks(quiet, np.zeros(len(quiet), bool))
    assert abs((treated.mean() - control.mean()) - gen.ab_effect(quiet)) < 0.01 and gen.ab_effect(quiet) > 0.03
    assert gen.window(1, 20_000).equals(quiet)  # a window is the same rows every time
