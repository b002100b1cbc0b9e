"""One contract suite for online lookups, run over the SQLite and the (real) Redis online store."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from modelmill.errors import InputError
from modelmill.features import (
    Entity,
    FeatureService,
    FeatureStore,
    FeatureView,
    Field,
    Status,
)
from modelmill.project import Project

T0 = dt.datetime(2024, 3, 1, tzinfo=dt.UTC)
user = Entity(name="user", join_keys=["user_id"])
merchant = Entity(name="merchant", join_keys=["merchant"])


def at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


def define(store: FeatureStore, project: Project) -> None:
    project.offline.write("profile", pa.table({
        "user_id": [1, 1, 2, 3],
        "ts": [at(0), at(10), at(5), at(1)],
        "age": [30, 31, 40, 50],
        "score": [0.5, 0.75, None, 0.1],
        "country": ["fr", "fr", "de", "nl"],
    }), time_column="ts")
    project.offline.write("pair", pa.table({
        "user_id": [1, 1], "merchant": ["m1", "m2"], "ts": [at(2), at(3)], "spend": [10.0, 20.0],
    }), time_column="ts")
    store.apply([
        FeatureView(name="profile", entities=[user], source="profile", timestamp_field="ts",
                    ttl=dt.timedelta(minutes=30),
                    fields=[Field("age", "int64"), Field("score", "float64"), Field("country", "string")]),
        FeatureView(name="pair", entities=[user, merchant], source="pair", timestamp_field="ts",
                    fields=[Field("spend", "float64")]),
        FeatureService(name="model_a", features=["profile:age", "profile:score", "pair:spend"]),
    ])


def test_materialize_then_lookup_values_statuses_and_times(store: FeatureStore, project: Project) -> None:
    define(store, project)
    [profile, pair] = sorted(store.materialize(at(0), at(20)), key=lambda r: r.view)[::-1]
    assert (profile.view, profile.rows) == ("profile", 3)
    assert pair.rows == 2
    rows = [{"user_id": 1, "merchant": "m2"}, {"user_id": 2, "merchant": "m1"}, {"user_id": 9, "merchant": "m1"}]
    r = store.get_online_features(rows, ["profile:age", "profile:score", "profile:country", "pair:spend"], at=at(20))
    assert r.values == [[31, 0.75, "fr", 20.0], [40, None, "de", None], [None, None, None, None]]
    assert r.statuses == [["present"] * 4, ["present", "missing", "present", "missing"], ["missing"] * 4]
    assert r.timestamps[0][0] == at(10) and r.timestamps[0][3] == at(3)
    assert r.to_dict()["values"]["profile:age"] == [31, 40, None]
    # ttl is judged at the lookup time: 30 minutes after 10:00 user 1 is still fresh, later it expires.
    later = store.get_online_features(rows[:1], ["profile:age", "pair:spend"], at=at(41))
    assert later.statuses == [["expired", "present"]] and later.values == [[None, 20.0]]


def test_online_vector_matches_get_online_features(store: FeatureStore, project: Project) -> None:
    define(store, project)
    store.materialize(at(0), at(20))
    rows = [{"user_id": u, "merchant": m} for u in (1, 2, 3, 4) for m in ("m1", "m2")]
    names = {s.name.lower(): s.value for s in Status}
    seen = set()
    # two views; one view in part and out of order; one feature
    for features in ("model_a", ["profile:score", "profile:age"], ["profile:age"]):
        for when in (20, 33, 45):
            values, codes = store.online_vector(rows, features, at=at(when))
            assert values.dtype == np.float64 and codes.dtype == np.int8
            ref = store.get_online_features(rows, features, at=at(when))
            assert values.shape == codes.shape == (8, len(ref.features))
            assert codes.tolist() == [[names[s] for s in row] for row in ref.statuses]
            want = np.array([[np.nan if v is None else float(v) for v in row] for row in ref.values])
            assert np.array_equal(values, want, equal_nan=True)
            seen.update(codes.ravel().tolist())
    assert seen == {Status.PRESENT, Status.MISSING, Status.EXPIRED}
    one, one_codes = store.online_vector([{"user_id": 1}], ["profile:score", "profile:age"], at=at(20))
    assert one.tolist() == [[0.75, 31.0]] and one_codes.tolist() == [[Status.PRESENT, Status.PRESENT]]


def test_online_vector_rejects_strings_and_rows_without_keys(store: FeatureStore, project: Project) -> None:
    define(store, project)
    with pytest.raises(InputError, match="numeric"):
        store.online_vector([{"user_id": 1}], ["profile:country"])
    with pytest.raises(InputError, match="join key 'user_id'"):
        store.online_vector([{"id": 1}], ["profile:age"])


def test_incremental_materialisation_resumes_and_older_ranges_never_overwrite(
        store: FeatureStore, project: Project) -> None:
    define(store, project)
    first = store.materialize_incremental(at(6), views=["profile"])
    assert [r.rows for r in first] == [3]  # users 1 (at 0), 2 (at 5), 3 (at 1)
    assert store.last_materialized()["profile"] == int(at(6).timestamp() * 1_000_000)
    assert store.online_vector([{"user_id": 1}], ["profile:age"], at=at(6))[0].tolist() == [[30.0]]
    second = store.materialize_incremental(at(20), views=["profile"])
    assert second[0].start == at(6) and second[0].rows == 1  # only user 1's 10:00 value is new
    assert store.online_vector([{"user_id": 1}], ["profile:age"], at=at(20))[0].tolist() == [[31.0]]
    store.materialize(at(0), at(1), views=["profile"])  # a backfill of an older range
    assert store.online_vector([{"user_id": 1}], ["profile:age"], at=at(20))[0].tolist() == [[31.0]]


def test_online_value_at_t_equals_training_value_at_t(store: FeatureStore, project: Project) -> None:
    rng = np.random.default_rng(11)
    n = 3000
    ts = T0 + pd.to_timedelta(rng.integers(0, 6 * 3600, n), unit="s")
    frame = pd.DataFrame({"user_id": rng.integers(0, 200, n), "ts": ts, "x": rng.normal(size=n)})
    frame = frame.drop_duplicates(["user_id", "ts"])
    project.offline.write("events", pa.Table.from_pandas(frame, preserve_index=False), time_column="ts")
    store.apply([FeatureView(name="ev", entities=[user], source="events", timestamp_field="ts",
                             ttl=dt.timedelta(minutes=20), fields=[Field("x", "float64")])])
    rows = [{"user_id": u} for u in range(210)]
    for hours in (1, 3, 6):
        t = T0 + dt.timedelta(hours=hours)
        store.materialize_incremental(t)
        online, _ = store.online_vector(rows, ["ev:x"], at=t)
        train = store.get_training_set(pd.DataFrame({"user_id": range(210), "event_timestamp": [t] * 210}), ["ev:x"])
        assert np.array_equal(online[:, 0], train["x"].to_numpy(dtype=float), equal_nan=True)


def test_plans_are_cached_and_refreshed_after_apply(store: FeatureStore, project: Project) -> None:
    define(store, project)
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
