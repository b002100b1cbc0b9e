"""A feature the online store lacks is refused, defaulted by declaration, or flagged: never passed on silently.

Each case used to answer 200 with a prediction and no sign that anything was missing, for a model that takes
NaN: an unknown entity, an online store emptied (a Redis restart), and reads expired past a view's ttl.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from prometheus_client import REGISTRY
from starlette.testclient import TestClient

from modelmill.errors import InputError
from modelmill.features import Entity, FeatureService, FeatureStore, FeatureView, Field
from modelmill.project import Project
from modelmill.serving import FunctionModel, ModelServer, ServerConfig, StaticSource, create_app
from modelmill.store.kv import RedisKV

T0 = dt.datetime(2024, 3, 1, tzinfo=dt.UTC)
user = Entity(name="user", join_keys=["user_id"])
REFS = ["profile:age", "profile:score"]
POLICIES = {"strict": {}, "filled": {"on_missing": "default", "defaults": {"profile:age": 35, "profile:score": 0.1}},
            "partial": {"on_missing": "default", "defaults": {"profile:age": 35}},
            "lenient": {"on_missing": "allow"}}


def _nan_tolerant(X: np.ndarray) -> np.ndarray:
    """Like a gradient-boosted model, it scores NaN without complaint: the danger the policies guard against."""
    return np.nan_to_num(X[:, 0], nan=-1.0) * 0.01 + np.nan_to_num(X[:, 1], nan=-1.0)


def _setup(project: Project, online: Any = None) -> tuple[FeatureStore, ModelServer]:
    project.offline.write("profile", pa.table({"user_id": [1, 2], "ts": [T0, T0], "age": [30, 40],
                                               "score": [0.5, 0.25]}), time_column="ts")
    project.offline.write("recent", pa.table({"user_id": [1], "ts": [T0], "clicks": [3.0]}), time_column="ts")
    store = FeatureStore(project, online=online)
    store.apply([
        FeatureView(name="profile", entities=[user], source="profile", timestamp_field="ts",
                    fields=[Field("age", "int64"), Field("score", "float64")]),
        # written in 2024 with a one-hour ttl: every read today is expired
        FeatureView(name="recent", entities=[user], source="recent", timestamp_field="ts", ttl=dt.timedelta(hours=1),
                    fields=[Field("clicks", "float64")]),
        *[FeatureService(name=name, features=REFS, **policy) for name, policy in POLICIES.items()],
        FeatureService(name="stale", features=["recent:clicks"]),
        FeatureService(name="stale_lenient", features=["recent:clicks"], on_missing="allow"),
    ])
    store.materialize(T0 - dt.timedelta(days=1), T0 + dt.timedelta(days=1))
    models = [FunctionModel(name, 1, ["profile__age", "profile__score"], _nan_tolerant,
                            lineage={"feature_service": name}) for name in POLICIES]
    models.append(FunctionModel("stale", 1, ["recent__clicks"], lambda X: np.nan_to_num(X[:, 0]),
                                lineage={"feature_service": "stale"}))
    models.append(FunctionModel("stale_lenient", 1, ["recent__clicks"], lambda X: np.nan_to_num(X[:, 0], nan=-1.0),
                                lineage={"feature_service": "stale_lenient"}))
    source = StaticSource(models, aliases={f"{m.name}@production": 1 for m in models})
    server = ModelServer(source, config=ServerConfig(models=[f"{m.name}@production" for m in models], cache=False),
                         offline=project.offline, features=store)
    return store, server


@pytest.fixture
def client(project: Project) -> Iterator[tuple[TestClient, ModelServer]]:
    store, server = _setup(project)
    with TestClient(create_app(server)) as c:
        yield c, server
    store.close()


def _count(model: str, feature: str, reason: str) -> float:
    return REGISTRY.get_sample_value("modelmill_missing_features_total",
                                     {"model": model, "feature": feature, "reason": reason}) or 0.0


def _predict(c: TestClient, model: str, user_id: int) -> Any:
    return c.post(f"/v1/models/{model}/predict", json={"entities": {"user_id": user_id}})


def test_an_unknown_entity_is_refused_by_default(client: tuple[TestClient, ModelServer], project: Project) -> None:
    c, server = client
    before = _count("strict", "profile:age", "missing")
    r = _predict(c, "strict", 9)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert "'user_id': 9" in error and "missing profile:age, profile:score" in error and "on_missing" in error
    assert _predict(c, "strict", 2).json()["prediction"] == pytest.approx(0.4 + 0.25)  # a known one still works
    assert _count("strict", "profile:age", "missing") == before + 1
    assert server.predlog is not None
    server.predlog.flush()
    with project.offline.connect(["predictions"]) as con:
        rows = con.execute("SELECT status, error, missing, entities FROM predictions WHERE model = 'strict' "
                           "ORDER BY status DESC").fetchall()
    assert rows[0] == (422, "MissingFeatures", REFS, {"user_id": "9"})
    assert rows[1][0] == 200 and rows[1][2] is None and rows[1][3] == {"user_id": "2"}


def test_declared_defaults_fill_in_and_the_answer_says_so(client: tuple[TestClient, ModelServer]) -> None:
    c, _ = client
    r = _predict(c, "filled", 9)
    assert r.status_code == 200, r.text
    assert r.json()["prediction"] == pytest.approx(35 * 0.01 + 0.1) and r.json()["missing"] == REFS
    assert "missing" not in _predict(c, "filled", 1).json()
    # a missing feature without a declared default is refused as under "reject"
    r = _predict(c, "partial", 9)
    assert r.status_code == 422 and "missing profile:score" in r.json()["error"], r.text


def test_allow_passes_nan_and_lists_what_was_missing(client: tuple[TestClient, ModelServer]) -> None:
    c, _ = client
    before = _count("lenient", "profile:score", "missing")
    r = _predict(c, "lenient", 9)
    assert r.status_code == 200 and r.json()["missing"] == REFS
    assert r.json()["prediction"] == pytest.approx(-1.01)  # what the model makes of NaN
    assert _count("lenient", "profile:score", "missing") == before + 1


def test_expired_reads_are_refused_naming_them(client: tuple[TestClient, ModelServer]) -> None:
    c, _ = client
    before = _count("stale", "recent:clicks", "expired")
    r = _predict(c, "stale", 1)  # the value exists, but is older than the view's ttl
    assert r.status_code == 422 and "expired recent:clicks" in r.json()["error"], r.text
    assert _count("stale", "recent:clicks", "expired") == before + 1


def test_an_expired_value_allowed_through_is_nan_not_the_stale_value(client: tuple[TestClient, ModelServer]) -> None:
    c, _ = client
    r = _predict(c, "stale_lenient", 1)  # the stored value is 3.0, older than the view's ttl
    assert r.status_code == 200 and r.json()["missing"] == ["recent:clicks"], r.text
    assert r.json()["prediction"] == -1.0  # the model saw NaN, not the expired 3.0


def test_an_emptied_redis_online_store_is_refused(project: Project, redis_url: str, redis_prefix: str) -> None:
    import redis

    kv = RedisKV(redis_url, prefix=redis_prefix)
    store, server = _setup(project, online=kv)
    try:
        with TestClient(create_app(server)) as c:
            assert _predict(c, "strict", 1).status_code == 200
            client = redis.Redis.from_url(redis_url)  # what a restart without persistence leaves: nothing
            client.delete(*client.scan_iter(match=redis_prefix + "*"))
            client.close()
            r = _predict(c, "strict", 1)
            assert r.status_code == 422 and "missing profile:age, profile:score" in r.json()["error"], r.text
    finally:
        store.close()
        kv.close()


def test_policies_are_checked_when_defined() -> None:
    with pytest.raises(InputError, match="on_missing"):
        FeatureService(name="s", features=REFS, on_missing="ignore")
    with pytest.raises(InputError, match="does not have"):
        FeatureService(name="s", features=REFS, on_missing="default", defaults={"profile:zip": 1})
    with pytest.raises(InputError, match="must be a number"):
        FeatureService(name="s", features=REFS, on_missing="default", defaults={"profile:age": "x"})
