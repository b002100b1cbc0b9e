"""NATS restarted (crashed) in the middle of ingestion: nothing lost, nothing doubled.

A NATS JetStream server of the test's own is killed while a producer publishes and an ingestor consumes.
Producer and consumer do what a deployment does when their broker goes away: the producer re-sends the
batch it could not confirm (so the stream may hold copies), the consumer process is started again by its
supervisor (here, a loop) and resumes from the durable consumer. At-least-once delivery plus the sink's
event-id index must still leave every event in the offline store exactly once.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from pathlib import Path

import orjson
import pytest

from modelmill.config import Settings
from modelmill.errors import StoreError
from modelmill.ingest import EventSchema, Field, Ingestor, open_publisher, open_source
from modelmill.project import Project
from tests.reliability.conftest import NatsServer, wait_for

pytestmark = pytest.mark.slow

N_EVENTS = 20_000
BATCH = 500
SCHEMA = EventSchema(name="clicks", fields=[Field("id", "string"), Field("ts", "timestamp"), Field("n", "int")],
                     event_id="id", event_time="ts")


def payloads(start: int, stop: int) -> list[bytes]:
    t0 = dt.datetime(2024, 5, 1, tzinfo=dt.UTC).timestamp()
    return [orjson.dumps({"id": f"e{i}", "ts": t0 + i, "n": i}) for i in range(start, stop)]


class Producer(threading.Thread):
    """Publishes N_EVENTS in batches, re-sending a batch whose acks did not all come back.

    Half-way it stops (``paused`` is set) until the test sets ``resume``, so the crash lands in the middle of
    the stream by construction, whatever the machine's speed.
    """

    def __init__(self, url: str, deadline: float) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.deadline = deadline
        self.sent = 0
        self.retries = 0
        self.paused = threading.Event()
        self.resume = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        publisher = None
        try:
            while self.sent < N_EVENTS and time.monotonic() < self.deadline:
                if self.sent == N_EVENTS // 2 and not self.resume.is_set():
                    self.paused.set()
                    self.resume.wait(max(0.0, self.deadline - time.monotonic()))
                    # Unsure whether the broker kept its last batch before the crash, it sends that batch again:
                    # the stream holds copies for certain, and only the sink's event-id index keeps them out.
                    self.sent -= BATCH
                batch = payloads(self.sent, min(self.sent + BATCH, N_EVENTS))
                try:
                    if publisher is None:
                        publisher = open_publisher(self.url, stream="clicks").open()
                    publisher.publish(batch)
                    self.sent += len(batch)
                    time.sleep(0.01)  # a steady stream, so the restart lands mid-ingestion
                except StoreError:  # the broker is away: reconnect and send the same batch again
                    self.retries += 1
                    if publisher is not None:
                        publisher.close()
                    publisher = None
                    time.sleep(0.2)
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            if publisher is not None:
                publisher.close()


class Consumer(threading.Thread):
    """An ingestor, started again whenever it stops on a broker error (what a process supervisor does)."""

    def __init__(self, project: Project, url: str, deadline: float) -> None:
        super().__init__(daemon=True)
        self.project = project
        self.url = url
        self.deadline = deadline
        self.restarts = 0
        self.done = threading.Event()
        self.current: Ingestor | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.done.is_set() and time.monotonic() < self.deadline:
                try:
                    source = open_source(self.url, stream="clicks", group="ingest", ack_wait=3.0)
                    self.current = Ingestor(self.project, SCHEMA, source, batch_size=2_000, batch_seconds=0.5)
                    self.current.run(duration=max(0.0, self.deadline - time.monotonic()))
                except StoreError:
                    self.restarts += 1
                    time.sleep(0.2)
        except BaseException as exc:
            self.error = exc

    def stop(self) -> None:
        self.done.set()
        if self.current is not None:
            self.current.stop()
        self.join(timeout=30)


def stored(project: Project) -> tuple[int, int]:
    if not project.offline.exists("clicks"):
        return 0, 0
    with project.offline.connect(["clicks"]) as con:
        total, distinct = con.execute("SELECT count(*), count(DISTINCT id) FROM clicks").fetchone()
    return int(total), int(distinct)


def test_nats_crash_mid_ingestion_loses_and_doubles_nothing(tmp_path: Path, nats_server: NatsServer) -> None:
    project = Project(Settings.defaults(home=tmp_path / ".modelmill"))
    deadline = time.monotonic() + 90
    producer = Producer(nats_server.url, deadline)
    consumer = Consumer(project, nats_server.url, deadline)
    try:
        producer.start()
        consumer.start()
        # the crash lands mid-stream: half the events published, the ingestor part-way through them
        wait_for(lambda: producer.paused.is_set() and stored(project)[0] > 2_000, 30, "the first events written")
        at_kill = stored(project)[1]
        nats_server.kill()
        producer.resume.set()  # its next batches meet the dead broker
        time.sleep(1.0)  # how long the broker stays away (nothing is judged by it)
        nats_server.start()
        wait_for(lambda: producer.sent >= N_EVENTS and stored(project)[1] >= N_EVENTS, 60,
                 "every event stored after the restart")
        time.sleep(1.0)  # any late redelivery would show as a double now
    finally:
        consumer.stop()
        producer.join(timeout=30)
        project.close()
    assert producer.error is None and consumer.error is None, (producer.error, consumer.error)
    total, distinct = stored(project)
    assert (total, distinct) == (N_EVENTS, N_EVENTS)  # nothing lost, nothing doubled
    assert producer.retries + consumer.restarts > 0  # the restart was felt
    assert 0 < at_kill < N_EVENTS
