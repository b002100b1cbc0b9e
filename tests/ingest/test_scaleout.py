"""Ingestion past one process: ingestors of one consumer group, one of them SIGKILLed mid-stream.

Kafka (Tansu): three ingestors in one group over a three-partition topic; NATS JetStream: two ingestors pulling
from one shared durable consumer; Kinesis (kinesalite): two ingestors leasing two shards in the metadata
database. Each ingestor is its own process writing to one project; one is killed with
SIGKILL once every member has committed a micro-batch. The group moves the dead member's work to the others
(Kafka rebalances its partition after the session timeout, JetStream redelivers its unacked messages after
ack_wait, the dead member's Kinesis leases expire), and the offline store ends with each event exactly once: the count, the id set, and the rows the
processors were handed (new rows only) all equal what was published.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from modelmill.config import Settings
from modelmill.project import Project
from tests.ingest.conftest import Broker, clicks
from tests.ingest.test_crash import written
from tests.ingest.test_kinesis import kinesis_url  # noqa: F401  (the kinesalite fixture)

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}"}

pytestmark = pytest.mark.slow


def start(spec: dict[str, Any]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "tests.ingest.scaleout_consumer", orjson.dumps(spec).decode()],
                            cwd=ROOT, env=ENV)


def marks(folder: Path, consumer: str) -> list[dict[str, Any]]:
    path = folder / f"{consumer}.jsonl"
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.endswith(b"}")]


def wait_for(what: str, cond: Callable[[], bool], procs: list[subprocess.Popen[bytes]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        dead = [p.returncode for p in procs if p.poll() is not None]
        assert not dead, f"a consumer exited ({dead}) before {what}"
        assert time.monotonic() < deadline, f"no {what} after {timeout:.0f} s"
        time.sleep(0.05)


def run_group(broker: Broker, tmp_path: Path, *, names: list[str], n: int, options: dict[str, Any],
              share: int | None, idle: float, publish_first: bool) -> None:
    home, folder = tmp_path / "home", tmp_path / "marks"
    folder.mkdir()
    with Project(Settings.defaults(home=home)) as project:
        assert project.db.schema_version()  # migrate once, before the consumers race to
    events = clicks(n)
    if broker.kind == "kafka":  # the consumers would create a one-partition topic
        from modelmill.ingest.kafka import ensure_topic

        ensure_topic(broker.url, broker.stream, partitions=len(names))
    if publish_first:
        wide = {"kafka": {"partitions": len(names)}, "kinesis": {"shards": len(names)}}.get(broker.kind, {})
        with broker.publisher(**wide) as pub:
            pub.publish(events)
    specs = [{"home": str(home), "url": broker.url, "stream": broker.stream, "group": broker.group,
              "consumer": name, "idle": idle, "options": options, "share": share, "marks": str(folder)}
             for name in names]
    procs = [start(spec) for spec in specs]
    try:
        wait_for("every consumer ready", lambda: all((folder / f"{m}.ready").exists() for m in names), procs, 120)
        if not publish_first:  # every member holds its partition (shard) of the (still empty) stream
            wide = {"kinesis": {"shards": len(names)}}.get(broker.kind, {"partitions": len(names)})
            with broker.publisher(**wide) as pub:
                pub.publish(events)
        wait_for("a batch committed by every consumer", lambda: all(marks(folder, m) for m in names), procs, 120)
        victim = procs[1]
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(30) == -signal.SIGKILL
        at_kill = written(home / "modelmill.db")
        assert at_kill < n, "the stream was consumed before a consumer could be killed"
        for p in procs:
            if p is not victim:
                assert p.wait(240) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(30)
    with Project(Settings.defaults(home=home)) as project:
        ids = project.offline.read("clicks", columns=["id"]).column("id").to_pylist()
    assert len(ids) == n  # count
    assert set(ids) == {f"e{i:07d}" for i in range(n)}  # the ids: nothing lost, so nothing twice
    handed = {m: sum(b["rows"] for b in marks(folder, m)) for m in names}
    # The processors were handed each event once across the group (the sink drops redelivered ones) ...
    assert sum(handed.values()) == n, handed
    # ... and the survivors took over: the dead member's share was written by the others after its death.
    survivors = sum(v for m, v in handed.items() if m != names[1])
    assert survivors >= n - at_kill and handed[names[1]] > 0, (handed, at_kill)


def test_a_kafka_group_of_three_survives_a_sigkilled_member(make_broker: Callable[[str], Broker],
                                                            tmp_path: Path) -> None:
    broker = make_broker("kafka")
    run_group(broker, tmp_path, names=["k1", "k2", "k3"], n=90_000, options={}, share=1, idle=60.0,
              publish_first=False)


def test_two_ingestors_on_a_shared_jetstream_durable_survive_a_sigkill(make_broker: Callable[[str], Broker],
                                                                       tmp_path: Path) -> None:
    broker = make_broker("nats")
    run_group(broker, tmp_path, names=["n1", "n2"], n=150_000, options={"ack_wait": 2.0}, share=None, idle=6.0,
              publish_first=True)


def test_two_kinesis_ingestors_survive_a_sigkill(kinesis_url: str, tmp_path: Path) -> None:  # noqa: F811
    from modelmill.ingest.kinesis import delete_stream

    stream = f"mmt-{uuid.uuid4().hex[:10]}"
    broker = Broker("kinesis", kinesis_url, stream, {}, {})
    db = f"sqlite:///{tmp_path / 'home' / 'modelmill.db'}"  # the group's leases: the project's own database
    try:
        # Each member first holds one of the two shards of the empty stream (share=1), then the events come:
        # published first, one member could read both shards before the other joined, and the other idled out.
        run_group(broker, tmp_path, names=["s1", "s2"], n=30_000,
                  options={"checkpoints": db, "lease_seconds": 3.0, "refresh_seconds": 0.3, "shards": 2}, share=1,
                  idle=8.0, publish_first=False)
    finally:
        delete_stream(kinesis_url, stream)
