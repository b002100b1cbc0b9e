"""NATS JetStream: a durable pull consumer shared by a group, and an acked publisher (``nats://HOST:PORT``).

The JetStream stream is named after the modelmill stream and listens on the
subject of the same name (``subject=`` picks another). Every consumer of a group
pulls from one durable consumer named after the group, so JetStream hands each
message to one of them; messages are acked only after the micro-batch is written,
and a consumer that dies leaves its unacked messages to be redelivered after
``ack_wait`` seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from modelmill.errors import InputError
from modelmill.ingest.natswire import JetStreamError, NatsWire
from modelmill.ingest.source import Polled, Publisher, Source

__all__ = ["JetStreamPublisher", "JetStreamSource", "ensure_stream"]


def ensure_stream(wire: NatsWire, stream: str, subject: str) -> dict[str, Any]:
    """The stream's info, creating it (file storage, keep everything) when it does not exist."""
    try:
        return wire.api(f"STREAM.INFO.{stream}")
    except JetStreamError as exc:
        if exc.code != 404:
            raise
    try:
        return wire.api(f"STREAM.CREATE.{stream}", {"name": stream, "subjects": [subject], "storage": "file",
                                                    "retention": "limits", "discard": "old"})
    except JetStreamError as exc:
        if exc.err_code == 10058:  # created meanwhile by another process
            return wire.api(f"STREAM.INFO.{stream}")
        raise


def delete_stream(url: str, stream: str) -> None:
    """Delete a JetStream stream and its consumers (tests and benchmarks clean up with this)."""
    wire = NatsWire(url).connect()
    try:
        wire.api(f"STREAM.DELETE.{stream}")
    except JetStreamError as exc:
        if exc.code != 404:
            raise
    finally:
        wire.close()


class JetStreamSource(Source):
    """Pulls from the durable consumer ``group`` of the JetStream stream ``stream``."""

    def __init__(self, url: str, *, stream: str, group: str = "modelmill", consumer: str = "",
                 subject: str | None = None, ack_wait: float = 30.0, max_ack_pending: int = 200_000) -> None:
        self.url = url
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.subject = subject or stream
        self.ack_wait = ack_wait
        self.max_ack_pending = max_ack_pending
        self._wire: NatsWire | None = None
        self._pending: int | None = None

    def open(self) -> JetStreamSource:
        if self._wire is not None:
            return self
        wire = NatsWire(self.url).connect()
        try:
            ensure_stream(wire, self.stream, self.subject)
            self._ensure_consumer(wire)
        except BaseException:
            wire.close()
            raise
        self._wire = wire
        return self

    def _ensure_consumer(self, wire: NatsWire) -> None:
        try:
            wire.api(f"CONSUMER.INFO.{self.stream}.{self.group}")
            return
        except JetStreamError as exc:
            if exc.code != 404:
                raise
        config = {"durable_name": self.group, "ack_policy": "explicit", "deliver_policy": "all",
                  "ack_wait": int(self.ack_wait * 1e9), "max_ack_pending": self.max_ack_pending,
                  "max_deliver": -1, "max_waiting": 512, "replay_policy": "instant"}
        try:
            wire.api(f"CONSUMER.DURABLE.CREATE.{self.stream}.{self.group}",
                     {"stream_name": self.stream, "config": config})
        except JetStreamError as exc:
            if exc.err_code != 10148 and exc.code != 400:  # created meanwhile with the same name
                raise
            wire.api(f"CONSUMER.INFO.{self.stream}.{self.group}")

    @property
    def redelivery_after(self) -> float | None:
        return self.ack_wait

    @property
    def wire(self) -> NatsWire:
        if self._wire is None:
            self.open()
        assert self._wire is not None
        return self._wire

    def poll(self, max_events: int, timeout: float) -> Polled:
        msgs = self.wire.fetch(self.stream, self.group, max_events, timeout)
        if not msgs:
            return Polled([], [])
        tokens = msgs[-1][1].split(b".")
        if len(tokens) >= 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>[...]
            self._pending = int(tokens[8] if len(tokens) == 9 else tokens[10])
        return Polled([m[0] for m in msgs], [m[1] for m in msgs])

    def ack(self, polled: Sequence[Polled]) -> None:
        replies = [r for p in polled for r in (p.token or ())]
        if replies:
            self.wire.ack(replies)

    def lag(self) -> int | None:
        if self._pending is None:
            info = self.wire.api(f"CONSUMER.INFO.{self.stream}.{self.group}")
            self._pending = int(info.get("num_pending", 0))
        return self._pending

    def close(self) -> None:
        if self._wire is not None:
            self._wire.close()
            self._wire = None


class JetStreamPublisher(Publisher):
    """Publishes to the stream's subject and waits for JetStream's ack of every message."""

    def __init__(self, url: str, *, stream: str, subject: str | None = None, window: int = 5_000) -> None:
        self.url = url
        self.stream = stream
        self.subject = subject or stream
        self.window = window
        self._wire: NatsWire | None = None

    def open(self) -> JetStreamPublisher:
        if self._wire is None:
            wire = NatsWire(self.url).connect()
            try:
                ensure_stream(wire, self.stream, self.subject)
            except BaseException:
                wire.close()
                raise
            self._wire = wire
        return self

    def publish(self, payloads: Sequence[bytes]) -> None:
        self.open()
        assert self._wire is not None
        limit = self._wire.max_payload
        for i, p in enumerate(payloads):
            if len(p) > limit:
                raise InputError("payload", f"event {i} is {len(p)} bytes; this NATS server accepts at most {limit}")
        self._wire.publish_acked(self.subject, payloads, window=self.window)

    def close(self) -> None:
        if self._wire is not None:
            self._wire.close()
            self._wire = None
