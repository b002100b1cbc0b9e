"""The feature-backed route: entity keys in, features from the online store (SQLite and real Redis), prediction out."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from starlette.testclient import TestClient

from modelmill.features import Entity, FeatureService, FeatureStore, FeatureView, Field
from modelmill.project import Project
from modelmill.serving import FunctionModel, ModelServer, ServerConfig, StaticSource, create_app
from modelmill.serving.predict import FeaturePlan
from modelmill.store.kv import RedisKV

T0 = dt.datetime(2024, 3, 1, tzinfo=dt.UTC)
user = Entity(name="user", join_keys=["user_id"])
# Columns name features three ways: "view__feature", a unique feature name, and a request-time feature.
COLUMNS = ["profile__age", "score", "amount"]
WEIGHTS = np.array([0.01, 1.0, 0.001])


def define(store: FeatureStore, project: Project) -> None:
    project.offline.write("profile", pa.table({
        "user_id": [1, 2, 3], "ts": [T0, T0, T0], "age": [30, 40, 50], "score": [0.5, 0.25, None],
    }), time_column="ts")
    store.apply([
        FeatureView(name="profile", entities=[user], source="profile", timestamp_field="ts",
                    fields=[Field("age", "int64"), Field("score", "float64")]),
        FeatureService(name="risk", features=["profile:age", "profile:score"]),
    ])
    store.materialize(T0 - dt.timedelta(days=1), T0 + dt.timedelta(days=1))


@pytest.fixture(params=["sqlite", "redis"])
def client(request: pytest.FixtureRequest, project: Project) -> Iterator[tuple[TestClient, Project]]:
    kv = None
    if request.param == "redis":
        kv = RedisKV(request.getfixturevalue("redis_url"), prefix=request.getfixturevalue("redis_prefix"))
    store = FeatureStore(project, online=kv)
    define(store, project)
    risk = FunctionModel("risk", 4, COLUMNS, lambda X: X @ WEIGHTS, lineage={"feature_service": "risk"})
    bare = FunctionModel("bare", 1, ["a", "b"], lambda X: X[:, 0] - X[:, 1])
    source = StaticSource([risk, bare], aliases={"risk@production": 4, "bare@production": 1})
    server = ModelServer(source, config=ServerConfig(models=["risk@production", "bare@production"]),
                         offline=project.offline, features=store)
    with TestClient(create_app(server)) as c:
        yield c, project
    store.close()
    if kv is not None:
        kv.close()


def test_plan_maps_columns_to_feature_refs() -> None:
    plan = FeaturePlan(COLUMNS, ["profile:age", "profile:score"], ["user_id"], "risk")
    assert plan.refs == ["profile:age", "profile:score"]
    assert plan.ref_pos.tolist() == [0, 1]
    assert plan.request_columns == ["amount"]
    # an ambiguous bare name (two views with "score") must come from the request
    plan = FeaturePlan(["score"], ["a:score", "b:score"])
    assert plan.request_columns == ["score"]


def test_predict_reads_the_online_store(client: tuple[TestClient, Project]) -> None:
    c, project = client
    r = c.post("/v1/models/risk/predict", json={"entities": {"user_id": 2}, "features": {"amount": 100},
                                                "routing_key": "u2"})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["prediction"] == pytest.approx(40 * 0.01 + 0.25 + 100 * 0.001)
    assert (doc["model"], doc["version"], doc["variant"]) == ("risk", 4, "default")
    assert isinstance(doc["request_id"], str) and doc["request_id"]
    # the routing key may come as a header too; request ids are unique
    r2 = c.post("/v1/models/risk/predict", json={"entities": {"user_id": 1}, "features": {"amount": 0}},
                headers={"x-routing-key": "u1"})
    assert r2.status_code == 200 and r2.json()["request_id"] != doc["request_id"]
    assert r2.json()["prediction"] == pytest.approx(0.3 + 0.5)
    c.app.state.server.predlog.flush()  # type: ignore[attr-defined]
    logged = project.offline.read("predictions", where="model = 'risk'").to_pylist()
    by_key = {row["routing_key"]: row for row in logged}
    assert by_key["u2"]["request_id"] == doc["request_id"]
    assert dict(by_key["u2"]["features"]) == {"profile__age": 40.0, "score": 0.25,
                                                                  "amount": 100.0}


@pytest.mark.parametrize(("body", "status", "needle"), [
    ({"features": {"amount": 1}}, 400, "entities"),
    ({"entities": {"user": 1}, "features": {"amount": 1}}, 400, "user_id"),
    ({"entities": {"user_id": 1}}, 400, "amount"),
    ({"entities": {"user_id": 1}, "features": {"amount": 1, "zip": 2}}, 400, "features.zip"),
    ({"entities": {"user_id": 1}, "features": {"amount": "x"}}, 400, "features.amount"),
    ({"entities": {"user_id": [1]}, "features": {"amount": 1}}, 400, "entities.user_id"),
    # user 3 has no score, user 9 nothing at all: the model cannot score NaN, and the answer says why
    ({"entities": {"user_id": 3}, "features": {"amount": 1}}, 422, "profile:score"),
    ({"entities": {"user_id": 9}, "features": {"amount": 1}}, 422, "profile:age, profile:score"),
])
def test_predict_errors_name_the_field(client: tuple[TestClient, Project], body: dict[str, Any], status: int,
                                       needle: str) -> None:
    c, _ = client
    r = c.post("/v1/models/risk/predict", json=body)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]


def test_model_without_feature_service_takes_request_features(client: tuple[TestClient, Project]) -> None:
    c, _ = client
    r = c.post("/v1/models/bare/predict", json={"entities": {}, "features": {"a": 5, "b": 2}})
    assert r.status_code == 200 and r.json()["prediction"] == 3.0
    assert c.post("/v1/models/nope/predict", json={"entities": {}}).status_code == 404


def test_instances_are_each_predicted_as_if_sent_alone(client: tuple[TestClient, Project]) -> None:
    c, _ = client
    instances = [{"entities": {"user_id": u}, "features": {"amount": 10 * u}, "routing_key": f"u{u}"}
                 for u in (1, 2, 3)]
    instances.append({"entities": {"user_id": 1}})  # lacks a request-time feature: its own 400
    r = c.post("/v1/models/risk/predict", json={"instances": instances})
    assert r.status_code == 200, r.text
    out = r.json()["predictions"]
    assert len(out) == 4
    for u, got in zip((1, 2), out[:2], strict=True):
        alone = c.post("/v1/models/risk/predict", json=instances[u - 1]).json()
        assert got["prediction"] == pytest.approx(alone["prediction"]) and got["version"] == 4
    assert out[0]["request_id"] != out[1]["request_id"]
    # user 3 has no score online: that instance fails alone, as it would if sent alone
    assert out[2]["status"] == 422 and "score" in out[2]["error"]
    assert out[3]["status"] == 400 and "amount" in out[3]["error"]
    bad = c.post("/v1/models/risk/predict", json={"instances": []})
    assert bad.status_code == 400 and "instances" in bad.json()["error"]
    nested = c.post("/v1/models/risk/predict", json={"instances": [{"entities": {"user_id": True}}]})
    assert nested.status_code == 400 and "instances[0].entities.user_id" in nested.json()["error"]
