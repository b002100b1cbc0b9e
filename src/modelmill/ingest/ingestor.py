"""The ingestor: poll a source, validate, write micro-batches, hand them to processors, then ack.

A micro-batch closes when it holds ``batch_size`` events, when ``batch_seconds``
passed since its first event, or when the source runs dry. Only after the sink
committed it (Parquet files, id index and dead letters in one transaction) are the
polls acked, so a crash anywhere redelivers at most the open batch, and the sink
drops whatever of it was already written.

    >>> import tempfile, datetime as dt
    >>> import pyarrow as pa
    >>> from modelmill.config import Settings
    >>> from modelmill.project import Project
    >>> from modelmill.ingest.replay import FileReplaySource
    >>> from modelmill.ingest.schema import EventSchema, Field
    >>> s = EventSchema(name="clicks", fields=[Field("id", "int"), Field("ts", "timestamp")], event_id="id",
    ...                 event_time="ts")
    >>> t = pa.table({"id": [1, 2, 2], "ts": [dt.datetime(2024, 1, 1)] * 3})
    >>> p = Project(Settings.defaults(home=tempfile.mkdtemp()))
    >>> stats = Ingestor(p, s, FileReplaySource(t, schema=s)).run()
    >>> stats.polled, stats.written, stats.duplicates
    (3, 2, 1)
    >>> p.close()
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import pyarrow as pa
from sqlalchemy.engine import Connection

from modelmill.errors import InputError
from modelmill.ingest.deadletters import DeadLetters
from modelmill.ingest.schema import EventSchema
from modelmill.ingest.sink import OfflineSink
from modelmill.ingest.source import Polled, Source
from modelmill.ingest.validation import Rejected, TimeWindow, Validator
from modelmill.project import Project

__all__ = ["IngestStats", "Ingestor", "ReplayResult", "StreamProcessor", "replay_dead_letters"]


@runtime_checkable
class StreamProcessor(Protocol):
    """Receives every accepted micro-batch (new events only, schema columns), after it is written."""

    def process(self, stream: str, batch: pa.Table) -> None: ...


@dataclasses.dataclass
class IngestStats:
    """Counters of one run; ``lag`` is the source's last reported backlog."""

    polled: int = 0
    written: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    batches: int = 0
    seconds: float = 0.0
    lag: int | None = None

    @property
    def events_per_s(self) -> float:
        return self.polled / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, float | int | None]:
        return {**dataclasses.asdict(self), "events_per_s": round(self.events_per_s, 1)}


class Ingestor:
    """Moves one stream of one schema from ``source`` into ``project.offline``."""

    def __init__(self, project: Project, schema: EventSchema, source: Source, *,
                 processors: Sequence[StreamProcessor] = (), batch_size: int = 50_000,
                 batch_seconds: float = 1.0, poll_size: int = 10_000) -> None:
        if batch_size < 1 or poll_size < 1 or batch_seconds <= 0:
            raise InputError("batch_size", "batch_size and poll_size must be >= 1 and batch_seconds > 0",
                             (batch_size, poll_size, batch_seconds))
        redelivery = source.redelivery_after
        if redelivery is not None and batch_seconds * 2 > redelivery:
            raise InputError("batch_seconds", f"must be under half the source's redelivery timeout ({redelivery}s), "
                             "or the broker hands events of an open micro-batch to another consumer", batch_seconds)
        self.project = project
        self.schema = schema
        self.source = source
        self.processors = list(processors)
        self.batch_size = batch_size
        self.batch_seconds = batch_seconds
        self.poll_size = poll_size
        self.validator = Validator(schema, window=TimeWindow.from_section(project.settings.section("ingest")))
        self.sink = OfflineSink(project, schema, stream=source.stream)
        self.stats = IngestStats()
        self._stop = threading.Event()

    def __repr__(self) -> str:
        return f"Ingestor(schema={self.schema.name!r}, source={self.source!r})"

    def stop(self) -> None:
        """Ask :meth:`run` to write what it holds and return (safe from a signal handler or thread)."""
        self._stop.set()

    def run(self, *, max_events: int | None = None, idle_timeout: float | None = None,
            duration: float | None = None, on_progress: Callable[[IngestStats], None] | None = None,
            progress_every: float = 0.5) -> IngestStats:
        """Ingest until the source is exhausted (a file), ``max_events`` were polled, nothing arrived for
        ``idle_timeout`` seconds, ``duration`` passed, or :meth:`stop` was called."""
        self.sink.open()
        self.source.open()
        stats = self.stats
        started = time.monotonic()
        last_event = last_report = started
        payloads: list[bytes] = []
        refused: list[Rejected] = []  # records the source could not hand over whole
        polls: list[Polled] = []
        opened_at = 0.0
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if duration is not None and now - started >= duration:
                    break
                want = self.batch_size - len(payloads) - len(refused)
                if max_events is not None:
                    want = min(want, max_events - stats.polled)
                    if want <= 0:
                        break
                held = bool(payloads or refused)
                wait = 0.2 if not held else max(0.0, min(0.2, opened_at + self.batch_seconds - now))
                if idle_timeout is not None:
                    wait = min(wait, idle_timeout)  # an idle poll must not outlast the caller's patience
                polled = self.source.poll(min(want, self.poll_size), wait)
                now = time.monotonic()
                if len(polled):
                    if not held:
                        opened_at = now
                    payloads.extend(polled.payloads)
                    refused.extend(polled.rejected)
                    polls.append(polled)
                    stats.polled += len(polled)
                    last_event = now
                elif not held and (self.source.exhausted or (
                        idle_timeout is not None and now - last_event >= idle_timeout)):
                    break
                if (payloads or refused) and (len(payloads) + len(refused) >= self.batch_size
                                              or now - opened_at >= self.batch_seconds or not len(polled)):
                    self._flush(payloads, polls, refused)
                    payloads, polls, refused = [], [], []
                if on_progress is not None and now - last_report >= progress_every:
                    last_report = now
                    stats.seconds = now - started
                    stats.lag = self.source.lag()
                    on_progress(stats)
            if payloads or refused:
                self._flush(payloads, polls, refused)
        finally:
            stats.seconds = time.monotonic() - started
            try:
                stats.lag = self.source.lag()
            except Exception:
                stats.lag = None
            self.source.close()
        if on_progress is not None:
            on_progress(stats)
        return stats

    def _flush(self, payloads: list[bytes], polls: list[Polled], refused: Sequence[Rejected] = ()) -> None:
        table, rejected = self.validator.validate(payloads)
        rejected = [*refused, *rejected]
        new = self.sink.commit(table, rejected)
        for processor in self.processors:
            if new.num_rows:
                processor.process(self.source.stream, new)
        self.source.ack(polls)
        self.stats.batches += 1
        self.stats.written += new.num_rows
        self.stats.duplicates += table.num_rows - new.num_rows
        self.stats.dead_letters += len(rejected)


@dataclasses.dataclass(frozen=True)
class ReplayResult:
    """What :func:`replay_dead_letters` did: events accepted now, already stored, and still failing."""

    accepted: int
    duplicates: int
    still_failing: int


def replay_dead_letters(project: Project, schema: EventSchema, *, stream: str | None = None,
                        processors: Sequence[StreamProcessor] = (), chunk: int = 10_000) -> ReplayResult:
    """Validate the schema's pending dead letters again (after a schema fix) and write those that pass.

    Dead letters that pass are marked replayed in the transaction that writes them; the others keep
    their place with their new reason.
    """
    letters = DeadLetters(project.db)
    validator = Validator(schema, window=TimeWindow.from_section(project.settings.section("ingest")))
    sink = OfflineSink(project, schema, stream=stream).open()
    accepted = duplicates = failing = 0
    after = 0
    while True:
        batch = letters.list(schema=schema.name, stream=stream, limit=chunk, after_id=after)
        if not batch:
            break
        after = batch[-1].id
        table, rejected = validator.validate([d.payload for d in batch])
        bad = {r.index: r for r in rejected}
        passed = [d.id for i, d in enumerate(batch) if i not in bad]
        changes = [(batch[i].id, r) for i, r in bad.items()]

        def settle(conn: Connection, ok: list[int] = passed, ch: list[tuple[int, Rejected]] = changes) -> None:
            letters.mark_replayed(conn, ok)
            letters.update_reasons(conn, ch)

        new = sink.commit(table, within=settle)
        for processor in processors:
            if new.num_rows:
                processor.process(stream or schema.name, new)
        accepted += new.num_rows
        duplicates += table.num_rows - new.num_rows
        failing += len(rejected)
    return ReplayResult(accepted=accepted, duplicates=duplicates, still_failing=failing)
