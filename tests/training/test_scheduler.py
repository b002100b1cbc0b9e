"""The scheduler: every trigger starts its pipeline exactly once, whatever number of schedulers poll."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from modelmill.cli import app
from modelmill.config import Settings
from modelmill.errors import ConflictError, InputError
from modelmill.project import Project
from modelmill.store.tables.training import pipeline_runs, triggers
from modelmill.training import Scheduler, trigger

ROOT = Path(__file__).resolve().parents[2]
MARKER = "tests.training.sample_pipelines:marker"


def _schedulers(home: Path, counter: Path, n: int, db: str | None = None) -> list[dict[str, object]]:
    meet = counter.parent / "meet"  # each scheduler's first step waits for the others' (sample_pipelines._meet)
    meet.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELMILL_")}
    env |= {"MODELMILL_HOME": str(home), "PYTHONPATH": str(ROOT), "MM_TEST_COUNTER": str(counter),
            "MM_TEST_MEET": f"{meet}:{n}"}
    if db:
        env["MODELMILL_DB"] = db
    procs = [subprocess.Popen([sys.executable, "-m", "modelmill", "scheduler", "--once", "--json"], cwd=ROOT,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(n)]
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=180)
        assert p.returncode == 0, stderr
        outs.append(json.loads(stdout))
    return outs


def _exactly_once(project: Project, home: Path, tmp_path: Path, db: str | None = None) -> None:
    ids = [trigger(MARKER, f"alert {i}", key=f"alert-{i}", params={"tag": f"t{i}"}, project=project)
           for i in range(6)]
    # The same alert firing again is the same trigger.
    assert trigger(MARKER, "alert 0 again", key="alert-0", params={"tag": "t0"}, project=project) == ids[0]
    counter = tmp_path / "calls.txt"
    outs = _schedulers(home, counter, 2, db)
    ran = [t["id"] for out in outs for t in out["ran"]]  # type: ignore[union-attr,index]
    assert sorted(ran) == sorted(ids), outs  # each trigger ran, and by one scheduler only
    # both schedulers ran triggers: they competed for the queue, rather than one draining it alone
    assert len({out["worker"] for out in outs}) == 2 and all(out["ran"] for out in outs), outs
    assert sorted(counter.read_text().split()) == sorted(f"slow_mark:t{i}" for i in range(6))
    with project.db.engine.connect() as conn:
        rows = conn.execute(sa.select(triggers)).all()
        starts = conn.execute(sa.select(pipeline_runs.c.reason)).scalars().all()
    assert {r.status for r in rows} == {"finished"} and len(rows) == 6
    assert sorted(starts) == sorted(f"trigger {r.id}: {r.reason}" for r in rows)
    assert Scheduler(project).tick() == []  # nothing left: nothing runs twice


def test_each_trigger_starts_once_with_two_schedulers_on_sqlite(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with Project(Settings.defaults(home=home)) as project:
        _exactly_once(project, home, tmp_path)


@pytest.mark.slow
def test_each_trigger_starts_once_with_two_schedulers_on_postgres(tmp_path: Path, pg_url: str) -> None:
    home = tmp_path / "home"
    with Project(Settings.defaults(home=home).replace(db=pg_url)) as project:
        _exactly_once(project, home, tmp_path, pg_url)


def test_cron_ticks_collapse_into_one_trigger_each(project: Project, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MM_TEST_COUNTER", str(tmp_path / "calls.txt"))
    t0 = 1_700_000_000 - 1_700_000_000 % 60 + 10  # 10 s past a minute
    a, b = Scheduler(project), Scheduler(project)
    a.schedule(MARKER, "* * * * *", params={"tag": "cron"}, now=t0)
    assert a.enqueue_due(now=t0 + 5) == []  # the next tick is 50 s away
    made = a.enqueue_due(now=t0 + 200)  # three ticks missed: one run
    assert len(made) == 1
    assert b.enqueue_due(now=t0 + 200) == [] and a.enqueue_due(now=t0 + 200) == []
    ran = b.tick(now=t0 + 200)
    assert [t.id for t in ran] == made and ran[0].status == "finished"
    assert "cron * * * * *" in ran[0].reason
    assert len(a.enqueue_due(now=t0 + 270)) == 1  # the next minute is a new tick
    with pytest.raises(InputError, match="cron"):
        a.schedule(MARKER, "every day")


def test_a_failing_pipeline_fails_its_trigger_and_a_stuck_one_can_be_requeued(project: Project) -> None:
    sched = Scheduler(project)
    bad = trigger("tests.training.sample_pipelines:nothing", "manual", project=project)
    [done] = sched.tick()
    assert done.id == bad and done.status == "failed" and "not found" in (done.error or "")
    stuck = trigger(MARKER, "manual", params={"tag": "stuck"}, project=project)
    claimed = sched.claim()
    assert claimed is not None and claimed.id == stuck and sched.claim() is None
    sched.requeue(stuck)
    with pytest.raises(ConflictError):
        sched.requeue(stuck)
    with pytest.raises(InputError, match="reason"):
        trigger(MARKER, " ", project=project)


def test_four_schedulers_in_threads_share_the_triggers_without_overlap(project: Project, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from concurrent.futures import ThreadPoolExecutor

    counter = tmp_path / "calls.txt"
    monkeypatch.setenv("MM_TEST_COUNTER", str(counter))
    ids = [trigger(MARKER, "load test", params={"tag": f"x{i}"}, project=project) for i in range(12)]
    with ThreadPoolExecutor(4) as pool:
        done = list(pool.map(lambda _i: Scheduler(project).tick(), range(4)))
    ran = [t.id for batch in done for t in batch]
    assert sorted(ran) == ids
    assert sorted(counter.read_text().split()) == sorted(f"slow_mark:x{i}" for i in range(12))


def _cli(*args: str) -> dict[str, Any]:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    out: dict[str, Any] = json.loads(result.stdout)
    return out


def _mm(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELMILL_")}
    env |= {"MODELMILL_HOME": str(home), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "modelmill", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=180)


def test_pipeline_cli_schedule_trigger_and_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("MODELMILL_HOME", str(home))
    monkeypatch.chdir(ROOT)
    made = _cli("pipeline", "schedule", MARKER, "--cron", "0 3 * * *", "-p", "tag=nightly", "--json")["schedule"]
    assert made["pipeline"] == MARKER and made["cron"] == "0 3 * * *" and made["params"] == {"tag": "nightly"}
    assert made["next_tick"] % 86_400 == 3 * 3600  # 03:00 UTC
    assert [s["pipeline"] for s in _cli("pipeline", "schedules", "--json")["schedules"]] == [MARKER]
    bad = _mm(home, "pipeline", "schedule", MARKER, "--cron", "every day", "--json")
    assert bad.returncode == 2 and "cron" in json.loads(bad.stdout)["error"] and "Traceback" not in bad.stderr

    first = _cli("pipeline", "trigger", MARKER, "--reason", "data delivery", "--key", "d-1", "-p", "tag=cli",
                 "--json")
    again = _cli("pipeline", "trigger", MARKER, "--reason", "data delivery", "--key", "d-1", "-p", "tag=cli",
                 "--json")
    assert first["trigger_id"] == again["trigger_id"]  # one key, one run
    ran = _cli("scheduler", "--once", "--json")
    assert [(t["id"], t["status"]) for t in ran["ran"]] == [(first["trigger_id"], "finished")] and ran["failed"] == 0
    [run] = _cli("pipeline", "runs", MARKER, "--json")["pipeline_runs"]
    assert run["status"] == "finished" and run["params"] == {"tag": "cli"} and run["pipeline"] == "marker"
    assert run["id"] == ran["ran"][0]["pipeline_run_id"]

    # A trigger that fails makes `scheduler --once` fail, so the cron job or CI step that runs it sees it.
    broken = _cli("pipeline", "trigger", "tests.training.sample_pipelines:nothing", "--reason", "typo", "--json")
    failed = _mm(home, "scheduler", "--once", "--json")
    assert failed.returncode == 1, failed.stderr
    out = json.loads(failed.stdout)
    assert out["failed"] == 1 and out["ran"][0]["id"] == broken["trigger_id"] and "not found" in out["ran"][0]["error"]
    assert "1 of 1 triggers failed" in failed.stderr and "Traceback" not in failed.stderr

    assert _cli("pipeline", "unschedule", MARKER, "--json") == {"unscheduled": MARKER}
    assert _cli("pipeline", "schedules", "--json")["schedules"] == []
    gone = _mm(home, "pipeline", "unschedule", MARKER, "--json")
    assert gone.returncode != 0 and "schedule" in json.loads(gone.stdout)["error"]
