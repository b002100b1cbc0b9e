"""PostgreSQL down for seconds: every component rides through it and reconnects without a restart of its own.

A PostgreSQL cluster of the test's own (never the shared one) holds the metadata of a project. A model
server, an ingestor that keeps consuming a live stream, and in-process stages (registry, route table,
tokens) are opened before the outage and used after it, as they are: no reconnect call, no new Project.
The server is stopped (a crash: ``pg_ctl stop -m immediate``) and held down until the outage was felt by
everyone and lasted at least ``DOWN_S``, then started again.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pyarrow as pa
import pytest

from modelmill.errors import BackendUnavailable, StoreError
from modelmill.ingest import EventSchema, Field, FileReplaySource, Ingestor, open_publisher, open_source
from modelmill.project import Project
from modelmill.registry import Registry, clear_cache
from modelmill.security import TokenStore
from modelmill.serving import RouteTable, Variant
from tests.reliability.conftest import PgCluster, wait_for
from tests.serving.conftest import COLUMNS, open_project_at, signature, train_lr

pytestmark = pytest.mark.slow

SCHEMA = EventSchema(name="clicks", fields=[Field("id", "string"), Field("ts", "timestamp")], event_id="id",
                     event_time="ts")
T0 = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)
DOWN_S = 3.0  # the least time the database stays away
STREAMED = 6_000  # events published to the live stream, e2000 to e7999: a third before, during, after
BATCH = 100


def events(start: int, stop: int) -> pa.Table:
    return pa.table({"id": [f"e{i}" for i in range(start, stop)], "ts": [T0] * (stop - start)})


class Traffic(threading.Thread):
    def __init__(self, url: str, seconds: float) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.seconds = seconds
        self.results: list[tuple[float, int, str]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        x = np.random.default_rng(0).normal(size=(1, len(COLUMNS)))
        body = {"inputs": [{"name": "input", "shape": [1, len(COLUMNS)], "datatype": "FP64", "data": x.tolist()}]}
        deadline = time.monotonic() + self.seconds
        with httpx.Client(timeout=10) as client:
            while not self.halt.is_set() and time.monotonic() < deadline:
                r = client.post(f"{self.url}/v2/models/clf/infer", json=body)
                self.results.append((time.monotonic(), r.status_code,
                                     r.json().get("model_version", "") if r.status_code == 200 else r.text))
                time.sleep(0.005)

    def since(self, t: float, until: float = float("inf")) -> list[tuple[float, int, str]]:
        return [r for r in list(self.results) if t <= r[0] < until]


class Producer(threading.Thread):
    """Publishes STREAMED events to a local log (no database involved), in batches, up to ``allowed`` so far:
    the test raises it before, during and after the outage, so each phase has events of its own."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.sent = 0
        self.allowed = 0
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            publisher = open_publisher(self.url, stream="clicks").open()
            try:
                while self.sent < STREAMED and not self.halt.is_set():
                    if self.sent >= self.allowed:
                        time.sleep(0.01)
                        continue
                    first = 2000 + self.sent
                    publisher.publish([orjson.dumps({"id": f"e{i}", "ts": T0.timestamp()})
                                       for i in range(first, first + BATCH)])
                    self.sent += BATCH
                    time.sleep(0.02)
            finally:
                publisher.close()
        except BaseException as exc:  # reported by the test
            self.error = exc


class Consumer(threading.Thread):
    """One Ingestor on the live stream, run again by a supervisor (this loop) when it stops on a StoreError.

    ``failures`` holds what stopped it: a database outage must surface as a StoreError (the one exception
    tree), never a driver's exception, which would end the loop and be reported by the test.
    """

    def __init__(self, project: Project, url: str, seconds: float) -> None:
        super().__init__(daemon=True)
        self.project = project
        self.url = url
        self.deadline = time.monotonic() + seconds
        self.failures: list[StoreError] = []
        self.written = 0
        self.halt = threading.Event()
        self.current: Ingestor | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.halt.is_set() and time.monotonic() < self.deadline:
                self.current = Ingestor(self.project, SCHEMA, open_source(self.url, stream="clicks", group="ingest"),
                                        batch_size=500, batch_seconds=0.2)
                try:
                    self.current.run(duration=max(0.0, self.deadline - time.monotonic()))
                except StoreError as exc:
                    self.failures.append(exc)
                    time.sleep(0.2)
                finally:
                    self.written += self.current.stats.written
        except BaseException as exc:
            self.error = exc

    def stop(self) -> None:
        self.halt.set()
        if self.current is not None:
            self.current.stop()
        self.join(timeout=30)


def stored(project: Project) -> tuple[int, int]:
    if not project.offline.exists("clicks"):
        return 0, 0
    with project.offline.connect(["clicks"]) as con:
        total, distinct = con.execute("SELECT count(*), count(DISTINCT id) FROM clicks").fetchone()
    return int(total), int(distinct)


def test_every_component_rides_through_seconds_of_postgres_downtime(tmp_path: Path, pg_cluster: PgCluster,
                                                                     serve: Any) -> None:
    root = tmp_path / "proj"
    root.mkdir()
    broker = f"local://{tmp_path / 'log'}"
    (root / "modelmill.toml").write_text(f'home = ".modelmill"\n\n[backends]\ndb = "{pg_cluster.url}"\n\n'
                                         "[serving]\nreload_interval_s = 0.25\nlog_flush_interval_s = 0.2\n")
    clear_cache()
    project = open_project_at(root)  # opened once, used across the outage
    registry, routes, tokens = Registry(project), RouteTable(project), TokenStore(project)
    registry.register("clf", train_lr(0), flavor="sklearn", signature=signature())
    registry.register("clf", train_lr(1), flavor="sklearn", signature=signature())
    registry.set_alias("clf", "production", 1)
    _, admin = tokens.create("admin", name="ops")
    first = Ingestor(project, SCHEMA, FileReplaySource(events(0, 1000), schema=SCHEMA)).run()
    assert first.written == 1000

    proc = serve(root, "--model", "clf@production")
    traffic = Traffic(proc.url, seconds=120)
    producer = Producer(broker)
    consumer = Consumer(project, broker, seconds=120)
    traffic.start()
    producer.start()
    consumer.start()
    try:
        producer.allowed = STREAMED // 3
        wait_for(lambda: len(traffic.results) >= 20 and stored(project)[1] >= 1000 + STREAMED // 3, 30,
                 "traffic answered and the first part of the live stream stored")
        pg_cluster.stop()  # immediate: a crash, every connection cut
        down_at = time.monotonic()
        producer.allowed = 2 * STREAMED // 3  # published and polled while the database is away
        # held down until everyone met the outage: the ingestor's commit failed, the server's reload poll
        # failed, traffic was answered meanwhile, the stream moved on; and at least DOWN_S
        def felt() -> bool:
            assert consumer.error is None, f"the ingestor stopped on {consumer.error!r}"
            return (bool(consumer.failures) and "reloading routes failed" in proc.log.read_text()
                    and len(traffic.since(down_at)) >= 20 and producer.sent == producer.allowed
                    and time.monotonic() - down_at >= DOWN_S)

        wait_for(felt, 60, "the outage felt by every component")
        up_at = time.monotonic()
        pg_cluster.start()
        producer.allowed = STREAMED

        # in-process stages, first calls after the outage, same objects
        assert registry.resolve("clf@production").version == 1
        mv3 = registry.register("clf", train_lr(2), flavor="sklearn", signature=signature())
        assert mv3.version == 3
        routes.set("other", [Variant("a", 1)])
        assert routes.get("other").variants[0].name == "a"
        _, reader = tokens.create("read", name="after-restart")
        assert tokens.verify(reader) is not None
        again = Ingestor(project, SCHEMA, FileReplaySource(events(500, 1500), schema=SCHEMA)).run()
        assert (again.written, again.duplicates) == (500, 500)  # the id index in PostgreSQL still dedups

        # the running server, through its admin API and its reload poll
        headers = {"Authorization": f"Bearer {admin}"}
        # answers received before the move was sent came from version 1; one in flight beside the PUT may
        # already see version 2 (the server applies the alias before its answer to the PUT reaches us)
        moved_at = time.monotonic()
        r = httpx.put(f"{proc.url}/v1/models/clf/aliases/production", json={"version": 2}, headers=headers)
        assert r.status_code == 200, r.text
        wait_for(lambda: bool(traffic.results) and traffic.results[-1][2] == "2", 10, "traffic on version 2")
        # a token created after the outage is known to the server (its token refresh reconnected too)
        wait_for(lambda: httpx.get(f"{proc.url}/v1/routes", headers={"Authorization": f"Bearer {reader}"})
                 .status_code == 200, 10, "the new token accepted")
        # the live stream, through the outage: every event stored once
        wait_for(lambda: producer.sent == STREAMED and stored(project)[1] >= 1500 + STREAMED, 60,
                 "every streamed event stored")
    finally:
        traffic.halt.set()
        producer.halt.set()
        consumer.stop()
        traffic.join(timeout=20)
        producer.join(timeout=20)
        total, distinct = stored(project)
        project.close()
        clear_cache()

    assert producer.error is None and consumer.error is None, (producer.error, consumer.error)
    # nothing lost, nothing doubled: the replayed file (e0-e1499) and the live stream (e2000-e7999)
    assert (total, distinct) == (1500 + STREAMED, 1500 + STREAMED)
    assert consumer.written == STREAMED  # each streamed event written by the ingestor once, none twice
    # it stopped on the outage only as a StoreError naming the database, and its supervisor ran it again
    assert consumer.failures and all(isinstance(f, BackendUnavailable) and f.backend == "database"
                                     for f in consumer.failures), consumer.failures
    # predictions never failed: the server answers from memory while the database is away
    assert {s for _, s, _ in traffic.results} == {200}
    assert len(traffic.since(down_at, up_at)) >= 20
    assert {v for t, _, v in traffic.results if t < moved_at} == {"1"}
    assert proc.proc.poll() is None  # nothing was restarted but the database
    # the outage is logged once, not at every poll
    log = proc.log.read_text()
    records = [line for line in log.splitlines() if line.startswith(("ERROR:", "WARNING:"))]
    assert log.count("reloading routes failed") <= 1 and len(records) < 10, log[-3000:]
