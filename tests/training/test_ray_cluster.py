"""Pipelines on a real two-node Ray cluster (``executor="ray://HOST:PORT"``): steps run as Ray tasks in worker
processes of the cluster, independent ones at once; retries are recorded per attempt and a step past its timeout
has its task cancelled (its worker killed) and is marked ``timed_out``."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from modelmill.errors import InputError
from modelmill.project import Project
from modelmill.training import Pipeline, pipeline_runs_of, step
from modelmill.training.executors import executor_for
from tests.conftest import need
from tests.serving.conftest import free_port
from tests.training.test_retries import _gone, fails_twice


def _where() -> dict[str, Any]:
    import ray

    # a step run locally (the comparison run) has no Ray: asking for its context would start one here
    return {"pid": os.getpid(), "node": ray.get_runtime_context().get_node_id() if ray.is_initialized() else None}


def _meet(prefix: str, me: str, other: str) -> bool:
    """A rendezvous of the two branches through files: true when ``other`` arrived while ``me`` was running, which
    proves they ran at once, whatever the machine's load (no clock is compared). ``prefix`` names no existing
    path, so the pipeline does not fingerprint it as data (the files it gains would change the cache key)."""
    Path(prefix + me).touch()
    deadline = time.monotonic() + 90
    while not Path(prefix + other).exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@step(inputs=["n", "meet"], outputs=["left"])
def left(n: int, meet: str) -> dict[str, Any]:
    return {"value": n * 2, "met": _meet(meet, "left", "right"), **_where()}


@step(inputs=["n", "meet"], outputs=["right"])
def right(n: int, meet: str) -> dict[str, Any]:
    return {"value": n * 3, "met": _meet(meet, "right", "left"), **_where()}


@step(inputs=["left", "right"], outputs=["total"])
def total(left: dict[str, Any], right: dict[str, Any], ctx: Any) -> int:
    ctx.record(data_snapshot="ray-total")
    return int(left["value"] + right["value"])


@step(inputs=["pids"], outputs=["never"], timeout=3, retries=1, backoff=0)
def hangs_on_ray(pids: str) -> str:
    with open(pids, "a") as fh:
        fh.write(f"{os.getpid()}\n")
    time.sleep(300)
    return "unreachable"


@pytest.mark.slow  # a two-node Ray cluster starts (about 30 s on two busy cores)
def test_a_dag_runs_as_ray_tasks_on_the_cluster(project: Project, tmp_path: Path, ray_cluster: Any) -> None:
    pipe = Pipeline("ray-diamond", [total, left, right], executor=ray_cluster.client_address)
    params = {"n": 7, "meet": f"{tmp_path}/ray-"}
    result = pipe.run(project, params=params)
    assert result.status == "finished", result.error
    assert result.value("total") == 35 and {s.status for s in result.steps} == {"ran"}
    branches = [result.value("left"), result.value("right")]
    assert all(b["pid"] != os.getpid() for b in branches)  # in the cluster's workers, not here
    assert all(len(b["node"]) == 56 for b in branches)
    assert all(b["met"] for b in branches)  # the branches ran at once: each saw the other arrive
    assert "ray-total" in json.dumps(result.lineage, default=str)  # the step's ctx.record reached the lineage
    local = Pipeline("ray-diamond-local", [total, left, right]).run(project, params={**params,
                                                                                      "meet": f"{tmp_path}/local-"})
    assert local.value("total") == result.value("total")
    again = pipe.run(project, params=params)  # nothing changed: every step is a cache hit, nothing runs on Ray
    assert {s.status for s in again.steps} == {"cached"} and again.value("total") == 35


@pytest.mark.slow
def test_retries_on_ray_record_every_attempt(project: Project, tmp_path: Path, ray_cluster: Any) -> None:
    counter = str(tmp_path / "calls")
    result = Pipeline("ray-flaky", [fails_twice], executor=ray_cluster.client_address).run(
        project, params={"counter": counter})
    assert result.status == "finished", result.error
    assert result.steps[0].attempts == 3 and Path(counter).read_text() == "xxx"
    stored = pipeline_runs_of(project, "ray-flaky")[0]["steps"][0]
    assert [a["status"] for a in stored["attempt_log"]] == ["failed", "failed", "ok"]


@pytest.mark.slow
def test_a_step_past_its_timeout_on_ray_is_cancelled_and_marked(project: Project, tmp_path: Path,
                                                                ray_cluster: Any) -> None:
    pids = tmp_path / "pids"
    result = Pipeline("ray-hang", [hangs_on_ray], executor=ray_cluster.client_address).run(
        project, params={"pids": str(pids)})
    assert result.status == "failed" and result.steps[0].status == "timed_out"
    assert result.steps[0].attempts == 2 and "timeout of 3 s on Ray" in (result.error or "")
    workers = [int(p) for p in pids.read_text().split()]
    assert len(workers) == 2 and all(_gone(pid) for pid in workers)  # each attempt's worker was killed


def test_a_ray_executor_names_a_bad_or_closed_address() -> None:
    need(__import__("importlib").util.find_spec("ray") is not None, "Ray is not installed",
         "pip install 'modelmill[ray]'")
    for bad in ("ray://", "ray://host", "ray://h:x", "ray://h:1/p"):
        with pytest.raises(InputError, match="ray://HOST:PORT") as info:
            executor_for(bad)
        assert info.value.field == "executor"
    with pytest.raises(InputError, match="no Ray cluster answers"):
        executor_for(f"ray://127.0.0.1:{free_port()}")
