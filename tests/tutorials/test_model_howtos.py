"""The model how-tos (docs/howto/train.md, gate.md, promote.md, grafana.md), each run as written: CLI and HTTP.

Each page runs once in a temporary folder (a module-scoped fixture); the tests read what its commands
wrote and check it against the page's own data: the runs a search returns against each training's JSON,
the gate's AUC against the AUC of the version's own batch predictions, the versions a server answered
with as the alias moved, and the dashboard a stand-in Grafana received against the packaged file. This
module imports nothing from modelmill.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from tests.tutorials.runner import read_json as _json
from tests.tutorials.runner import run_howto

_run = functools.partial(run_howto, timeout=600)

ROOT = Path(__file__).resolve().parents[2]
# each page trains one to five models (30 s to 3 min on a shared machine): .ci/run runs them
pytestmark = pytest.mark.slow




# --- train.md ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def train(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run("train.md", tmp_path_factory.mktemp("train"))


def test_each_trainer_registers_a_version_with_its_tasks_metrics(train: Path) -> None:
    w = train
    answers = {name: _json(w, f"{name}.json") for name in ("hgb", "lightgbm", "mlp", "multiclass", "regression")}
    assert [answers[n]["model_version"] for n in ("hgb", "lightgbm", "mlp")] == ["churn@1", "churn@2", "churn@3"]
    assert [answers[n]["trainer"] for n in ("hgb", "lightgbm", "mlp")] == ["sklearn-hgb", "lightgbm", "torch-mlp"]
    assert answers["multiclass"]["model_version"] == "plan@1" and answers["regression"]["model_version"] == "spend@1"
    for name in ("hgb", "lightgbm", "mlp"):
        assert set(answers[name]["metrics"]) == {"auc", "log_loss", "calibration_error"}, name
        assert answers[name]["features"] == ["tenure", "spend", "tickets"]
    assert set(answers["multiclass"]["metrics"]) == {"log_loss", "macro_f1", "accuracy"}
    assert set(answers["regression"]["metrics"]) == {"rmse", "mae"}
    # the --param values reached the trainers
    assert answers["hgb"]["params"]["max_iter"] == 100
    assert (answers["lightgbm"]["params"]["n_estimators"], answers["lightgbm"]["params"]["num_leaves"]) == (100, 15)
    assert (answers["mlp"]["params"]["epochs"], answers["mlp"]["params"]["hidden"]) == (5, [32])


def test_the_run_search_orders_the_binary_runs_by_their_own_validation_auc(train: Path) -> None:
    w = train
    runs = _json(w, "best.json")["runs"]
    expected = sorted(((_json(w, f"{n}.json")["metrics"]["auc"], _json(w, f"{n}.json")["run_id"])
                       for n in ("hgb", "lightgbm", "mlp")), reverse=True)
    assert [(r["metrics"]["valid_auc"], r["run_id"]) for r in runs] == expected
    refused = (w / "refused.txt").read_text()
    assert "colour" in refused and "got churn" in refused


# --- gate.md -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run("gate.md", tmp_path_factory.mktemp("gate"))


def test_the_gate_accepts_on_thresholds_and_its_auc_is_the_versions_own_on_the_holdout(gate: Path) -> None:
    w = gate
    first = _json(w, "gate1.json")
    assert first["accepted"] and [(c["metric"], c["rule"], c["status"]) for c in first["checks"]] == [
        ("auc", "min", "pass"), ("calibration_error", "max", "pass")]
    scored = pd.read_parquet(w / "scored.parquet")
    assert len(scored) == first["rows"] == 1000
    assert abs(roc_auc_score(scored["churned"], scored["prediction"]) - first["metrics"]["auc"]) <= 1e-9
    assert _json(w, "alias.json")["version"] == 1


def test_a_regression_against_production_rejects_and_the_decision_is_stored_on_the_version(gate: Path) -> None:
    w = gate
    second = _json(w, "gate2.json")
    assert second["candidate"] == "churn@2" and second["against"] == "churn@1" and not second["accepted"]
    regressions = {c["metric"]: c for c in second["checks"] if c["rule"] == "max_regression"}
    assert regressions["auc"]["status"] == "fail"
    assert regressions["auc"]["baseline"] - regressions["auc"]["value"] > regressions["auc"]["threshold"]
    assert regressions["auc"]["baseline"] == _json(w, "gate1.json")["metrics"]["auc"]  # same rows, same model
    shown = _json(w, "v2_shown.json")
    assert shown["gate"]["decision"] == "reject" and shown["gate"]["reason"] == second["reason"]
    assert "must be one of" in (w / "refused.txt").read_text()


# --- promote.md ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def promote(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run("promote.md", tmp_path_factory.mktemp("promote"))


def test_the_server_follows_each_alias_move_and_the_history_keeps_who_and_why(promote: Path) -> None:
    w = promote
    assert (w / "before.txt").read_text().strip() == "1" and (w / "after.txt").read_text().strip() == "2"
    history = _json(w, "history.json")["history"]
    assert [(h["version"], h["previous"], h["actor"]) for h in history] == [(1, None, "alice"), (2, 1, "alice"),
                                                                            (1, 2, "bob")]
    assert history[2]["reason"] == "v2 answers slower than expected"
    assert _json(w, "put.json")["version"] == 2
    refused = _json(w, "refused.json")
    assert "9" in refused["error"]
    assert _json(w, "aliases.json")["aliases"]["production"] == 2


# --- grafana.md ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def grafana(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run("grafana.md", tmp_path_factory.mktemp("grafana"))


def test_the_packaged_dashboard_is_posted_whole_and_its_request_metrics_are_served(grafana: Path) -> None:
    w = grafana
    shipped = json.loads((ROOT / "src" / "modelmill" / "monitoring" / "assets" / "grafana-dashboard.json").read_text())
    received = _json(w, "grafana_received.json")
    assert received["path"] == "/api/dashboards/db" and received["authorization"] == "Bearer glsa_example"
    assert received["body"]["overwrite"] is True
    assert received["body"]["dashboard"] == {**shipped, "id": None}
    assert _json(w, "imported.json")["uid"] == shipped["uid"]

    report = _json(w, "panel_metrics.json")
    assert report == {"modelmill_alert_active": False, "modelmill_drift_share": False,
                      "modelmill_feature_drift_score": False, "modelmill_feature_psi": False,
                      "modelmill_model_metric": False, "modelmill_request_latency_seconds_bucket": True,
                      "modelmill_requests_total": True}
    for provisioned in ("grafana/provisioning/datasources/prometheus.yaml",
                        "grafana/provisioning/dashboards/modelmill.yaml", "prometheus.yml"):
        assert (w / provisioned).exists()
