"""The feature how-tos (docs/howto/define-features.md, training-set.md), each run as written: CLI only.

What the commands wrote is checked against the page's own data: the online values are each customer's
latest snapshot, judged by the view's ttl at the read's time, and the training set is the point-in-time
join recomputed here with pandas (latest value at or before each row's time, within the ttl). This module
imports nothing from modelmill.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tests.tutorials.runner import read_json as _json
from tests.tutorials.runner import run_howto as _run

# each page is a handful of CLI commands (15-60 s on a shared machine): .ci/run runs them
pytestmark = pytest.mark.slow




# --- define-features.md --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def define_features(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run("define-features.md", tmp_path_factory.mktemp("define-features"))


def _versions(applied: dict[str, Any]) -> dict[str, tuple[int, bool]]:
    return {a["name"]: (a["version"], a["changed"]) for a in applied["applied"]}


def test_definitions_are_versioned_and_only_a_changed_one_gets_a_new_version(define_features: Path) -> None:
    w = define_features
    assert _versions(_json(w, "applied.json")) == {"customer": (1, True), "account": (1, True), "support": (1, True)}
    assert _versions(_json(w, "again.json")) == {"customer": (1, False), "account": (1, False),
                                                 "support": (1, False)}
    assert _versions(_json(w, "changed.json")) == {"customer": (1, False), "account": (2, True),
                                                   "support": (1, False)}
    stored = {d["name"]: d["spec"] for d in _json(w, "definitions.json")["definitions"]}
    assert stored["account"]["ttl"] == 7 * 86400.0
    assert stored["support"]["on_missing"] == "default" and stored["support"]["defaults"] == [["account:open_tickets", 0.0]]
    assert "dtype" in (w / "refused.txt").read_text() and "decimal" in (w / "refused.txt").read_text()


def test_the_online_store_answers_each_customers_latest_snapshot_judged_by_the_ttl(define_features: Path) -> None:
    w = define_features
    accounts = pd.read_parquet(w / "accounts.parquet")
    latest = accounts.sort_values("updated_at").groupby("customer_id").last()
    [materialized] = _json(w, "materialized.json")["materialized"]
    assert materialized["view"] == "account" and materialized["rows"] == len(latest)

    for name, ttl_days in (("online.json", 7), ("after.json", 1)):
        online = _json(w, name)
        at = pd.Timestamp(online["at"])
        row = latest.loc["c7"]
        fresh = row["updated_at"] >= at - pd.Timedelta(days=ttl_days)
        for feature, column in (("account:balance", "balance"), ("account:open_tickets", "open_tickets")):
            answer = online["features"][feature]
            assert pd.Timestamp(answer["event_time"]) == row["updated_at"]
            assert answer["status"] == ("present" if fresh else "expired"), (name, answer)
            assert answer["value"] == (row[column] if fresh else None)
        assert online["missing"] == ([] if fresh else ["account:balance", "account:open_tickets"])

    unknown = _json(w, "unknown.json")
    assert {f["status"] for f in unknown["features"].values()} == {"missing"}
    assert all(f["value"] is None for f in unknown["features"].values())


# --- training-set.md -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def training_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run("training-set.md", tmp_path_factory.mktemp("training-set"))


def test_the_training_set_is_the_point_in_time_join_within_the_ttl(training_set: Path) -> None:
    w = training_set
    accounts = pd.read_parquet(w / "accounts.parquet").sort_values("updated_at")
    outcomes = pd.read_csv(w / "outcomes.csv", parse_dates=["event_timestamp"])
    order = outcomes.assign(row=range(len(outcomes))).sort_values("event_timestamp")
    expected = pd.merge_asof(order, accounts, left_on="event_timestamp", right_on="updated_at", by="customer_id",
                             direction="backward", tolerance=pd.Timedelta(days=3), allow_exact_matches=True)
    expected = expected.sort_values("row").reset_index(drop=True)

    built = pd.read_parquet(w / "train.parquet")
    assert list(built.columns) == ["customer_id", "event_timestamp", "churned", "balance", "open_tickets"]
    assert list(built["customer_id"]) == list(outcomes["customer_id"])  # no row dropped, order kept
    assert list(built["churned"]) == list(outcomes["churned"])
    for column in ("balance", "open_tickets"):
        pd.testing.assert_series_equal(built[column].astype(float), expected[column].astype(float),
                                       check_names=False)
    summary = _json(w, "training_set.json")
    assert summary["rows"] == 300
    assert summary["empty"] == {c: int(expected[c].isna().sum()) for c in ("balance", "open_tickets")}
    assert 0 < summary["empty"]["balance"] < 300  # the page has rows of both kinds

    full = pd.read_csv(w / "train_full.csv")
    assert list(full.columns) == ["customer_id", "event_timestamp", "churned", "account__balance",
                                  "account__open_tickets"]
    pd.testing.assert_series_equal(full["account__balance"], built["balance"].astype(float), check_names=False)
