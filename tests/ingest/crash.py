"""What the exactly-once crash tests (test_crash.py on disk, test_crash_s3.py on S3) and benchmarks/engines.py
share: the outside observer's count of committed events, and the rounds of consumers SIGKILLed mid-batch."""

from __future__ import annotations

import random
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[2]


def written(db_path: Path) -> int:
    """Events committed so far (read straight from the metadata database, as an outside observer)."""
    if not db_path.exists():
        return 0
    engine = sa.create_engine(f"sqlite:///{db_path}")
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT coalesce(sum(rows), 0) FROM ingest_batches")).scalar() or 0)
    except sa.exc.OperationalError:
        return 0
    finally:
        engine.dispose()


def kill_mid_batch(command: Sequence[str], env: Mapping[str, str], db_path: Path, *, n: int, rng: random.Random,
                   rounds: int = 4, first_commit_s: float = 60, jitter_s: float = 0.6) -> int:
    """Start the consumer ``command`` ``rounds`` times; each time wait for its first commit, then SIGKILL it
    somewhere inside the next micro-batch (poll, write or upload, commit, ack), ``jitter_s`` at most later.
    Returns how many runs were killed alive; each round asserts that part of the ``n`` events was left unread, so
    the next one still has a stream to be killed in."""
    kills = 0
    for _ in range(rounds):
        before = written(db_path)
        proc = subprocess.Popen([*command, "30"], cwd=ROOT, env=dict(env))
        deadline = time.monotonic() + first_commit_s
        while written(db_path) <= before and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, jitter_s))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(30)
        assert written(db_path) < n, "the stream was consumed before the consumer could be killed"
    return kills
