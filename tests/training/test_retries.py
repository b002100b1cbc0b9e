"""Retries and timeouts: a step that fails twice and then succeeds finishes with 3 attempts recorded; one that
runs past its timeout is stopped (its process, and what that process started) and marked ``timed_out``."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from modelmill.errors import InputError
from modelmill.project import Project
from modelmill.training import Pipeline, Runs, pipeline_runs_of, step


def _bump(path: str) -> int:
    """Count the calls in a file (works across processes): returns this call's number."""
    with open(path, "a") as fh:
        fh.write("x")
    return len(Path(path).read_text())


@step(inputs=["counter"], outputs=["value"], retries=2, backoff=0.01)
def fails_twice(counter: str) -> str:
    if _bump(counter) <= 2:
        raise RuntimeError("not yet")
    return "third time"


@step(inputs=["counter"], outputs=["value"], retries=2, backoff=0.01, timeout=60)
def fails_twice_in_a_child(counter: str, ctx: object) -> str:
    n = _bump(counter)
    ctx.record(data_snapshot=f"attempt-{n}")  # type: ignore[attr-defined]
    if n <= 2:
        raise RuntimeError(f"not yet ({os.getpid()})")
    return f"pid {os.getpid()}"


@step(inputs=["pids"], outputs=["never"], timeout=1.5, retries=1, backoff=0)
def hangs(pids: str) -> str:
    child = subprocess.Popen(["sleep", "300"])  # something the step started: it must stop too
    with open(pids, "a") as fh:
        fh.write(f"{os.getpid()} {child.pid}\n")
    time.sleep(300)
    return "unreachable"


def _gone(pid: int) -> bool:
    """The process has exited (or is a zombie, exited and waiting to be reaped), waiting up to 10 s."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("fn", [fails_twice, pytest.param(fails_twice_in_a_child, marks=pytest.mark.slow)],
                         ids=["thread", "child-process"])
def test_a_step_that_fails_twice_then_succeeds_records_three_attempts(project: Project, tmp_path: Path,
                                                                      fn: object) -> None:
    counter = str(tmp_path / "calls")
    result = Pipeline("flaky-step", [fn]).run(project, params={"counter": counter})  # type: ignore[list-item]
    assert result.status == "finished", result.error
    only = result.steps[0]
    assert only.status == "ran" and only.attempts == 3 and Path(counter).read_text() == "xxx"
    stored = pipeline_runs_of(project, "flaky-step")[0]["steps"][0]
    assert stored["attempts"] == 3
    assert [a["status"] for a in stored["attempt_log"]] == ["failed", "failed", "ok"]
    assert "not yet" in stored["attempt_log"][0]["error"] and stored["attempt_log"][2]["error"] is None
    assert [a["retry_in"] for a in stored["attempt_log"][:2]] == [0.01, 0.02]  # exponential backoff
    if fn is fails_twice_in_a_child:
        assert int(result.value("value").split()[1]) != os.getpid()  # it ran in another process
        assert result.lineage["data_snapshot"] == "attempt-3"  # the succeeding attempt's lineage


def test_retries_run_out_and_the_step_fails_with_every_attempt_recorded(project: Project, tmp_path: Path) -> None:
    @step(inputs=["counter"], outputs=["value"], retries=1, backoff=0)
    def always(counter: str) -> str:
        _bump(counter)
        raise ValueError("broken for good")

    result = Pipeline("hopeless", [always]).run(project, params={"counter": str(tmp_path / "c")})
    assert result.status == "failed" and result.failed_step == "always"
    assert result.steps[0].attempts == 2 and "broken for good" in (result.error or "")
    assert (tmp_path / "c").read_text() == "xx"
    stored = pipeline_runs_of(project, "hopeless")[0]
    assert stored["status"] == "failed" and stored["steps"][0]["attempts"] == 2


@pytest.mark.slow  # two attempts of 1.5 s each, and child processes
def test_a_step_past_its_timeout_is_stopped_and_marked(project: Project, tmp_path: Path) -> None:
    pids = tmp_path / "pids"

    @step(inputs=["never"], outputs=["after"])
    def downstream(never: str) -> str:
        return never

    result = Pipeline("hanging", [hangs, downstream]).run(project, params={"pids": str(pids)})
    assert result.status == "failed" and result.failed_step == "hangs"
    assert [s.status for s in result.steps] == ["timed_out", "pending"]
    assert result.steps[0].attempts == 2 and "timeout of 1.5 s" in (result.error or "")
    stored = pipeline_runs_of(project, "hanging")[0]
    assert [a["status"] for a in stored["steps"][0]["attempt_log"]] == ["timed_out", "timed_out"]
    started = [tuple(map(int, line.split())) for line in pids.read_text().splitlines()]
    assert len(started) == 2
    for step_pid, child_pid in started:  # each attempt's process and the process it started are stopped
        assert step_pid != os.getpid() and _gone(step_pid) and _gone(child_pid), (step_pid, child_pid)


def test_a_timed_step_uses_the_tracking_run_from_its_child_process(project: Project) -> None:
    @step(inputs=["n"], outputs=["n2"], timeout=120)
    def tracked(n: int, ctx: object) -> int:
        ctx.run.log_metric("n", n)  # type: ignore[attr-defined]
        ctx.record(training_set=f"ts-{n}")  # type: ignore[attr-defined]
        return n * n

    result = Pipeline("tracked-child", [tracked]).run(project, params={"n": 7})
    assert result.status == "finished", result.error
    assert result.value("n2") == 49 and result.lineage["training_set"] == "ts-7"
    run = Runs(project).get(result.lineage["run_id"])
    assert run.status == "finished" and run.metrics["n"]["last"] == 7


def test_bad_retry_and_timeout_settings_are_named() -> None:
    def fn(a: int) -> int:
        return a

    with pytest.raises(InputError, match="retries"):
        step(inputs=["a"], outputs=["b"], retries=-1)(fn)
    with pytest.raises(InputError, match="timeout"):
        step(inputs=["a"], outputs=["b"], timeout=0)(fn)
    with pytest.raises(InputError, match="backoff"):
        step(inputs=["a"], outputs=["b"], backoff="soon")(fn)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="data"):
        step(inputs=["a"], outputs=["b"], data=["zzz"])(fn)
