"""Event sources and publishers behind two small base classes, chosen by URL.

A :class:`Source` hands out raw payloads with :meth:`Source.poll` and forgets them
only on :meth:`Source.ack`, which the ingestor calls after the micro-batch is
durably written: delivery is at least once, and the sink's id index makes the
effect exactly once.

=========================  ===========================================================
URL                        source / publisher
=========================  ===========================================================
``local:///PATH``          the embedded append-only log (:mod:`modelmill.ingest.local`)
``kafka://HOST:PORT``      a Kafka consumer group (:mod:`modelmill.ingest.kafka`)
``nats://HOST:PORT``       a JetStream durable pull consumer (:mod:`modelmill.ingest.jetstream`)
``redis://HOST:PORT``      a Redis Streams consumer group (:mod:`modelmill.ingest.redisstreams`)
``kinesis://HOST:PORT``    Kinesis shards leased by a group in the metadata db (:mod:`modelmill.ingest.kinesis`)
a ``.csv``, ``.parquet``, ``.jsonl`` file   replay in event-time order (:mod:`modelmill.ingest.replay`)
=========================  ===========================================================

    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> with open_publisher(f"local://{root}", stream="clicks") as pub:
    ...     pub.publish([b'{"id": 1}', b'{"id": 2}'])
    >>> with open_source(f"local://{root}", stream="clicks", group="g") as src:
    ...     polled = src.poll(10, timeout=0)
    ...     src.ack([polled])
    >>> polled.payloads
    [b'{"id": 1}', b'{"id": 2}']
"""

from __future__ import annotations

import abc
import dataclasses
import os
import re
import socket
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

from modelmill.errors import InputError
from modelmill.ingest.validation import Rejected

__all__ = ["Polled", "Publisher", "Source", "default_consumer_name", "open_publisher", "open_source",
           "stream_name"]

_STREAM = re.compile(r"^[A-Za-z0-9_-]{1,200}$")
_REPLAY_SUFFIXES = (".csv", ".parquet", ".pq", ".jsonl", ".ndjson", ".json")


@dataclasses.dataclass
class Polled:
    """What one :meth:`Source.poll` returned: the payloads and what :meth:`Source.ack` needs to forget them.

    ``rejected`` holds records the source could not hand over whole (a local-log record past its read
    limit): the ingestor dead-letters them with the batch, and the ack moves past them too.
    """

    payloads: list[bytes]
    token: Any = None
    rejected: list[Rejected] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.payloads) + len(self.rejected)


class Source(abc.ABC):
    """Where events come from. The constructor stores settings; :meth:`open` connects."""

    url: str
    stream: str

    def open(self) -> Self:
        return self

    def close(self) -> None:  # noqa: B027  (optional hook)
        """Release the connection; events polled but not acked are delivered again later."""

    @abc.abstractmethod
    def poll(self, max_events: int, timeout: float) -> Polled:
        """Up to ``max_events`` payloads, waiting at most ``timeout`` seconds for the first ones."""

    @abc.abstractmethod
    def ack(self, polled: Sequence[Polled]) -> None:
        """Forget these polls for good: called only after their events are durably written."""

    def lag(self) -> int | None:
        """Events in the stream not yet delivered to this consumer group (None when unknown)."""
        return None

    @property
    def redelivery_after(self) -> float | None:
        """Seconds after which the broker hands an unacked event to another consumer (None: never)."""
        return None

    @property
    def exhausted(self) -> bool:
        """True for a finite source (a file) that has nothing more to give."""
        return False

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={self.url!r}, stream={self.stream!r})"


class Publisher(abc.ABC):
    """Appends payloads to a stream of a broker. The constructor stores settings; :meth:`open` connects."""

    url: str
    stream: str

    def open(self) -> Self:
        return self

    def close(self) -> None:  # noqa: B027  (optional hook)
        """Flush and disconnect."""

    @abc.abstractmethod
    def publish(self, payloads: Sequence[bytes]) -> None:
        """Append ``payloads`` in order; returns once the broker has accepted every one."""

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={self.url!r}, stream={self.stream!r})"


def stream_name(stream: str) -> str:
    """Check a stream name: letters, digits, '_' and '-' (valid as a Kafka topic, JetStream stream, key)."""
    if not isinstance(stream, str) or not _STREAM.fullmatch(stream):
        raise InputError("stream", "must be 1-200 letters, digits, '_' or '-'", stream)
    return stream


def default_consumer_name() -> str:
    """A consumer name unique to this process on this machine."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _scheme(url: str) -> str:
    if "://" not in url:
        return "file"
    return urlsplit(url).scheme


def is_replay(url: str) -> bool:
    """True when ``url`` names a file to replay rather than a broker."""
    scheme = _scheme(url)
    return scheme == "file" and Path(url.removeprefix("file://")).suffix.lower() in _REPLAY_SUFFIXES


def open_source(url: str, *, stream: str, group: str = "modelmill", consumer: str | None = None,
                schema: Any = None, **options: Any) -> Source:
    """The source for ``url`` (not yet opened). ``options`` go to the source's constructor."""
    stream = stream_name(stream)
    scheme = _scheme(url)
    consumer = consumer or default_consumer_name()
    if is_replay(url):
        from modelmill.ingest.replay import FileReplaySource

        if schema is None:
            raise InputError("schema", "replaying a file needs the event schema (for its event-time field)")
        return FileReplaySource(url.removeprefix("file://"), schema=schema, stream=stream, **options)
    if scheme == "local":
        from modelmill.ingest.local import LocalLogSource

        return LocalLogSource(url, stream=stream, group=group, consumer=consumer, **options)
    if scheme == "kafka":
        from modelmill.ingest.kafka import KafkaSource

        return KafkaSource(url, stream=stream, group=group, consumer=consumer, **options)
    if scheme == "nats":
        from modelmill.ingest.jetstream import JetStreamSource

        return JetStreamSource(url, stream=stream, group=group, consumer=consumer, **options)
    if scheme in ("redis", "rediss"):
        from modelmill.ingest.redisstreams import RedisStreamSource

        return RedisStreamSource(url, stream=stream, group=group, consumer=consumer, **options)
    if scheme in ("kinesis", "kinesis+https"):
        from modelmill.ingest.kinesis import KinesisSource

        return KinesisSource(url, stream=stream, group=group, consumer=consumer, **options)
    raise InputError("source", "use local:///PATH, kafka://HOST:PORT, nats://HOST:PORT, redis://HOST:PORT/DB, "
                     "kinesis://HOST:PORT or a .csv/.parquet/.jsonl file", url)


def open_publisher(url: str, *, stream: str, **options: Any) -> Publisher:
    """The publisher for broker ``url`` (not yet opened)."""
    stream = stream_name(stream)
    scheme = _scheme(url)
    if scheme == "local":
        from modelmill.ingest.local import LocalLogPublisher

        return LocalLogPublisher(url, stream=stream, **options)
    if scheme == "kafka":
        from modelmill.ingest.kafka import KafkaPublisher

        return KafkaPublisher(url, stream=stream, **options)
    if scheme == "nats":
        from modelmill.ingest.jetstream import JetStreamPublisher

        return JetStreamPublisher(url, stream=stream, **options)
    if scheme in ("redis", "rediss"):
        from modelmill.ingest.redisstreams import RedisStreamPublisher

        return RedisStreamPublisher(url, stream=stream, **options)
    if scheme in ("kinesis", "kinesis+https"):
        from modelmill.ingest.kinesis import KinesisPublisher

        return KinesisPublisher(url, stream=stream, **options)
    raise InputError("broker", "use local:///PATH, kafka://HOST:PORT, nats://HOST:PORT, redis://HOST:PORT/DB "
                     "or kinesis://HOST:PORT", url)
