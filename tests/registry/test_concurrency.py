"""Eight processes register versions of one model on PostgreSQL at the same moment."""

from __future__ import annotations

import multiprocessing as mp
import sys
from pathlib import Path
from typing import Any

import pytest

from modelmill.config import Settings
from modelmill.project import Project
from modelmill.registry import Field, Registry, Signature

ROOT = Path(__file__).resolve().parents[2]
WORKERS = 8


class Constant:
    """A tiny picklable 'model' so that each process starts fast."""

    def __init__(self, value: float) -> None:
        self.value = value

    def predict(self, X: Any) -> Any:
        import numpy as np

        return np.full(len(X), self.value)


def register_one(db_url: str, home: str, index: int, barrier: Any, out: Any) -> None:
    project = Project(Settings.defaults(home=home).replace(db=db_url))
    try:
        registry = Registry(project)
        _ = project.db, project.artifacts  # connect and migrate before the race starts
        barrier.wait(timeout=60)
        mv = registry.register("race", Constant(index), flavor="sklearn",
                               signature=Signature(inputs=[Field("x")]), tags={"worker": str(index)})
        out.put((index, mv.version))
    finally:
        project.close()


@pytest.mark.slow  # over 5 s (make test alone stays under 10 min; .ci/run runs it)
def test_eight_processes_get_versions_1_to_8(pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Spawned children import this module by name, so the repository root must be on their path.
    monkeypatch.setattr(sys, "path", [str(ROOT), *sys.path])
    # Migrate once up front: the race under test is registration, not schema creation.
    Project(Settings.defaults(home=tmp_path).replace(db=pg_url)).db.close()
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(WORKERS), ctx.Queue()
    procs = [ctx.Process(target=register_one, args=(pg_url, str(tmp_path), i, barrier, out)) for i in range(WORKERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * WORKERS
    got = dict(out.get(timeout=5) for _ in range(WORKERS))
    assert sorted(got.values()) == list(range(1, WORKERS + 1))

    project = Project(Settings.defaults(home=tmp_path).replace(db=pg_url))
    try:
        versions = Registry(project).versions("race")
        assert [v.version for v in versions] == list(range(1, WORKERS + 1))
        # Each stored version carries the worker that registered it, matching what that worker was told.
        assert {int(v.tags["worker"]): v.version for v in versions} == got
        assert len({v.artifact_path for v in versions}) == WORKERS
    finally:
        project.close()


def test_threads_on_sqlite_get_distinct_consecutive_versions(project: Project) -> None:
    from concurrent.futures import ThreadPoolExecutor

    registry = Registry(project)
    sig = Signature(inputs=[Field("x")])
    with ThreadPoolExecutor(max_workers=6) as pool:
        versions = list(pool.map(lambda i: registry.register("t", Constant(i), flavor="sklearn", signature=sig)
                                 .version, range(12)))
    assert sorted(versions) == list(range(1, 13))
