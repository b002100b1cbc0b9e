"""One contract suite for online lookups (modelmill.testing.check_online_store), run over the SQLite and the (real)
Redis online store; then what the feature store does beside it."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pytest

from modelmill.features import Entity, FeatureService, FeatureStore, FeatureView, Field
from modelmill.project import Project
from modelmill.store import KeyValue, RedisKV, SQLiteKV
from modelmill.testing import ONLINE_CHECKS, check_online_store
from modelmill.testing.online import T0, define_views


@pytest.fixture
def make_online(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], KeyValue]:
    """New, empty online stores: a SQLite file as the project's own, or real Redis under the test's prefix."""
    if backend == "redis":
        url = request.getfixturevalue("redis_url")
        prefix = request.getfixturevalue("redis_prefix")
        return lambda: RedisKV(url, prefix=f"{prefix}{uuid.uuid4().hex[:8]}:")
    return lambda: SQLiteKV(tmp_path / f"online-{uuid.uuid4().hex[:8]}.db", table="online")


@pytest.mark.parametrize("check", list(ONLINE_CHECKS))
def test_online_store_contract(make_online: Callable[[], KeyValue], check: str) -> None:
    check_online_store(make_online, checks=[check])


def test_plans_are_cached_and_refreshed_after_apply(store: FeatureStore) -> None:
    define_views(store)
    store.online_vector([{"user_id": 1}], ["profile:age"])
    plan = store._plans[("profile:age",)]
    store.online_vector([{"user_id": 2}], ["profile:age"])
    assert store._plans[("profile:age",)] is plan
    store.apply([FeatureService(name="model_b", features=["profile:age"])])
    assert not store._plans


def test_partition_pruning_reads_only_the_range_and_changes_nothing(project: Project) -> None:
    days = [T0 + dt.timedelta(days=d, hours=h) for d in range(5) for h in (1, 13)]
    project.offline.write("obs", pa.table({"site": ["a", "b"] * 5, "ts": days, "v": [float(i) for i in range(10)]}),
                          time_column="ts")
    site = Entity(name="site", join_keys=["site"])
    results = {}
    for pruned in (False, True):
        store = FeatureStore(project, online=None)
        name = f"obs_{int(pruned)}"
        store.apply([FeatureView(name=name, entities=[site], source="obs", timestamp_field="ts",
                                 fields=[Field("v", "float64")], partitioned_by_timestamp=pruned)])
        [res] = store.materialize(T0 + dt.timedelta(days=1), T0 + dt.timedelta(days=2, hours=12), views=[name])
        vals = store.get_online_features([{"site": "a"}, {"site": "b"}], [f"{name}:v"],
                                         at=T0 + dt.timedelta(days=3)).values
        results[pruned] = (res.rows, vals)
        store.close()
    # days 1 and 2: a at 01:00 of day 2 (v=4), b at 13:00 of day 1 (v=3); day 2's 13:00 row is past the end
    assert results[True] == results[False] == (2, [[4.0], [3.0]])
