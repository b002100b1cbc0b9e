"""Ingestion: event streams into the offline store, validated, exactly once in effect.

    source (file replay, local log, Kafka, NATS JetStream, Redis Streams)
      -> Validator (typed Arrow batch + dead letters)
      -> OfflineSink (Parquet by event date, deduplicated by event id)
      -> StreamProcessor(s) -> ack

Delivery is at least once (acks and offset commits follow the durable write) and the
sink's durable id index drops redeliveries, so every event lands exactly once.
"""

from __future__ import annotations

from modelmill.ingest.datasets import FLIGHTS, WEATHER
from modelmill.ingest.deadletters import DeadLetter, DeadLetters
from modelmill.ingest.ingestor import (
    Ingestor,
    IngestStats,
    ReplayResult,
    StreamProcessor,
    replay_dead_letters,
)
from modelmill.ingest.replay import FileReplaySource
from modelmill.ingest.schema import EventSchema, Field, load_schema
from modelmill.ingest.sink import OfflineSink
from modelmill.ingest.source import Polled, Publisher, Source, open_publisher, open_source
from modelmill.ingest.validation import Rejected, TimeWindow, Validator

__all__ = [
    "FLIGHTS",
    "WEATHER",
    "DeadLetter",
    "DeadLetters",
    "EventSchema",
    "Field",
    "FileReplaySource",
    "IngestStats",
    "Ingestor",
    "OfflineSink",
    "Polled",
    "Publisher",
    "Rejected",
    "ReplayResult",
    "Source",
    "StreamProcessor",
    "TimeWindow",
    "Validator",
    "load_schema",
    "open_publisher",
    "open_source",
    "replay_dead_letters",
]
