"""The own-model tutorial (docs/tutorials/own-model.md), run as written: CLI and HTTP only.

A credit-default table, not the flights demo's, goes through ingestion, features, a training set,
``train --feature-service``, the gate, an alias, ``serve``, predictions under client ids, labels over HTTP,
``monitor --once --json`` and a rollout started and promoted over HTTP. This module imports nothing from
modelmill; what it checks, it reads from the files the page's commands wrote.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from tests.tutorials.runner import free_port, run_page

PAGE = Path(__file__).resolve().parents[2] / "docs" / "tutorials" / "own-model.md"
# the whole page, about 30 commands and a server (30-80 s): .ci/run runs it, `make test` leaves it out
pytestmark = pytest.mark.slow


def _binary_metric(monitor: dict[str, Any], model: str, version: int, metric: str) -> dict[str, Any]:
    """The delayed-label metric ``metric`` that ``monitor --once --json`` reports for ``model@version``."""
    for entry in monitor["performance"]:
        if entry["model"] == model and entry["version"] == version:
            found: dict[str, Any] = entry["metrics"][metric]
            return found
    raise AssertionError(f"no performance entry for {model}@{version} in {monitor.get('performance')}")


@pytest.fixture(scope="module")
def tutorial(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("own-model")
    done = run_page(PAGE, workdir, port=free_port(), timeout=420)
    assert done.returncode == 0, f"the tutorial failed (exit {done.returncode}):\n{done.stdout[-6000:]}"
    return workdir


def test_the_monitor_reports_the_auc_of_exactly_the_labelled_predictions(tutorial: Path) -> None:
    predictions = pd.read_json(tutorial / "predictions.jsonl", lines=True).set_index("request_id")
    assert (predictions["version"] == 1).all() and len(predictions) == 400
    apps = pd.read_csv(tutorial / "applications.csv").tail(400)
    outcomes = pd.read_csv(tutorial / "outcomes.csv").tail(400)
    labelled = [f"app-{a}" for a in apps.application_id][:300]
    y = outcomes.defaulted.to_numpy()[:300]
    expected = roc_auc_score(y, predictions.loc[labelled, "prediction"].to_numpy())

    monitor = json.loads((tutorial / "monitor.json").read_text())
    auc = _binary_metric(monitor, "credit", 1, "auc")
    assert auc["n"] == 300
    assert abs(auc["value"] - expected) <= 1e-9, (auc, expected)


def test_the_rollout_started_and_promoted_over_http_moves_production(tutorial: Path) -> None:
    started = json.loads((tutorial / "rollout.json").read_text())
    assert started["rollout"]["candidate"] == 2 and started["rollout"]["status"] == "running"
    promoted = json.loads((tutorial / "promoted.json").read_text())
    assert promoted["rollout"]["status"] == "completed"
    aliases = json.loads((tutorial / "aliases.json").read_text())
    assert aliases["aliases"]["production"] == 2
    assert json.loads((tutorial / "after.json").read_text())["version"] == 2


def test_every_step_left_its_record(tutorial: Path) -> None:
    train = json.loads((tutorial / "train.json").read_text())
    assert train["model_version"] == "credit@1" and train["feature_service"] == "credit"
    training_set = pd.read_parquet(tutorial / "train.parquet")
    assert len(training_set) == 3200 and {"income", "debt_ratio", "late_payments", "defaulted"} <= set(training_set)
