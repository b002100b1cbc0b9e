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


def _worse_treatment_log(n: int = 4000) -> list[tuple[str, str, int, str, float, float | None]]:
    """Labels 30% positive; the control predicts 0.3 (log loss 0.61), the treatment 0.7 (log loss 0.95)."""
    rows: list[tuple[str, str, int, str, float, float | None]] = []
    for i in range(n):
        v = "control" if i % 2 == 0 else "treatment"
        label = 1.0 if (i * 7919) % 10 < 3 else 0.0
        rows.append((f"r{i}", v, 1 if v == "control" else 2, f"u{i}", 0.3 if v == "control" else 0.7, label))
    return rows


def test_analyze_a_lower_is_better_metric_from_a_served_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The regression: treatment's log loss is 0.34 higher, and analyze used to switch to it."""
    from modelmill.monitoring import log_losses
    from modelmill.project import open_project

    from .conftest import log_served

    (tmp_path / "modelmill.toml").write_text('home = ".modelmill"\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MODELMILL_HOME", raising=False)
    with open_project() as project:
        log_served(project.offline, "m", _worse_treatment_log())
        preds = project.offline.read("predictions").to_pandas()
        labels = project.offline.read("labels").to_pandas()[["request_id", "label"]]
    log = preds.merge(labels, on="request_id")
    log["log_loss"] = log_losses(log["label"].to_numpy(), log["output"].to_numpy())
    path = tmp_path / "log.parquet"
    log[["request_id", "variant", "log_loss"]].to_parquet(path)
    args = ("experiment", "analyze", "--input", str(path), "--metric", "log_loss", "--min-sample-size", "100")

    out = run(*args, "--json")
    assert out["direction"] == "lower" and out["lift_abs"] == pytest.approx(0.34, abs=0.01)
    assert out["decision"] == "keep_control" and out["reason"].startswith("treatment is worse"), out["reason"]
    text = CliRunner().invoke(app, list(args))
    assert text.exit_code == 0 and "keep_control: treatment is worse" in text.stdout, text.stdout
    assert "log_loss: lower is better" in text.stdout
    assert run(*args, "--direction", "lower", "--json")["decision"] == "keep_control"
    higher = run(*args, "--direction", "higher", "--json")
    assert higher["direction"] == "higher" and higher["decision"] == "switch_to_treatment"
    bad = mm(tmp_path, *args, "--direction", "sideways", "--json")
    assert bad.returncode == 2 and "direction" in json.loads(bad.stdout)["error"] and "Traceback" not in bad.stderr

    # The same decision from the stored experiment, read from the prediction log and the labels.
    made = run("experiment", "create", "ll", "--model", "m", "--variant", "control=1:50", "--variant",
               "treatment=2:50", "--metric", "log_loss", "--min-sample-size", "100", "--json")
    assert made["direction"] == "lower"
    with open_project() as project:
        log_served(project.offline, "m", _worse_treatment_log())  # after the start: the analysis reads from there
    stored = run("experiment", "analyze", "ll", "--json")
    assert stored["direction"] == "lower" and stored["decision"] == "keep_control", stored["reason"]
    assert 0.3 < stored["treatment"]["mean"] - stored["control"]["mean"] < 0.4
    assert run("experiment", "analyze", "ll", "--direction", "higher", "--json")["decision"] == "switch_to_treatment"


def test_create_refuses_a_metric_the_served_model_cannot_give(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELMILL_HOME", raising=False)
    (tmp_path / "modelmill.toml").write_text('home = ".modelmill"\n')
    bad = mm(tmp_path, "experiment", "create", "rev", "--model", "m", "--variant", "control=1:50", "--variant",
             "treatment=2:50", "--metric", "revenue", "--json")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    err = json.loads(bad.stdout)
    assert "primary_metric" in err["error"] and "log_loss" in err["error"], err
    listed = mm(tmp_path, "experiment", "status", "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout)["experiments"] == []


def test_a_served_experiment_on_accuracy_from_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """accuracy is higher-is-better: the treatment (0.7 → class 1, right on the 30% positives) loses to the
    control (0.3 → class 0, right on the 70% negatives), by exactly the difference of those shares."""
    from modelmill.project import open_project

    from .conftest import log_served

    (tmp_path / "modelmill.toml").write_text('home = ".modelmill"\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MODELMILL_HOME", raising=False)
    made = run("experiment", "create", "acc", "--model", "m", "--variant", "control=1:50", "--variant",
               "treatment=2:50", "--metric", "accuracy", "--min-sample-size", "100", "--json")
    assert made["direction"] == "higher" and made["primary_metric"] == "accuracy"
    rows = _worse_treatment_log()
    with open_project() as project:
        log_served(project.offline, "m", rows)
    out = run("experiment", "analyze", "acc", "--json")
    share = {arm: sum(y == (arm == "treatment") for _, v, _, _, _, y in rows if v == arm)
             / sum(v == arm for _, v, *_ in rows) for arm in ("control", "treatment")}
    assert out["control"]["mean"] == pytest.approx(share["control"], abs=1e-12)
    assert out["treatment"]["mean"] == pytest.approx(share["treatment"], abs=1e-12)
    assert out["direction"] == "higher" and out["decision"] == "keep_control", out["reason"]
    help_text = " ".join(CliRunner().invoke(app, ["experiment", "create", "--help"]).stdout.split())
    assert "label, conversion, output, latency_ms, log_loss, brier, accuracy" in help_text


@pytest.mark.slow  # many CLI processes or a served model: .ci/run runs it, make test keeps its 10 minutes
def test_create_on_a_registered_model_refuses_a_version_it_does_not_have(tmp_path: Path) -> None:
    from tests.serving.conftest import make_project

    root = make_project(tmp_path / "proj")  # clf v1 (production), v2
    bad = mm(root, "experiment", "create", "x1", "--model", "clf", "--variant", "control=1:50",
             "--variant", "t=99:50", "--metric", "log_loss", "--json")
    assert bad.returncode == 1 and "99" in json.loads(bad.stdout)["error"] and "Traceback" not in bad.stderr
    assert json.loads(mm(root, "experiment", "status", "--json").stdout)["experiments"] == []  # nothing stored
    good = mm(root, "experiment", "create", "x1", "--model", "clf", "--variant", "control=1:50",
              "--variant", "t=2:50", "--metric", "log_loss", "--json")
    assert good.returncode == 0, good.stdout + good.stderr
