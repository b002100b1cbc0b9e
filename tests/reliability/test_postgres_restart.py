"""PostgreSQL restarted: every component reconnects without a restart of its own.

A PostgreSQL cluster of the test's own (never the shared one) holds the metadata of a project. A model
server and in-process stages (registry, route table, tokens, ingestion) are opened before the restart and
used after it, as they are: no reconnect call, no new Project.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pytest

from modelmill.ingest import EventSchema, Field, FileReplaySource, Ingestor
from modelmill.registry import Registry, clear_cache
from modelmill.security import TokenStore
from modelmill.serving import RouteTable, Variant
from tests.reliability.conftest import PgCluster, wait_for
from tests.serving.conftest import COLUMNS, open_project_at, signature, train_lr

pytestmark = pytest.mark.slow

SCHEMA = EventSchema(name="clicks", fields=[Field("id", "string"), Field("ts", "timestamp")], event_id="id",
                     event_time="ts")


def events(start: int, stop: int) -> pa.Table:
    t0 = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)
    return pa.table({"id": [f"e{i}" for i in range(start, stop)], "ts": [t0] * (stop - start)})


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


def test_every_component_reconnects_after_a_postgres_restart(tmp_path: Path, pg_cluster: PgCluster,
                                                              serve: Any) -> None:
    root = tmp_path / "proj"
    root.mkdir()
    (root / "modelmill.toml").write_text(f'home = ".modelmill"\n\n[backends]\ndb = "{pg_cluster.url}"\n\n'
                                         "[serving]\nreload_interval_s = 0.25\nlog_flush_interval_s = 0.2\n")
    clear_cache()
    project = open_project_at(root)  # opened once, used across the restart
    registry, routes, tokens = Registry(project), RouteTable(project), TokenStore(project)
    registry.register("clf", train_lr(0), flavor="sklearn", signature=signature())
    registry.register("clf", train_lr(1), flavor="sklearn", signature=signature())
    registry.set_alias("clf", "production", 1)
    _, admin = tokens.create("admin", name="ops")
    first = Ingestor(project, SCHEMA, FileReplaySource(events(0, 1000), schema=SCHEMA)).run()
    assert first.written == 1000

    proc = serve(root, "--model", "clf@production")
    traffic = Traffic(proc.url, seconds=60)
    traffic.start()
    try:
        time.sleep(1.0)
        restart_at = time.monotonic()
        pg_cluster.restart()
        back_at = time.monotonic()
        time.sleep(1.0)  # a few reload polls of the server meet the new server

        # in-process stages, first call after the restart, same objects
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
        r = httpx.put(f"{proc.url}/v1/models/clf/aliases/production", json={"version": 2}, headers=headers)
        assert r.status_code == 200, r.text
        moved_at = time.monotonic()
        wait_for(lambda: bool(traffic.results) and traffic.results[-1][2] == "2", 10, "traffic on version 2")
        # a token created after the restart is known to the server (its token refresh reconnected too)
        wait_for(lambda: httpx.get(f"{proc.url}/v1/routes", headers={"Authorization": f"Bearer {reader}"})
                 .status_code == 200, 10, "the new token accepted")
    finally:
        traffic.halt.set()
        traffic.join(timeout=20)
        project.close()
        clear_cache()

    # predictions never failed: the server answers from memory while the database is away
    assert {s for _, s, _ in traffic.results} == {200}
    assert any(restart_at <= t <= back_at + 0.5 for t, _, _ in traffic.results)
    assert {v for t, _, v in traffic.results if t < moved_at} == {"1"}
    assert proc.proc.poll() is None  # nothing was restarted but the database
    # the outage is logged once, not at every poll
    log = proc.log.read_text()
    records = [line for line in log.splitlines() if line.startswith(("ERROR:", "WARNING:"))]
    assert log.count("reloading routes failed") <= 1 and len(records) < 10, log[-3000:]
