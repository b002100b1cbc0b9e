"""A NATS consumer killed with SIGKILL mid-stream, again and again: every event lands exactly once."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from modelmill.config import Settings
from modelmill.project import Project
from tests.ingest.conftest import CLICKS, Broker, click, clicks
from tests.ingest.crash import ROOT, kill_mid_batch, written


@pytest.mark.slow
def test_sigkilled_consumer_loses_and_doubles_nothing(make_broker: Callable[[str], Broker], tmp_path: Path) -> None:
    # Each killed run commits up to ~3 batches of 20,000 (it dies 0-0.6 s after its first commit); four of them
    # plus the die-after-commit run must leave part of the stream unread on a fast machine too.
    n = 400_000
    broker = make_broker("nats")
    events = clicks(n)
    with broker.publisher() as pub:
        pub.publish(events)
    home = tmp_path / "home"
    db_path = home / "modelmill.db"
    with Project(Settings.defaults(home=home)) as project:
        assert project.db.schema_version()  # migrate once, before the consumers race to
    rng = random.Random(11)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}"}
    command = [sys.executable, "-m", "tests.ingest.crash_consumer", str(home), broker.url, broker.stream,
               broker.group]
    kills = kill_mid_batch(command, env, db_path, n=n, rng=rng)
    assert kills == 4
    # One more run is killed in the window the random kills may never hit: after a commit, before its ack (a
    # processor SIGKILLs it). That batch is delivered again, and only the sink's event-id index stores it once.
    before = written(db_path)
    died = subprocess.run([*command, "30", "die-after-commit"], cwd=ROOT, env=env, timeout=120)
    # (its committed batch may be the stream's last: the redelivery is then all that is left to store once)
    assert died.returncode == -signal.SIGKILL and before < written(db_path) <= n
    # The last run outlives ack_wait (2 s), so the killed consumers' unacked events come back.
    final = subprocess.run([*command, "4"], cwd=ROOT, env=env, timeout=180)
    assert final.returncode == 0
    with Project(Settings.defaults(home=home)) as project:
        ids = project.offline.read("clicks", columns=["id"]).column("id").to_pylist()
    assert len(ids) == n  # count
    assert set(ids) == {f"e{i:07d}" for i in range(n)}  # id set: nothing lost, so nothing doubled
    with Project(Settings.defaults(home=home)) as project:
        stored = project.offline.read("clicks", columns=[CLICKS.event_id, "user", "price"]).to_pylist()
    # Each event is stored whole, as published under its id: no row mixes two deliveries or loses a field.
    assert sorted((r["id"], r["user"], r["price"]) for r in stored) == [
        (e["id"], e["user"], e["price"]) for e in map(click, range(n))]
