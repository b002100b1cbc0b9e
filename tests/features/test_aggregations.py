"""Streaming aggregates: exact against raw events, once per event id, safe under concurrent consumers."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import random
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from modelmill.config import Settings
from modelmill.features import Aggregation, Entity, FeatureStore, StreamAggregation
from modelmill.features.aggregations import brute_force, events_from_batch
from modelmill.project import Project
from modelmill.store.kv import RedisKV

T0 = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)
user = Entity(name="user", join_keys=["user_id"])
CLICKS = StreamAggregation(
    name="click_stats", entities=[user], stream="clicks", timestamp_field="ts", event_id_field="event_id",
    aggregations=[Aggregation(column=None, function="count", windows=["1h", "24h"]),
                  Aggregation(column="amount", function="sum", windows=["1h"]),
                  Aggregation(column="amount", function="mean", windows=["1h", "24h"]),
                  Aggregation(column="amount", function="min", windows=["24h"]),
                  Aggregation(column="amount", function="max", windows=["24h"]),
                  Aggregation(column="amount", function="last", windows=["1h", "7d"])],
    buckets_per_window=12,
)


def make_events(n: int, seed: int, users: int = 6, span_s: int = 2 * 86400) -> pa.Table:
    rng = np.random.default_rng(seed)
    amount = rng.integers(-100, 100, n).astype(float) / 4  # exact in binary: sums do not depend on order
    amount[rng.random(n) < 0.1] = np.nan
    ts = T0 + pd.to_timedelta(np.sort(rng.integers(0, span_s, n)), unit="s")
    return pa.table({
        "event_id": [f"e{seed}-{i}" for i in range(n)],
        "user_id": rng.integers(0, users, n),
        "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
        "amount": pa.array(amount, pa.float64(), from_pandas=True),
    })


def check(store: FeatureStore, events: pa.Table, at: dt.datetime, users: int = 7) -> None:
    raw = events_from_batch(CLICKS, events)
    at_us = int(at.timestamp() * 1_000_000)
    refs = [f"click_stats:{f}" for f in CLICKS.feature_names]
    got = store.get_online_features([{"user_id": u} for u in range(users)], refs, at=at)
    vec, _ = store.online_vector([{"user_id": u} for u in range(users)], refs, at=at)
    for u in range(users):
        # A user never seen has had no events in any window: counts 0, the rest undefined, as offline.
        for j, f in enumerate(CLICKS.feature_names):
            want = brute_force(CLICKS, raw, str(u), f, at_us)
            assert got.values[u][j] == pytest.approx(want), (u, f)
            assert vec[u, j] == pytest.approx(np.nan if want is None else want, nan_ok=True), (u, f)


def test_aggregates_equal_raw_events_in_any_order_and_with_redelivery(store: FeatureStore) -> None:
    store.apply([CLICKS])
    events = make_events(600, seed=1)
    proc = store.stream_processor()
    order = list(range(events.num_rows))
    random.Random(5).shuffle(order)
    shuffled = events.take(order)
    for start in range(0, shuffled.num_rows, 97):  # out of order, in uneven micro-batches
        proc.process("clicks", shuffled.slice(start, 97))
    proc.process("clicks", events.slice(100, 200))  # redelivered: must not count twice
    proc.process("other", events)  # a stream nobody aggregates
    end = T0 + dt.timedelta(days=2)
    for at in (end, end + dt.timedelta(minutes=30), end + dt.timedelta(hours=3)):
        check(store, events, at)


def test_old_events_beyond_the_longest_window_are_dropped_whatever_the_order(store: FeatureStore) -> None:
    agg = StreamAggregation(name="tiny", entities=[user], stream="s", timestamp_field="ts", event_id_field="event_id",
                            aggregations=[Aggregation(column=None, function="count", windows=["1h"])],
                            buckets_per_window=4)
    store.apply([agg])
    events = pa.table({"event_id": ["a", "b", "c"], "user_id": [1, 1, 1],
                       "ts": pa.array([T0, T0 + dt.timedelta(hours=5), T0 + dt.timedelta(hours=5, minutes=1)],
                                      pa.timestamp("us", tz="UTC"))})
    store.aggregates.apply(agg, events_from_batch(agg, events.slice(1)))
    store.aggregates.apply(agg, events_from_batch(agg, events.slice(0, 1)))  # far too old: skipped
    at = T0 + dt.timedelta(hours=5, minutes=2)
    assert store.get_online_features([{"user_id": 1}], ["tiny:count_1h"], at=at).values == [[2]]


def _consumer(settings: Settings, redis: tuple[str, str] | None, seed: int, events: pa.Table) -> int:
    """One of several consumers sharing a stream; every event is delivered to each of them."""
    with Project(settings) as project:
        kv = RedisKV(redis[0], prefix=redis[1]) if redis else None
        store = FeatureStore(project, online=kv)
        order = list(range(events.num_rows))
        random.Random(seed).shuffle(order)
        shuffled = events.take(order)
        new = 0
        for start in range(0, shuffled.num_rows, 25):
            new += store.aggregates.apply(CLICKS, events_from_batch(CLICKS, shuffled.slice(start, 25)))
        store.close()
        return new


def test_concurrent_consumers_lose_no_update_and_count_each_event_once(
        store: FeatureStore, project: Project, backend: str) -> None:
    store.apply([CLICKS])
    events = make_events(800, seed=2)
    redis: Any = None
    if backend == "redis":
        kv = store.online
        assert isinstance(kv, RedisKV)
        redis = (kv.url, kv.prefix)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(3) as pool:
        news = pool.starmap(_consumer, [(project.settings, redis, seed, events) for seed in (1, 2, 3)])
    assert sum(news) == events.num_rows  # each event was new to exactly one consumer
    check(store, events, T0 + dt.timedelta(days=2))


def test_training_set_aggregates_equal_online_aggregates(store: FeatureStore, project: Project) -> None:
    store.apply([CLICKS])
    events = make_events(500, seed=3)
    project.offline.write("clicks", events, time_column="ts")
    project.offline.write("clicks", events.slice(0, 50), time_column="ts")  # duplicates in the log: same ids
    store.stream_processor().process("clicks", events)
    refs = [f"click_stats:{f}" for f in CLICKS.feature_names]
    end = T0 + dt.timedelta(days=2)
    for at in (end, end + dt.timedelta(minutes=50)):
        rows = pd.DataFrame({"user_id": range(7), "event_timestamp": [at] * 7})
        train = store.get_training_set(rows, refs)
        online, _ = store.online_vector([{"user_id": u} for u in range(7)], refs, at=at)
        offline = train[list(CLICKS.feature_names)].to_numpy(dtype=float)
        # an entity never seen online is all-missing; offline its counts and sums are 0
        online[6] = offline[6]
        np.testing.assert_allclose(online, offline, equal_nan=True)
    # and at historical times offline never uses an event later than the row
    early = pd.DataFrame({"user_id": [0, 1], "event_timestamp": [T0, T0 + dt.timedelta(hours=1)]})
    raw = events_from_batch(CLICKS, events)
    got = store.get_training_set(early, ["click_stats:count_24h"])
    want = [brute_force(CLICKS, raw, str(u), "count_24h", int(t.timestamp() * 1e6))
            for u, t in zip(early["user_id"], early["event_timestamp"], strict=True)]
    assert got["count_24h"].tolist() == want


def test_training_set_aggregates_equal_raw_events_at_every_kind_of_time(store: FeatureStore, project: Project) -> None:
    """Rows at random times, at exact event times (ties) and at bucket edges, for every function and window."""
    store.apply([CLICKS])
    events = make_events(700, seed=7)
    events = pa.concat_tables([events, events.slice(0, 40).set_column(  # same timestamps, other ids: ties
        0, "event_id", pa.array([f"tie-{i}" for i in range(40)]))])
    project.offline.write("clicks", events, time_column="ts")
    raw = events_from_batch(CLICKS, events)
    rng = np.random.default_rng(11)
    stamps = list(rng.integers(0, 3 * 86400, 120))  # seconds after T0, past the last event too
    stamps += [int((t - T0).total_seconds()) for t in events.column("ts").to_pylist()[::25]]
    stamps += [3600 * h for h in range(0, 50, 5)]  # bucket edges (5 min, 2 h and 14 h buckets all divide an hour)
    rows = pd.DataFrame({"user_id": rng.integers(0, 7, len(stamps)),
                         "event_timestamp": [T0 + dt.timedelta(seconds=int(s)) for s in stamps]})
    got = store.get_training_set(rows, [f"click_stats:{f}" for f in CLICKS.feature_names])
    assert len(got) == len(rows)
    for i, (u, t) in enumerate(zip(rows["user_id"], rows["event_timestamp"], strict=True)):
        at_us = int(t.timestamp() * 1_000_000)
        for f in CLICKS.feature_names:
            want = brute_force(CLICKS, raw, str(u), f, at_us)
            value = got[f].iloc[i]
            if want is None:
                assert pd.isna(value), (i, f)
            else:
                assert value == pytest.approx(want), (i, u, t, f)
