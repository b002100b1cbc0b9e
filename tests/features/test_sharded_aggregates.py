"""Streaming aggregates shard by entity key: two ingestors of one Kafka group over two partitions (Tansu), each
its own process, produce the online values one ingestor produces reading everything.

The publisher keys each event by its entity (``partition_key``), so each user's events share a partition
(``shard_of``, Kafka's murmur2) and reach one ingestor: the two write disjoint users, and every value of every
user equals the one-ingestor project's and the brute-force value from the raw events.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from modelmill.config import Settings
from modelmill.features import Aggregation, Entity, FeatureStore, StreamAggregation
from modelmill.features.aggregations import brute_force, events_from_batch, murmur2, partition_key, shard_of
from modelmill.ingest import Ingestor, open_publisher, open_source
from modelmill.project import Project
from tests.ingest.conftest import CLICKS, click, clicks

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}"}
USERS = 997  # tests.ingest.conftest.click: user = i % 997

user = Entity(name="user", join_keys=["user"])


def aggregation(stream: str) -> StreamAggregation:
    return StreamAggregation(
        name="spend", entities=[user], stream=stream, timestamp_field="ts", event_id_field="id",
        aggregations=[Aggregation(column=None, function="count", windows=["1h", "1d"]),
                      Aggregation(column="price", function="sum", windows=["1d", "7d"]),
                      Aggregation(column="price", function="mean", windows=["1d"]),
                      Aggregation(column="price", function="min", windows=["7d"]),
                      Aggregation(column="price", function="max", windows=["7d"]),
                      Aggregation(column="price", function="last", windows=["1h", "7d"])],
        buckets_per_window=12)


def test_murmur2_is_kafkas() -> None:
    # Kafka's own UtilsTest vectors: the partition of a keyed message in every Kafka client and Flink
    assert [murmur2(k) for k in (b"21", b"foobar", b"a-little-bit-long-string", b"a-little-bit-longer-string",
                                 b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8")] == [
        -973932308, -790332482, -985981536, -1486304829, -58897971]
    assert shard_of("21", 7) == (-973932308 & 0x7FFFFFFF) % 7
    agg = aggregation("s")
    assert partition_key(agg)(orjson.dumps(click(1_000))) == "3"
    assert partition_key(agg)(b'{"id": "x"}') == "" and partition_key(agg)(b"not json") == ""


@pytest.mark.slow
def test_two_ingestors_over_two_partitions_give_the_values_of_one(kafka_url: str, tmp_path: Path) -> None:
    from modelmill.ingest.kafka import delete_topic, ensure_topic

    stream = f"mmt_{uuid.uuid4().hex[:10]}"
    agg = aggregation(stream)
    n = 24_000
    events = clicks(n)
    ensure_topic(kafka_url, stream, partitions=2)
    try:
        # two ingestors, each its own process, one project
        home, folder = tmp_path / "two", tmp_path / "marks"
        folder.mkdir()
        with Project(Settings.defaults(home=home)) as project:
            FeatureStore(project).apply([agg])
        spec: dict[str, Any] = {"home": str(home), "url": kafka_url, "stream": stream, "group": "two", "idle": 15.0,
                                "options": {}, "share": 1, "marks": str(folder), "aggregates": True}
        procs = [subprocess.Popen([sys.executable, "-m", "tests.ingest.scaleout_consumer",
                                   orjson.dumps({**spec, "consumer": name}).decode()], cwd=ROOT, env=ENV)
                 for name in ("a", "b")]
        try:
            deadline = time.monotonic() + 120
            while not all((folder / f"{m}.ready").exists() for m in ("a", "b")):
                assert all(p.poll() is None for p in procs), "an ingestor exited before the group formed"
                assert time.monotonic() < deadline, "the group did not give each ingestor a partition"
                time.sleep(0.05)
            with open_publisher(kafka_url, stream=stream, partitions=2, key=partition_key(agg)) as pub:
                pub.publish(events)
            assert [p.wait(240) for p in procs] == [0, 0]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait(30)
        # one ingestor, another project, reading the same topic as a group of its own
        with Project(Settings.defaults(home=tmp_path / "one")) as single:
            fs = FeatureStore(single)
            fs.apply([agg])
            source = open_source(kafka_url, stream=stream, group="one", consumer="only")
            stats = Ingestor(single, CLICKS, source, processors=[fs.stream_processor()], batch_size=5_000,
                             batch_seconds=0.5).run(max_events=n, idle_timeout=30)
            assert stats.written == n
            one = _values(fs, agg)
            fs.close()
    finally:
        delete_topic(kafka_url, stream)

    # Sharded: each user's events went to one ingestor, the one holding partition shard_of(user, 2).
    seen = {m: {u for line in (folder / f"{m}.jsonl").read_bytes().splitlines()
                for u in orjson.loads(line)["entities"]} for m in ("a", "b")}
    assert seen["a"] and seen["b"] and not seen["a"] & seen["b"]
    assert seen["a"] | seen["b"] == {str(u) for u in range(USERS)}
    assert len({shard_of(u, 2) for u in seen["a"]}) == 1 and len({shard_of(u, 2) for u in seen["b"]}) == 1

    with Project(Settings.defaults(home=home)) as project:
        fs = FeatureStore(project)
        two = _values(fs, agg)
        fs.close()
    assert two == one  # every user, every feature, at every time read
    # and both are the aggregates' definition, not a shared mistake (brute force models reads at or after the
    # entity's newest event: a read in the past finds the buckets the newer events pruned, the same in both)
    raw = events_from_batch(agg, _table(events))
    for at, values in one.items():
        if at < _times()[1]:
            continue
        at_us = int(at.timestamp() * 1_000_000)
        for u in (0, 1, 500, 996):
            for j, f in enumerate(agg.feature_names):
                assert values[u][j] == pytest.approx(brute_force(agg, raw, str(u), f, at_us)), (at, u, f)


def _times() -> list[dt.datetime]:
    end = dt.datetime.fromisoformat(click(23_999)["ts"])
    return [end - dt.timedelta(days=3, minutes=7), end, end + dt.timedelta(hours=5)]


def _values(fs: FeatureStore, agg: StreamAggregation) -> dict[dt.datetime, list[list[Any]]]:
    refs = [f"{agg.name}:{f}" for f in agg.feature_names]
    return {at: [list(row) for row in fs.get_online_features([{"user": u} for u in range(USERS)], refs,
                                                              at=at).values] for at in _times()}


def _table(events: list[bytes]) -> Any:
    from modelmill.ingest.validation import Validator

    table, rejected = Validator(CLICKS).validate(events)
    assert not rejected
    return table
