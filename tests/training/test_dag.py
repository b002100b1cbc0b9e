"""Pipelines as a DAG: declared inputs order the steps, independent steps run at once, a cycle is refused,
and a failed branch leaves the other branches running; the executor seam runs any step a pipeline hands it."""

from __future__ import annotations

import concurrent.futures
import threading

import pytest

from modelmill.errors import InputError
from modelmill.project import Project
from modelmill.training import Pipeline, pipeline_runs_of, step
from modelmill.training.executors import StepOutcome, StepTask, executor_for, register_executor, run_attempts
from modelmill.training.executors import call_in_thread as _in_thread


def _diamond(calls: list[str], barrier: threading.Barrier | None = None) -> Pipeline:
    # Declared out of order on purpose: the DAG, not the list, decides what runs first.
    @step(inputs=["left", "right"], outputs=["total"])
    def join(left: int, right: int) -> int:
        calls.append("join")
        return left + right

    @step(inputs=["base"], outputs=["left"])
    def double(base: int) -> int:
        if barrier is not None:
            barrier.wait()  # both branches must be running at once to get past here
        calls.append("double")
        return base * 2

    @step(inputs=["base"], outputs=["right"])
    def square(base: int) -> int:
        if barrier is not None:
            barrier.wait()
        calls.append("square")
        return base * base

    @step(inputs=["n"], outputs=["base"])
    def source(n: int) -> int:
        calls.append("source")
        return n + 1

    return Pipeline("diamond", [join, double, square, source])


def test_steps_run_in_dependency_order_whatever_order_they_are_listed_in(project: Project) -> None:
    calls: list[str] = []
    pipe = _diamond(calls)
    assert pipe.order[0] == "source" and pipe.order[-1] == "join"
    assert pipe.upstream["join"] == ("double", "square")
    result = pipe.run(project, params={"n": 2})
    assert result.status == "finished" and result.value("total") == 3 * 2 + 3 * 3
    assert calls[0] == "source" and calls[-1] == "join" and sorted(calls[1:3]) == ["double", "square"]
    assert [s.name for s in result.steps] == ["join", "double", "square", "source"]  # reported as declared
    assert {s.status for s in result.steps} == {"ran"}


def test_independent_steps_run_at_the_same_time(project: Project) -> None:
    # Each branch waits for the other at a barrier: run one after the other, the first would break it.
    barrier = threading.Barrier(2, timeout=60)
    calls: list[str] = []
    result = _diamond(calls, barrier).run(project, params={"n": 3})
    assert result.status == "finished", result.error
    assert not barrier.broken and result.value("total") == 8 + 16


def test_one_step_at_a_time_when_max_parallel_is_one(project: Project) -> None:
    barrier = threading.Barrier(2, timeout=0.5)
    calls: list[str] = []
    pipe = Pipeline("serial", _diamond(calls, barrier).steps, max_parallel=1)
    result = pipe.run(project, params={"n": 3})
    # The first branch waits alone at the barrier and breaks it: the two never overlapped.
    assert result.status == "failed" and "BrokenBarrierError" in (result.error or "")


def test_a_cycle_is_refused_naming_its_steps() -> None:
    @step(inputs=["c"], outputs=["a"])
    def first(c: int) -> int:
        return c

    @step(inputs=["a"], outputs=["b"])
    def second(a: int) -> int:
        return a

    @step(inputs=["b"], outputs=["c"])
    def third(b: int) -> int:
        return b

    with pytest.raises(InputError, match="cycle") as err:
        Pipeline("loop", [first, second, third])
    assert all(name in str(err.value) for name in ("first", "second", "third"))

    @step(inputs=["x"], outputs=["x2", "y"])
    def selfish(x: int) -> tuple[int, int]:
        return x, x

    @step(inputs=["y"], outputs=["x"])
    def back(y: int) -> int:
        return y

    with pytest.raises(InputError, match="cycle"):
        Pipeline("two", [selfish, back])


def test_a_failed_branch_blocks_only_its_downstream_steps_and_resume_finishes_it(project: Project) -> None:
    calls: list[str] = []
    broken = {"on": True}

    @step(inputs=["n"], outputs=["a"])
    def root(n: int) -> int:
        calls.append("root")
        return n

    @step(inputs=["a"], outputs=["b"])
    def fragile(a: int) -> int:
        calls.append("fragile")
        if broken["on"]:
            raise ValueError("planted")
        return a + 1

    @step(inputs=["b"], outputs=["c"])
    def after(b: int) -> int:
        calls.append("after")
        return b * 10

    @step(inputs=["a"], outputs=["d"])
    def sibling(a: int) -> int:
        calls.append("sibling")
        return -a

    pipe = Pipeline("branches", [root, fragile, after, sibling])
    failed = pipe.run(project, params={"n": 5})
    assert failed.status == "failed" and failed.failed_step == "fragile" and "planted" in (failed.error or "")
    assert {s.name: s.status for s in failed.steps} == {"root": "ran", "fragile": "failed", "after": "pending",
                                                        "sibling": "ran"}
    broken["on"] = False
    calls.clear()
    done = pipe.run(project, resume="last")
    assert done.status == "finished" and done.id == failed.id and done.value("c") == 60
    assert {s.name: s.status for s in done.steps} == {"root": "resumed", "fragile": "ran", "after": "ran",
                                                      "sibling": "resumed"}
    assert sorted(calls) == ["after", "fragile"]


class _Recording:
    """An executor of its own: runs each task at once in the caller's thread, and keeps what it was handed."""

    name = "recording"

    def __init__(self) -> None:
        self.tasks: list[StepTask] = []

    def submit(self, task: StepTask) -> concurrent.futures.Future[StepOutcome]:
        self.tasks.append(task)
        fut: concurrent.futures.Future[StepOutcome] = concurrent.futures.Future()
        fut.set_result(run_attempts(task, _in_thread))
        return fut

    def close(self) -> None:
        pass


def test_the_executor_seam_gets_each_step_with_its_inputs_timeout_and_retries(project: Project) -> None:
    calls: list[str] = []
    ex = _Recording()
    result = _diamond(calls).run(project, params={"n": 1}, executor=ex)
    assert result.status == "finished" and result.value("total") == 4 + 4
    handed = {t.step.name: t for t in ex.tasks}
    assert set(handed) == {"source", "double", "square", "join"}
    assert handed["join"].kwargs == {"left": 4, "right": 4} and handed["source"].kwargs == {"n": 1}
    assert handed["source"].timeout is None and handed["source"].retries == 0

    # A scheme registered by another engine is found by its URL; an unknown one is named.
    made: list[str] = []

    def factory(spec: str) -> _Recording:
        made.append(spec)
        return _Recording()

    register_executor("recording", factory)
    assert isinstance(executor_for("recording://here:1"), _Recording) and made == ["recording://here:1"]
    with pytest.raises(InputError, match="executor"):
        executor_for("nowhere://x")
    # Nothing ran twice: the cache served the second run, whoever executes.
    again = _diamond(calls).run(project, params={"n": 1}, executor="recording://here:1")
    assert {s.status for s in again.steps} == {"cached"}
    assert pipeline_runs_of(project, "diamond")[0]["status"] == "finished"
