"""A dead scheduler's claimed trigger is reclaimed once its lease expires: a scheduler process is killed with
SIGKILL mid-pipeline, another scheduler reclaims the trigger and resumes the same pipeline run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from modelmill.config import Settings
from modelmill.project import Project
from modelmill.store.tables.training import pipeline_runs, triggers
from modelmill.training import Scheduler, pipeline_runs_of, trigger
from tests.training import lease_pipelines

ROOT = Path(__file__).resolve().parents[2]
HELD = "tests.training.lease_pipelines:held"


def _wait(predicate: object, what: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what}")


def _row(project: Project, trigger_id: int) -> sa.Row:
    with project.db.engine.connect() as conn:
        return conn.execute(sa.select(triggers).where(triggers.c.id == trigger_id)).one()


@pytest.mark.slow  # a scheduler process, killed, then the pipeline again
def test_a_killed_schedulers_trigger_is_reclaimed_after_its_lease_and_its_run_resumed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home, counter, flag = tmp_path / "home", tmp_path / "calls.txt", tmp_path / "hold"
    flag.touch()
    with Project(Settings.defaults(home=home)) as project:
        tid = trigger(HELD, "nightly", params={"n": 4}, project=project)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODELMILL_")}
        env |= {"MODELMILL_HOME": str(home), "PYTHONPATH": str(ROOT), "MM_TEST_COUNTER": str(counter),
                "MM_TEST_HOLD": str(flag)}
        doomed = subprocess.Popen([sys.executable, "-m", "modelmill", "scheduler", "--lease", "3", "--poll", "0.2",
                                   "--max-seconds", "300"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True)
        try:
            _wait(lambda: Path(f"{flag}.started").exists(), "the doomed scheduler to reach the held step")
            first = _row(project, tid)
            assert first.status == "running" and first.claimed_by and first.pipeline_run_id
            # It renews its lease while the step runs (every third of 3 s).
            _wait(lambda: _row(project, tid).lease_expires_at > first.lease_expires_at, "a lease renewal")
        finally:
            doomed.send_signal(signal.SIGKILL)
            doomed.communicate(timeout=30)
        assert doomed.returncode == -signal.SIGKILL
        dead = _row(project, tid)
        assert dead.status == "running"  # nobody ended it: its scheduler is gone
        expires = dead.lease_expires_at

        flag.unlink()
        monkeypatch.setenv("MM_TEST_COUNTER", str(counter))
        rescuer = Scheduler(project, worker="rescuer", lease=3,
                            resolve=lambda name, _p: lease_pipelines.held)
        assert rescuer.claim(now=expires - 0.01) is None  # its lease still holds
        claimed = rescuer.claim(now=expires + 0.01)
        assert claimed is not None and claimed.id == tid and claimed.reclaims == 1
        assert rescuer.claim(now=expires + 0.01) is None  # one scheduler wins it
        done = rescuer.run_trigger(claimed)
        assert done.status == "finished", done.error

        row = _row(project, tid)
        assert row.status == "finished" and row.claimed_by == "rescuer" and row.reclaims == 1
        assert row.pipeline_run_id == dead.pipeline_run_id  # the same pipeline run, resumed
        with project.db.engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(pipeline_runs)).scalar_one() == 1
        run = pipeline_runs_of(project, "held")[0]
        assert run["status"] == "finished" and run["attempts"] == 2
        assert {s["step"]: s["status"] for s in run["steps"]} == {"prepare": "ran", "hold": "ran"}
        calls = [line.split(":")[0] for line in counter.read_text().split()]
        assert calls == ["prepare", "hold", "hold"]  # prepare ran once, in the killed process
        assert lease_pipelines.held.output(project, row.pipeline_run_id, "held") == 9


def test_a_lease_is_renewed_only_by_its_holder_and_bad_leases_are_refused(project: Project) -> None:
    from modelmill.errors import InputError

    tid = trigger(HELD, "manual", params={"n": 1}, project=project)
    a, b = Scheduler(project, worker="a", lease=5), Scheduler(project, worker="b", lease=5)
    info = a.claim()
    assert info is not None and info.id == tid and info.lease_expires_at is not None
    assert b.claim() is None  # running, lease valid
    assert a.renew(tid) and not b.renew(tid)
    with pytest.raises(InputError, match="lease"):
        Scheduler(project, lease=0)
