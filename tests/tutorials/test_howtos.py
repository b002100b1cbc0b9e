"""The how-to pages (docs/howto/), each run as written by :func:`tests.tutorials.runner.run_page`: CLI and HTTP.

One module-scoped fixture per page runs it once in a temporary folder; the tests read what its commands
wrote there (JSON answers, the monitor's report) and check it against what the page's own data says must
come out. This module imports nothing from modelmill.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.tutorials.runner import read_json as _json
from tests.tutorials.runner import run_howto as _run

# --- send-labels.md ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def send_labels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run("send-labels.md", tmp_path_factory.mktemp("send-labels"))


@pytest.mark.slow
def test_send_labels_counts_and_the_newest_label_wins_in_the_measured_accuracy(send_labels: Path) -> None:
    w = send_labels
    ingested, again = _json(w, "ingested.json"), _json(w, "again.json")
    assert (ingested["rows"], ingested["accepted"], ingested["duplicates"], ingested["unknown"]) == (150, 150, 0, 0)
    assert (again["accepted"], again["duplicates"]) == (0, 150)
    assert _json(w, "posted.json") == {"accepted": 2, "duplicates": 0, "unknown": 1}
    consumed = _json(w, "consumed.json")
    assert (consumed["polled"], consumed["accepted"], consumed["dead_letters"]) == (51, 49, 2)
    dead = _json(w, "dead.json")
    assert dead["by_reason"] == {"invalid_label": 1, "unknown_model": 1}

    # the refused batches stored nothing: c-2 stayed (label 0), and a stored 1 for it would change the accuracy
    assert "row 2.label" in (w / "refused.txt").read_text()
    assert _json(w, "refused.json")["error"].startswith("labels[1].label")

    customers = pd.read_csv(w / "customers.csv").set_index("id")
    assert (customers.loc[["c-0", "c-1", "c-2"], "churned"] == 0).all()
    truth = customers["churned"].iloc[:199].copy()
    truth["c-0"] = 1  # the correction with the newer ts won; c-1's older one did not
    predicted = pd.read_json(w / "predictions.jsonl", lines=True).set_index("id")["output"]
    expected = float(((predicted.loc[truth.index] >= 0.5).astype(int) == truth).mean())

    monitor = _json(w, "monitor.json")
    [entry] = [e for e in monitor["performance"] if e["model"] == "churn" and e["version"] == 1]
    accuracy = entry["metrics"]["accuracy"]
    assert accuracy["n"] == 199
    assert abs(accuracy["value"] - expected) <= 1e-12, (accuracy, expected)


# --- ab-test.md ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ab_test(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run("ab-test.md", tmp_path_factory.mktemp("ab-test"))


@pytest.mark.slow
def test_ab_test_measures_each_variants_log_loss_and_keeps_the_better_control(ab_test: Path) -> None:
    w = ab_test
    served = pd.read_json(w / "served.jsonl", lines=True)
    served["version"] = served["version"].astype(int)
    # the routing key decides the variant, and both got about half of the 1,000 customers
    assert set(served["version"]) == {1, 2} and 400 <= (served["version"] == 1).sum() <= 600
    status = _json(w, "status.json")
    assert status["exposures"] == {"control": int((served.version == 1).sum()),
                                   "treatment": int((served.version == 2).sum())}
    assert status["srm_p_value"] > 0.001

    labels = pd.read_csv(w / "labels.csv").set_index("id")["label"]
    p = served.set_index("id")["output"].clip(1e-15, 1 - 1e-15)
    y = labels.loc[p.index]
    loss = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    version = served.set_index("id")["version"]
    analysis = _json(w, "analysis.json")
    for side, v in (("control", 1), ("treatment", 2)):
        assert analysis[side]["n"] == int((version == v).sum())
        assert abs(analysis[side]["mean"] - float(loss[version == v].mean())) <= 1e-9, (side, analysis[side])
    assert analysis["direction"] == "lower" and analysis["lift_abs"] > 0
    assert analysis["decision"] == "keep_control" and analysis["p_value"] < 0.05

    backwards = _json(w, "backwards.json")
    assert backwards["direction"] == "higher" and backwards["decision"] == "switch_to_treatment"

    assert _json(w, "stopped.json")["status"] == "stopped"
    assert _json(w, "after.json")["model_version"] == "1"


# --- rollout.md ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rollout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run("rollout.md", tmp_path_factory.mktemp("rollout"))


@pytest.mark.slow
def test_rollout_holds_without_data_advances_on_traffic_and_rolls_back_on_a_breach(rollout: Path) -> None:
    w = rollout
    assert _json(w, "started.json")["rollout"]["stage"] == "10"
    held = _json(w, "held.json")
    assert held["action"] == "hold" and held["rollout"]["status"] == "running" and held["rollout"]["stage"] == "10"
    assert {c["status"] for c in held["checks"]} == {"no_data"}

    ran = _json(w, "ran.json")
    assert [(e["action"], e["from"], e["to"]) for e in ran["events"]][:2] == [("start", None, "10"),
                                                                               ("advance", "10", "100")]
    assert _json(w, "status.json")["rollout"]["stage"] == "100"
    assert _json(w, "promoted.json")["rollout"]["status"] == "completed"
    assert _json(w, "production.json")["version"] == 2

    rolled = _json(w, "rolled_back.json")
    assert rolled["action"] == "rollback" and rolled["rollout"]["status"] == "rolled_back"
    assert [c["check"] for c in rolled["checks"] if c["status"] == "fail"] == ["output_shift"]
    assert _json(w, "manual.json")["rollout"]["status"] == "rolled_back"
    refused = (w / "refused.txt").read_text()
    assert "'churn@9' not found" in refused and "min_requests" in refused


# --- ingest-stream.md ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ingest_stream(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run("ingest-stream.md", tmp_path_factory.mktemp("ingest-stream"), timeout=240)


@pytest.mark.slow  # a page run as written, ~15-40 s: .ci/run runs it
def test_ingest_stream_keeps_each_good_event_once_and_replays_the_fixed_dead_letters(ingest_stream: Path) -> None:
    w = ingest_stream
    assert _json(w, "published.json")["published"] == 24
    ingested = _json(w, "ingested.json")
    assert (ingested["polled"], ingested["written"], ingested["duplicates"], ingested["dead_letters"]) == (24, 20, 1, 3)
    dead = _json(w, "dead.json")
    assert {(d["reason"], d["field"]) for d in dead["dead_letters"]} == {
        ("missing_required", "customer_id"), ("wrong_type", "placed_at"), ("wrong_type", "amount")}
    assert {json.loads(d["payload"])["order_id"] for d in dead["dead_letters"]} == {"o-20", "o-21", "o-22"}
    assert _json(w, "replayed.json") == {"schema": "orders", "accepted": 1, "duplicates": 0, "still_failing": 2}

    stored = pd.read_parquet(w / ".modelmill" / "offline" / "orders")
    assert sorted(stored["order_id"]) == sorted(f"o-{i}" for i in range(21))
    assert stored.set_index("order_id").loc["o-7", "amount"] == 17.0
    assert pd.isna(stored.set_index("order_id").loc["o-20", "customer_id"])


# --- alerts.md -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def alerts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run("alerts.md", tmp_path_factory.mktemp("alerts"))


@pytest.mark.slow
def test_alerts_fire_once_on_the_webhook_resolve_once_and_a_rule_without_data_stays_silent(alerts: Path) -> None:
    w = alerts
    received = [json.loads(line) for line in (w / "received.jsonl").read_text().splitlines()]
    assert [b["status"] for b in received] == ["firing", "resolved"]  # round 2 sent nothing
    firing, resolved = received
    assert firing["version"] == "4" and firing["groupLabels"] == {"alertname": "SlowPredictions"}
    [alert] = firing["alerts"]
    assert alert["labels"] == {"alertname": "SlowPredictions", "severity": "page", "model": "churn",
                               "variant": "default", "version": "1"}
    assert float(alert["annotations"]["value"]) > 0.001 and alert["endsAt"].startswith("0001-")
    assert resolved["alerts"][0]["fingerprint"] == alert["fingerprint"]
    assert not resolved["alerts"][0]["endsAt"].startswith("0001-")

    rounds = [_json(w, f"round{i}.json") for i in (1, 2, 3)]
    assert [[a["status"] for a in r["alerts_changed"]] for r in rounds] == [["firing"], [], ["resolved"]]
    assert all(a["rule"] != "AucDrop" for r in rounds for a in r["alerts_changed"] + r["alerts_active"])
    assert len((w / "alerts.log").read_text().splitlines()) == 2
