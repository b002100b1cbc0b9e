"""The production tutorial (docs/tutorials/production.md), run as written against the real servers.

PostgreSQL (127.0.0.1:5432), Redis (6379) and NATS JetStream (4222) must answer, and moto's ``moto_server``
must be on the PATH (the page starts it as its S3); without them the test skips, or fails under
``MODELMILL_REQUIRE_SERVICES=1``. What is checked is read from the files the page wrote and from the
backends themselves (S3 through s3fs, Redis, PostgreSQL), never through modelmill.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tests.conftest import need, need_service
from tests.tutorials.runner import free_port, run_page

PAGE = Path(__file__).resolve().parents[2] / "docs" / "tutorials" / "production.md"
# four servers, a training and ~20 commands (1-4 min on a shared machine): .ci/run runs it
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tutorial(tmp_path_factory: pytest.TempPathFactory) -> Path:
    for name, port in (("PostgreSQL", 5432), ("Redis", 6379), ("NATS", 4222)):
        need_service(name, "127.0.0.1", port)
    need(shutil.which("moto_server"), "moto_server is not on the PATH", "pip install 'moto[server]'")
    need(shutil.which("psql") and shutil.which("redis-cli"), "psql or redis-cli is not on the PATH")
    workdir = tmp_path_factory.mktemp("production")
    done = run_page(PAGE, workdir, port=free_port(), timeout=600)
    assert done.returncode == 0, f"the tutorial failed (exit {done.returncode}):\n{done.stdout[-6000:]}"
    return workdir


def _json(workdir: Path, name: str) -> Any:
    return json.loads((workdir / name).read_text())


def test_doctor_finds_every_backend_on_its_server(tutorial: Path) -> None:
    doctor = _json(tutorial, "doctor.json")
    assert doctor["ok"] is True
    backends = doctor["backends"]
    assert {k: b["ok"] for k, b in backends.items()} == {k: True for k in ("db", "online", "cache", "broker",
                                                                             "artifacts", "offline")}
    assert backends["db"]["url"].startswith("postgresql://") and backends["db"]["schema_current"]
    assert backends["broker"]["jetstream"] is True
    assert (backends["offline"]["protocol"], backends["artifacts"]["protocol"]) == ("s3", "s3")


def test_events_through_nats_land_once_each_on_s3_and_their_latest_values_in_redis(tutorial: Path) -> None:
    w = tutorial
    apps = pd.read_csv(w / "applications.csv", parse_dates=["applied_at"])
    assert _json(w, "published.json")["published"] == len(apps) == 2000
    ingested = _json(w, "ingested.json")
    # a rerun of the page publishes the same events again on the same stream: they come back as duplicates
    assert ingested["written"] == 2000 and ingested["dead_letters"] == 0
    assert ingested["polled"] == ingested["written"] + ingested["duplicates"]
    [materialized] = _json(w, "materialized.json")["materialized"]
    assert materialized["rows"] == apps["customer_id"].nunique()

    latest = apps[apps["customer_id"] == 42].sort_values("applied_at").iloc[-1]
    online = _json(w, "online.json")["features"]
    assert online["profile:income"]["value"] == latest["income"]
    assert online["profile:debt_ratio"]["value"] == latest["debt_ratio"]
    assert online["profile:late_payments"]["value"] == latest["late_payments"]

    where = _json(w, "where.json")
    assert where["s3"]["offline/applications"] == apps["applied_at"].dt.date.nunique()
    assert where["redis_online_keys"] >= apps["customer_id"].nunique()
    assert {"model_versions", "model_aliases", "feature_definitions"} <= set(where["postgres_tables"]), where["postgres_tables"]


def test_the_model_is_trained_on_s3_data_gated_and_served_from_redis_features(tutorial: Path) -> None:
    w = tutorial
    train = _json(w, "train.json")
    assert train["model_version"] == "credit@1" and train["feature_service"] == "credit"
    assert len(pd.read_parquet(w / "train.parquet")) == 1600
    gate = _json(w, "gate.json")
    assert gate["accepted"] and gate["rows"] == 400
    answers = [json.loads(line) for line in (w / "predictions.jsonl").read_text().splitlines() if line]
    assert [(a["request_id"], a["version"]) for a in answers] == [("app-42", 1), ("app-7", 1), ("app-301", 1)]
    assert all(0.0 <= a["prediction"] <= 1.0 for a in answers)
    assert _json(w, "where.json")["s3"]["offline/predictions"] >= 1  # the log the server flushed on stop
    assert _json(w, "where.json")["s3"]["artifacts/models"] == 1
