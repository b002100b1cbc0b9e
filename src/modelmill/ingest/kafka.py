"""Kafka (``kafka://HOST:PORT``): a consumer group that commits offsets only after the write, and a producer.

The topic is the stream name. Tests and CI run it against Tansu, the Apache-2.0
Kafka-compatible broker started by ``scripts/tansu.sh``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from modelmill.config import mask_url
from modelmill.errors import BackendUnavailable, StoreError
from modelmill.ingest.source import Polled, Publisher, Source

__all__ = ["KafkaPublisher", "KafkaSource", "bootstrap", "ensure_topic"]


def bootstrap(url: str) -> str:
    """``kafka://h1:9092,h2:9092`` -> ``h1:9092,h2:9092``."""
    return url.split("://", 1)[1].split("/", 1)[0] or "127.0.0.1:9092"


def ensure_topic(url: str, topic: str, *, partitions: int = 1, timeout: float = 15.0) -> None:
    """Create ``topic`` with ``partitions`` partitions unless it exists."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap(url)})
    try:
        existing = admin.list_topics(timeout=timeout).topics
    except KafkaException as exc:
        raise BackendUnavailable("kafka", mask_url(url), str(exc)) from exc
    if topic in existing:
        return
    for future in admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)]).values():
        try:
            future.result(timeout)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise StoreError(f"could not create Kafka topic {topic!r}: {exc}", topic=topic) from exc


def delete_topic(url: str, topic: str) -> None:
    from confluent_kafka.admin import AdminClient

    for future in AdminClient({"bootstrap.servers": bootstrap(url)}).delete_topics([topic]).values():
        try:
            future.result(15)
        except Exception:  # best effort: tests clean up with this
            pass


class KafkaSource(Source):
    """A member of consumer group ``group`` on topic ``stream``; auto-commit is off."""

    def __init__(self, url: str, *, stream: str, group: str = "modelmill", consumer: str = "",
                 config: dict[str, Any] | None = None) -> None:
        self.url = url
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.config = dict(config or {})
        self._consumer: Any = None

    def open(self) -> KafkaSource:
        if self._consumer is not None:
            return self
        from confluent_kafka import Consumer

        conf = {"bootstrap.servers": bootstrap(self.url), "group.id": self.group, "client.id": self.consumer or "mm",
                "enable.auto.commit": False, "enable.auto.offset.store": False, "auto.offset.reset": "earliest",
                "session.timeout.ms": 10_000, "heartbeat.interval.ms": 1_000,
                "fetch.max.bytes": 64 << 20, "max.partition.fetch.bytes": 16 << 20, "logger": _quiet_logger(),
                **self.config}
        ensure_topic(self.url, self.stream)
        self._consumer = Consumer(conf)
        self._consumer.subscribe([self.stream])
        return self

    def poll(self, max_events: int, timeout: float) -> Polled:
        from confluent_kafka import KafkaError, KafkaException

        if self._consumer is None:
            self.open()
        msgs = self._consumer.consume(num_messages=max_events, timeout=timeout)
        payloads: list[bytes] = []
        ends: dict[int, int] = {}
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF or not err.fatal():
                    continue
                raise KafkaException(err)
            payloads.append(m.value() or b"")
            ends[m.partition()] = m.offset() + 1
        return Polled(payloads, ends)

    def ack(self, polled: Sequence[Polled]) -> None:
        from confluent_kafka import KafkaException, TopicPartition

        ends: dict[int, int] = {}
        for p in polled:
            for part, offset in (p.token or {}).items():
                ends[part] = max(ends.get(part, 0), offset)
        if not ends:
            return
        try:
            self._consumer.commit(offsets=[TopicPartition(self.stream, k, v) for k, v in ends.items()],
                                  asynchronous=False)
        except KafkaException:
            # The partition moved to another member during a rebalance: it re-reads from the last
            # committed offset and the sink drops what is already written.
            pass

    def assignment(self) -> list[int]:
        """The partitions the group gave this consumer now (changes with every rebalance)."""
        if self._consumer is None:
            return []
        return sorted(tp.partition for tp in self._consumer.assignment())

    def lag(self) -> int | None:
        if self._consumer is None:
            return None
        total = 0
        try:
            for tp in self._consumer.position(self._consumer.assignment()):
                _, high = self._consumer.get_watermark_offsets(tp, cached=True) or (0, 0)
                if tp.offset >= 0 and high >= 0:
                    total += max(0, high - tp.offset)
        except Exception:
            return None
        return total

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


class KafkaPublisher(Publisher):
    """Produces to topic ``stream`` (created with ``partitions`` partitions if missing); waits for delivery.

    ``key(payload)`` gives each event a message key (an entity key: see
    :func:`modelmill.features.aggregations.partition_key`); the partition is then murmur2(key) modulo the
    partitions, as the Java client and Flink's Kafka sink place it, so one entity's events share a partition
    and reach one consumer of a group. Without ``key`` the events are spread over the partitions.
    """

    def __init__(self, url: str, *, stream: str, partitions: int = 1, config: dict[str, Any] | None = None,
                 key: Callable[[bytes], str | bytes] | None = None) -> None:
        self.url = url
        self.stream = stream
        self.partitions = partitions
        self.key = key
        self.config = dict(config or {})
        self._producer: Any = None
        self._errors: list[str] = []

    def open(self) -> KafkaPublisher:
        if self._producer is None:
            from confluent_kafka import Producer

            ensure_topic(self.url, self.stream, partitions=self.partitions)
            self._producer = Producer({"bootstrap.servers": bootstrap(self.url), "linger.ms": 10,
                                       "batch.num.messages": 10_000, "queue.buffering.max.messages": 500_000,
                                       "enable.idempotence": False, "logger": _quiet_logger(),
                                       "partitioner": "murmur2_random", **self.config})
        return self

    def _delivered(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self._errors.append(str(err))

    def publish(self, payloads: Sequence[bytes]) -> None:
        self.open()
        produce = self._producer.produce
        key = self.key
        for p in payloads:
            k = key(p) if key is not None else None
            while True:
                try:
                    produce(self.stream, p, key=k, on_delivery=self._delivered)
                    break
                except BufferError:
                    self._producer.poll(0.05)
        left = self._producer.flush(60)
        if left or self._errors:
            errors, self._errors = self._errors, []
            raise BackendUnavailable("kafka", mask_url(self.url),
                                     f"{left} events undelivered; {len(errors)} failed: {errors[:1]}")

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(30)
            self._producer = None


def _quiet_logger() -> Any:
    import logging

    log = logging.getLogger("modelmill.ingest.kafka")
    return log
