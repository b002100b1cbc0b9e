"""The exactly-once crash test (tests/ingest/test_crash.py) with the offline store on S3 (moto on loopback).

S3 has no atomic rename: the sink uploads each file straight to its final key and commits in the metadata
database (see modelmill.ingest.sink). Consumers SIGKILLed mid-batch (mid-upload, between upload and commit,
after commit before ack) must still leave every published event stored exactly once.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from modelmill.config import Settings
from modelmill.project import Project
from tests.ingest.conftest import CLICKS, Broker, click, clicks
from tests.ingest.crash import ROOT, kill_mid_batch, written
from tests.s3 import s3_bucket, s3_server  # noqa: F401  (fixtures, taken through request)


@pytest.mark.slow
def test_sigkilled_consumers_writing_to_s3_lose_and_double_nothing(
        make_broker: Callable[[str], Broker], tmp_path: Path, request: pytest.FixtureRequest) -> None:
    bucket = request.getfixturevalue("s3_bucket")
    offline = f"{bucket}/offline"
    n = 200_000  # uploads to S3 are slower than disk: four killed runs leave most of the stream unread
    broker = make_broker("nats")
    with broker.publisher() as pub:
        pub.publish(clicks(n))
    home = tmp_path / "home"
    db_path = home / "modelmill.db"
    settings = Settings.defaults(home=home).replace(offline=offline)
    with Project(settings) as project:
        assert project.db.schema_version()  # migrate once, before the consumers race to
    rng = random.Random(19)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}"}
    command = [sys.executable, "-m", "tests.ingest.crash_consumer_s3", str(home), offline, broker.url,
               broker.stream, broker.group]
    kills = kill_mid_batch(command, env, db_path, n=n, rng=rng, first_commit_s=90, jitter_s=0.8)
    assert kills == 4
    # Killed after a commit, before its ack: the batch comes again and the event-id index stores it once.
    before = written(db_path)
    died = subprocess.run([*command, "30", "die-after-commit"], cwd=ROOT, env=env, timeout=180)
    assert died.returncode == -signal.SIGKILL and before < written(db_path) <= n
    final = subprocess.run([*command, "4"], cwd=ROOT, env=env, timeout=300)
    assert final.returncode == 0
    with Project(settings) as project:
        stored = project.offline.read("clicks", columns=[CLICKS.event_id, "user", "price"]).to_pylist()
        files = project.offline.fs.find(project.offline.table_path("clicks").split("://", 1)[1])
    assert len(stored) == n  # count
    assert sorted((r["id"], r["user"], r["price"]) for r in stored) == [
        (e["id"], e["user"], e["price"]) for e in map(click, range(n))]  # each event once, whole
    # Every object is a committed batch's file: no temporary or orphaned key survived the crashes.
    assert files and all(Path(f).name.startswith("ingest-") and f.endswith(".parquet") for f in files)
    with Project(settings) as project, project.db.engine.connect() as conn:
        committed = {f"ingest-{seq:012d}.parquet" for (seq,) in conn.execute(sa.text(
            "SELECT seq FROM ingest_batches"))}
    assert {Path(f).name for f in files} == committed
