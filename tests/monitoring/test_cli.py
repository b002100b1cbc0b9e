"""``modelmill drift``, ``report``, ``monitor`` and ``reference`` run as a user runs them: a subprocess, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from modelmill.cli import app
from tests.serving.conftest import COLUMNS, N_FEATURES, ServeProcess, make_project


def mm(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELMILL_")}
    return subprocess.run([sys.executable, "-m", "modelmill", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=180)


# ---- drift and report: one column selection, one verdict ---------------------------------------------------


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    """11 features, 6 of them shifted by one standard deviation, plus a row id and a label that do not drift:
    6 of 13 columns (no dataset drift at 0.5) when id and label are counted, 6 of 11 (drift) when not."""
    rng = np.random.default_rng(7)
    n = 2000

    def frame(shift: float) -> pd.DataFrame:
        cols = {f"x{i}": rng.normal(shift if i < 6 else 0.0, 1.0, n) for i in range(11)}
        return pd.DataFrame({"id": rng.permutation(n), **cols, "label": rng.integers(0, 2, n)})

    ref, cur = tmp_path / "ref.parquet", tmp_path / "cur.csv"
    frame(0.0).to_parquet(ref)
    frame(1.0).to_csv(cur, index=False)
    return ref, cur


def _both(files: tuple[Path, Path], tmp_path: Path, *selection: str) -> tuple[dict[str, Any], dict[str, Any]]:
    # in-process (the commands' own code, without a subprocess's import time); exit codes are tested below
    ref, cur = files
    runner = CliRunner()
    drift = runner.invoke(app, ["drift", "--reference", str(ref), "--current", str(cur), *selection, "--json"])
    assert drift.exit_code == 0, drift.output
    out = tmp_path / "report.html"
    report = runner.invoke(app, ["report", "--reference", str(ref), "--current", str(cur), "--out", str(out),
                                 *selection, "--json"])
    assert report.exit_code == 0, report.output
    d, r = json.loads(drift.stdout), json.loads(report.stdout)
    html = out.read_text()
    assert f"{len(r['drifted'])} of {r['n_columns']} columns drifted" in html
    assert ("drift detected" if r["dataset_drift"] else "no dataset drift") in html
    return d, r


def test_drift_and_report_agree_with_the_same_column_selection(files: tuple[Path, Path], tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no modelmill.toml: the default drift options
    for selection, n_columns, verdict in [
        ((), 13, False),                                  # everything in both files: id and label counted
        (("--exclude", "id", "--target", "label"), 11, True),
        (("--columns", ",".join(f"x{i}" for i in range(11))), 11, True),
        (("--columns", "x0,x1,x6,label", "--target", "label"), 3, True),
    ]:
        d, r = _both(files, tmp_path, *selection)
        assert len(d["columns"]) == r["n_columns"] == n_columns, selection
        assert d["dataset_drift"] is r["dataset_drift"] is verdict, selection
        assert sorted(c for c, v in d["columns"].items() if v["drift"]) == sorted(r["drifted"])


def test_a_misspelt_exclusion_is_refused_by_both(files: tuple[Path, Path], tmp_path: Path) -> None:
    ref, cur = files
    for cmd in (["drift"], ["report", "--out", str(tmp_path / "r.html")]):
        out = mm([*cmd, "--reference", str(ref), "--current", str(cur), "--exclude", "idd", "--json"], tmp_path)
        assert out.returncode == 2, out.stdout + out.stderr
        error = json.loads(out.stdout)
        assert error["field"] == "exclude" and "idd" in error["error"] and "Traceback" not in out.stderr
    out = mm(["report", "--exclude", "id", "--out", str(tmp_path / "r.html")], tmp_path)
    assert out.returncode == 2 and "--reference" in out.stderr and "Traceback" not in out.stderr


# ---- monitor: a version without a reference profile is "no data", named, with the way to fix it -------------


@pytest.mark.slow  # many CLI processes or a served model: .ci/run runs it, make test keeps its 10 minutes
def test_monitor_names_a_missing_reference_and_does_not_pass(tmp_path: Path) -> None:
    root = make_project(tmp_path / "proj")  # clf v1 (production), v2
    serve = ServeProcess(root, "--model", "clf@production", "--no-cache").wait_ready()
    try:
        rng = np.random.default_rng(2)
        with httpx.Client(base_url=serve.url) as client:
            for _ in range(60):
                x = rng.normal(size=N_FEATURES)
                body = {"inputs": [{"name": c, "shape": [1], "datatype": "FP64", "data": [float(v)]}
                                   for c, v in zip(COLUMNS, x, strict=True)]}
                assert client.post("/v2/models/clf/infer", json=body).status_code == 200
    finally:
        serve.stop()  # flushes the prediction log

    text = mm(["monitor", "--once"], root)
    assert text.returncode == 3, text.stdout + text.stderr
    assert "no reference profile for clf@1" in text.stderr and "modelmill reference clf@1 --data" in text.stderr
    assert "no data" in text.stdout and "status: no data" in text.stderr and "Traceback" not in text.stderr

    # following the advice makes the check run
    train = tmp_path / "train.parquet"
    pd.DataFrame(np.random.default_rng(0).normal(size=(400, N_FEATURES)), columns=COLUMNS).to_parquet(train)
    made = mm(["reference", "clf@production", "--data", str(train), "--json"], root)
    assert made.returncode == 0, made.stdout + made.stderr
    assert json.loads(made.stdout)["version"] == 1 and "__prediction__" in json.loads(made.stdout)["columns"]
    again = mm(["monitor", "--once", "--json"], root)
    assert again.returncode == 0, again.stdout + again.stderr
    [window] = json.loads(again.stdout)["windows"]
    assert window["status"] == "pass" and window["n_rows"] == 60 and window["drift_share"] is not None

    # a rule is a check too: one that cannot look (no labels to measure an AUC with) makes the round "no
    # data", and the round shows why; one that breaches fails it, and so does its alert while it fires
    config = root / "modelmill.toml"
    base = config.read_text()
    config.write_text(base + '\n[[monitoring.rules]]\nname = "AucDrop"\nkind = "metric_below_baseline"\n'
                      'metric = "auc"\nbaseline = 0.7\n')
    blind = mm(["monitor", "--once", "--json"], root)
    assert blind.returncode == 3, blind.stdout + blind.stderr
    result = json.loads(blind.stdout)
    assert result["status"] == "no_data" and [r["rule"] for r in result["rules"]] == ["AucDrop"]
    assert result["rules"][0]["status"] == "no_data" and any("AucDrop" in r for r in result["reasons"])
    config.write_text(base + '\n[[monitoring.rules]]\nname = "Slow"\nkind = "latency_p95"\nthreshold = 0\n')
    slow = mm(["monitor", "--once"], root)
    assert slow.returncode == 1, slow.stdout + slow.stderr
    assert "Slow" in slow.stdout and "status: fail" in slow.stderr


def test_monitor_with_nothing_served_says_no_data(tmp_path: Path) -> None:
    root = make_project(tmp_path / "proj")
    out = mm(["monitor", "--once", "--json"], root)
    assert out.returncode == 3, out.stdout + out.stderr
    result = json.loads(out.stdout)
    assert result["status"] == "no_data" and result["windows"] == [] and "no predictions" in result["reasons"][0]


def test_reference_for_a_file_without_the_signature_columns_is_refused(tmp_path: Path) -> None:
    root = make_project(tmp_path / "proj")
    data = tmp_path / "wrong.csv"
    data.write_text("a,b\n1,2\n")
    out = mm(["reference", "clf@1", "--data", str(data), "--json"], root)
    assert out.returncode == 2, out.stdout + out.stderr
    error = json.loads(out.stdout)
    assert error["field"] == "data" and "f0" in error["error"]


# ---- monitor: the delayed-label metrics with no rules, over a real server's predictions and labels ----------


def test_monitor_reports_the_auc_of_the_labels_posted_over_http(tmp_path: Path) -> None:
    from sklearn.metrics import roc_auc_score

    from modelmill.security import TokenStore
    from tests.serving.conftest import open_project_at

    root = make_project(tmp_path / "proj")  # clf v1 (production), v2; no [monitoring] section at all
    with open_project_at(root) as project:
        token = {"Authorization": f"Bearer {TokenStore(project).create('label', name='labeller')[1]}"}
    serve = ServeProcess(root, "--model", "clf@production", "--no-cache").wait_ready()
    rng = np.random.default_rng(12)
    outputs: dict[str, float] = {}
    try:
        with httpx.Client(base_url=serve.url) as client:
            for i in range(80):
                x = rng.normal(size=N_FEATURES)
                body = {"id": f"client-{i}", "inputs": [{"name": c, "shape": [1], "datatype": "FP64",
                                                         "data": [float(v)]} for c, v in zip(COLUMNS, x, strict=True)]}
                r = client.post("/v2/models/clf/infer", json=body)
                assert r.status_code == 200 and r.json()["id"] == f"client-{i}", r.text
                outputs[f"client-{i}"] = float(r.json()["outputs"][0]["data"][0])
            labelled = [f"client-{i}" for i in range(0, 80, 2)] + ["client-79"]
            truth = {rid: int(rng.uniform() < outputs[rid]) for rid in labelled}
            r = client.post("/v1/models/clf/labels", headers=token,
                            json={"labels": [{"id": k, "label": v} for k, v in truth.items()]})
            # a label that arrives before its prediction is written to the log is stored all the same (counted
            # as unknown) and joins once the prediction lands: how many of each depends on the log's flush
            counts = r.json()
            assert r.status_code == 200 and counts["accepted"] + counts["unknown"] == len(truth), r.text
    finally:
        serve.stop()  # flushes the prediction log

    out = mm(["monitor", "--once", "--json"], root)
    assert out.returncode == 3, out.stdout + out.stderr  # clf@1 has no reference profile: drift is no data
    [row] = json.loads(out.stdout)["performance"]
    assert (row["model"], row["version"], row["task"], row["n"]) == ("clf", 1, "binary", 41)
    expected = roc_auc_score(list(truth.values()), [outputs[k] for k in truth])
    assert abs(row["metrics"]["auc"]["value"] - expected) < 1e-9 and row["metrics"]["auc"]["n"] == 41
