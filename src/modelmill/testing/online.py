"""The contract of the online feature store over a key-value backend: what a model reads at serving time.

Each sub-check runs in a fresh scratch project (embedded defaults in a temporary folder) whose feature store
reads and writes ``make_online()``, a new and empty :class:`~modelmill.store.KeyValue`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable

import numpy as np
import pandas as pd
import pyarrow as pa

from modelmill.errors import InputError
from modelmill.features import Entity, FeatureService, FeatureStore, FeatureView, Field, Status
from modelmill.store import KeyValue
from modelmill.testing.base import expect, run_checks, scratch_project
from modelmill.testing.kv import on_fresh_store

__all__ = ["ONLINE_CHECKS", "T0", "at", "check_online_store", "define_views"]

T0 = dt.datetime(2024, 3, 1, tzinfo=dt.UTC)
_USER = Entity(name="user", join_keys=("user_id",))
_MERCHANT = Entity(name="merchant", join_keys=("merchant",))


def at(minutes: float) -> dt.datetime:
    """``minutes`` after :data:`T0`."""
    return T0 + dt.timedelta(minutes=minutes)


def define_views(store: FeatureStore) -> None:
    """Write two small tables and apply the views over them: ``profile`` (user; ttl 30 min; age, score,
    country), ``pair`` (user and merchant; spend) and the service ``model_a``."""
    offline = store.project.offline
    offline.write("profile", pa.table({
        "user_id": [1, 1, 2, 3],
        "ts": [at(0), at(10), at(5), at(1)],
        "age": [30, 31, 40, 50],
        "score": [0.5, 0.75, None, 0.1],
        "country": ["fr", "fr", "de", "nl"],
    }), time_column="ts")
    offline.write("pair", pa.table({
        "user_id": [1, 1], "merchant": ["m1", "m2"], "ts": [at(2), at(3)], "spend": [10.0, 20.0],
    }), time_column="ts")
    store.apply([
        FeatureView(name="profile", entities=(_USER,), source="profile", timestamp_field="ts",
                    ttl=dt.timedelta(minutes=30),
                    fields=(Field("age", "int64"), Field("score", "float64"), Field("country", "string"))),
        FeatureView(name="pair", entities=(_USER, _MERCHANT), source="pair", timestamp_field="ts",
                    fields=(Field("spend", "float64"),)),
        FeatureService(name="model_a", features=("profile:age", "profile:score", "pair:spend")),
    ])


def _lookups(store: FeatureStore) -> None:
    """a lookup gives each row's newest value, its status (present, missing, expired by ttl) and its time"""
    define_views(store)
    results = {r.view: r.rows for r in store.materialize(at(0), at(20))}
    expect(results == {"profile": 3, "pair": 2}, f"materialize wrote {results}, want profile 3 and pair 2 rows")
    rows = [{"user_id": 1, "merchant": "m2"}, {"user_id": 2, "merchant": "m1"}, {"user_id": 9, "merchant": "m1"}]
    r = store.get_online_features(rows, ["profile:age", "profile:score", "profile:country", "pair:spend"], at=at(20))
    want = [[31, 0.75, "fr", 20.0], [40, None, "de", None], [None, None, None, None]]
    expect(r.values == want, f"values are {r.values}, want {want}")
    statuses = [["present"] * 4, ["present", "missing", "present", "missing"], ["missing"] * 4]
    expect(r.statuses == statuses, f"statuses are {r.statuses}, want {statuses}")
    expect(r.timestamps[0][0] == at(10) and r.timestamps[0][3] == at(3),
           f"event times of row 0 are {r.timestamps[0]}, want {at(10)} and {at(3)}")
    expect(r.to_dict()["values"]["profile:age"] == [31, 40, None], "to_dict() does not carry the values")
    # ttl is judged at the lookup time: 30 minutes after 10:00 user 1 is still fresh, later it expires
    later = store.get_online_features(rows[:1], ["profile:age", "pair:spend"], at=at(41))
    expect(later.statuses == [["expired", "present"]] and later.values == [[None, 20.0]],
           f"41 min in, a value with a 30 min ttl read {later.values} / {later.statuses}")


def _vector_matches(store: FeatureStore) -> None:
    """online_vector gives the same values and status codes as get_online_features, as float64 and int8"""
    define_views(store)
    store.materialize(at(0), at(20))
    rows = [{"user_id": u, "merchant": m} for u in (1, 2, 3, 4) for m in ("m1", "m2")]
    names = {s.name.lower(): s.value for s in Status}
    seen: set[int] = set()
    # two views; one view in part and out of order; one feature
    for features in ("model_a", ["profile:score", "profile:age"], ["profile:age"]):
        for when in (20, 33, 45):
            values, codes = store.online_vector(rows, features, at=at(when))
            expect(values.dtype == np.float64 and codes.dtype == np.int8,
                   f"online_vector gave {values.dtype} / {codes.dtype}, want float64 / int8")
            ref = store.get_online_features(rows, features, at=at(when))
            expect(values.shape == codes.shape == (8, len(ref.features)),
                   f"shapes {values.shape} / {codes.shape} for 8 rows of {len(ref.features)} features")
            expect(codes.tolist() == [[names[s] for s in row] for row in ref.statuses],
                   f"status codes of {features} at {when} min differ from get_online_features")
            want = np.array([[np.nan if v is None else float(v) for v in row] for row in ref.values])
            expect(np.array_equal(values, want, equal_nan=True),
                   f"values of {features} at {when} min differ from get_online_features")
            seen.update(codes.ravel().tolist())
    expect(seen == {Status.PRESENT, Status.MISSING, Status.EXPIRED}, f"saw status codes {seen}, want all three")
    one, one_codes = store.online_vector([{"user_id": 1}], ["profile:score", "profile:age"], at=at(20))
    expect(one.tolist() == [[0.75, 31.0]] and one_codes.tolist() == [[Status.PRESENT, Status.PRESENT]],
           f"one row read {one.tolist()} / {one_codes.tolist()}")


def _rejects_bad_rows(store: FeatureStore) -> None:
    """online_vector refuses a string feature and a row without its join key, naming them"""
    define_views(store)
    for features, row, words in ((["profile:country"], {"user_id": 1}, "numeric"),
                                 (["profile:age"], {"id": 1}, "join key 'user_id'")):
        try:
            store.online_vector([row], features)
        except InputError as exc:
            expect(words in str(exc), f"the InputError for {features} of {row} does not say {words!r}: {exc}")
        else:
            raise AssertionError(f"online_vector({[row]}, {features}) raised no InputError")


def _incremental(store: FeatureStore) -> None:
    """incremental materialisation resumes where it stopped, and an older range never overwrites a newer value"""
    define_views(store)

    def age(minutes: float) -> list[list[float]]:
        values: list[list[float]] = store.online_vector([{"user_id": 1}], ["profile:age"], at=at(minutes))[0].tolist()
        return values

    first = [r.rows for r in store.materialize_incremental(at(6), views=["profile"])]
    expect(first == [3], f"the first incremental run wrote {first} rows, want [3]")
    mark = store.last_materialized().get("profile")
    expect(mark == int(at(6).timestamp() * 1_000_000), f"last_materialized() is {mark}, want the end of the run")
    expect(age(6) == [[30.0]], f"user 1's age after the first run is {age(6)}, want [[30.0]]")
    second = store.materialize_incremental(at(20), views=["profile"])
    expect(second[0].start == at(6) and second[0].rows == 1,
           f"the second run covered from {second[0].start} with {second[0].rows} rows, want from {at(6)} with 1")
    expect(age(20) == [[31.0]], f"user 1's age after the second run is {age(20)}, want [[31.0]]")
    store.materialize(at(0), at(1), views=["profile"])  # a backfill of an older range
    expect(age(20) == [[31.0]], f"a backfill of an older range overwrote user 1's age: {age(20)}")


def _online_equals_training(store: FeatureStore) -> None:
    """the value read online at time t equals the value the point-in-time training join gives at t"""
    rng = np.random.default_rng(11)
    n = 3_000
    ts = T0 + pd.to_timedelta(rng.integers(0, 6 * 3600, n), unit="s")
    frame = pd.DataFrame({"user_id": rng.integers(0, 200, n), "ts": ts, "x": rng.normal(size=n)})
    frame = frame.drop_duplicates(["user_id", "ts"])
    store.project.offline.write("events", pa.Table.from_pandas(frame, preserve_index=False), time_column="ts")
    store.apply([FeatureView(name="ev", entities=(_USER,), source="events", timestamp_field="ts",
                             ttl=dt.timedelta(minutes=20), fields=(Field("x", "float64"),))])
    rows = [{"user_id": u} for u in range(210)]
    for hours in (1, 3, 6):
        t = T0 + dt.timedelta(hours=hours)
        store.materialize_incremental(t)
        online, _ = store.online_vector(rows, ["ev:x"], at=t)
        train = store.get_training_set(pd.DataFrame({"user_id": range(210), "event_timestamp": [t] * 210}), ["ev:x"])
        differ = int((~np.isclose(online[:, 0], train["x"].to_numpy(dtype=float), equal_nan=True, rtol=0,
                                  atol=0)).sum())
        expect(differ == 0, f"{differ} of 210 users read online at {hours} h differ from the training set")


ONLINE_CHECKS: dict[str, Callable[[FeatureStore], None]] = {
    "lookups": _lookups,
    "vector_matches": _vector_matches,
    "rejects_bad_rows": _rejects_bad_rows,
    "incremental": _incremental,
    "online_equals_training": _online_equals_training,
}


def _in_scratch_project(fn: Callable[[FeatureStore], None]) -> Callable[[Callable[[], KeyValue]], None]:
    def run(kv: KeyValue) -> None:
        with scratch_project() as project:
            store = FeatureStore(project, online=kv)
            try:
                fn(store)
            finally:
                store.close()
    run.__doc__ = fn.__doc__
    return on_fresh_store(run)


def check_online_store(make_online: Callable[[], KeyValue], *, checks: Iterable[str] | None = None) -> None:
    """Check the online feature store over a key-value backend (sub-checks: :data:`ONLINE_CHECKS`).

    ``make_online()`` gives a new, empty store each time; the check closes it. Pass :func:`check_kv` first:
    this check is about what the feature store builds on it (statuses, ttl, incremental materialisation, and
    online values equal to training values).
    """
    run_checks("check_online_store", {name: _in_scratch_project(fn) for name, fn in ONLINE_CHECKS.items()}, checks, make_online)
