"""Broker fixtures for the ingestion tests: one stream per test (uuid name), deleted afterwards."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from modelmill.ingest import EventSchema, Field, Publisher, Source, open_publisher, open_source

# Kafka (Tansu, started by the tests) costs 5-10 s a check: its contract runs in .ci/run (slow), the others in make test.
BACKENDS = ["local", pytest.param("kafka", marks=pytest.mark.slow), "nats", "redis"]

CLICKS = EventSchema(
    name="clicks",
    fields=[Field("id", "string"), Field("ts", "timestamp"), Field("user", "int", required=True),
            Field("price", "float"), Field("kind", "string"), Field("mobile", "bool")],
    event_id="id",
    event_time="ts",
    max_event_bytes=2048,
)


def click(i: int) -> dict[str, Any]:
    ts = dt.datetime(2024, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=37 * i)
    return {"id": f"e{i:07d}", "ts": ts.isoformat(), "user": i % 997, "price": round(i * 0.25, 2),
            "kind": ("view", "click", "buy")[i % 3], "mobile": i % 2 == 0}


def clicks(n: int, start: int = 0) -> list[bytes]:
    return [orjson.dumps(click(i)) for i in range(start, start + n)]


@dataclasses.dataclass
class Broker:
    """One backend and one fresh stream on it."""

    kind: str
    url: str
    stream: str
    source_options: dict[str, Any]
    publisher_options: dict[str, Any]
    # Unique per test: a Kafka group keeps members of earlier tests until their sessions time out.
    group: str = dataclasses.field(default_factory=lambda: f"g-{uuid.uuid4().hex[:8]}")

    def source(self, group: str = "", consumer: str = "c1", **options: Any) -> Source:
        return open_source(self.url, stream=self.stream, group=group or self.group, consumer=consumer,
                           **{**self.source_options, **options})

    def patient_source(self, **options: Any) -> Source:
        """A source whose redelivery timers (1 s in the fixtures) outlast a micro-batch."""
        slow = {"nats": {"ack_wait": 30.0}, "redis": {"claim_idle": 30.0}}.get(self.kind, {})
        return self.source(**{**slow, **options})

    def publisher(self, **options: Any) -> Publisher:
        return open_publisher(self.url, stream=self.stream, **{**self.publisher_options, **options})


def _cleanup(kind: str, url: str, stream: str, options: dict[str, Any]) -> None:
    if kind == "nats":
        from modelmill.ingest.jetstream import delete_stream

        delete_stream(url, stream)
    elif kind == "kafka":
        from modelmill.ingest.kafka import delete_topic

        delete_topic(url, stream)
    elif kind == "redis":
        import redis

        client = redis.Redis.from_url(url)
        client.delete(options.get("prefix", "") + stream)
        client.close()


@pytest.fixture
def make_broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[str], Broker]]:
    """A factory: ``make_broker("nats")`` gives a fresh stream on that backend (skips when it is down)."""
    made: list[Broker] = []

    def make(kind: str) -> Broker:
        stream = f"mmt-{uuid.uuid4().hex[:10]}"
        src: dict[str, Any] = {}
        pub: dict[str, Any] = {}
        if kind == "local":
            url = f"local://{tmp_path / 'log'}"
        elif kind == "kafka":
            url = request.getfixturevalue("kafka_url")
        elif kind == "nats":
            url = request.getfixturevalue("nats_url")
            src = {"ack_wait": 1.0}
        elif kind == "redis":
            url = request.getfixturevalue("redis_url")
            prefix = request.getfixturevalue("redis_prefix")
            src = {"prefix": prefix, "claim_idle": 1.0, "claim_every": 0.5}
            pub = {"prefix": prefix}
        else:
            raise ValueError(kind)
        broker = Broker(kind, url, stream, src, pub)
        made.append(broker)
        return broker

    yield make
    for b in made:
        _cleanup(b.kind, b.url, b.stream, b.publisher_options)


@pytest.fixture(params=BACKENDS)
def broker(request: pytest.FixtureRequest, make_broker: Callable[[str], Broker]) -> Broker:
    return make_broker(request.param)
