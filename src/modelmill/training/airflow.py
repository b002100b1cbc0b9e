"""Pipelines on Apache Airflow: export a pipeline as a DAG whose tasks call the ``modelmill`` command.

``modelmill pipeline export-airflow NAME > dag.py`` writes a DAG with one task per step and the
pipeline's dependencies between them, plus a last task (``modelmill_finish``, run whatever
happened upstream) that ends the pipeline run. Each task runs
``<modelmill> pipeline run-step NAME STEP --key <dag id>/<Airflow run id>``, with the absolute
path of the ``modelmill`` command fixed at export: Airflow's own environment needs no modelmill.

All tasks of one Airflow run share one pipeline run (its id derives from the key), so caching and
lineage are those of a local run: a step whose cache key is known is ``cached``, every step's
lineage and attempts land in the metadata database, and ``modelmill pipeline runs NAME`` lists
the run like any other. Retries and timeouts stay modelmill's (the step's own ``retries`` and
``timeout``): the tasks have no Airflow retries of their own, so a step is not retried twice over.

    >>> from modelmill.training import Pipeline, step
    >>> @step(inputs=["n"], outputs=["xs"])
    ... def make(n):
    ...     return list(range(n))
    >>> @step(inputs=["xs"], outputs=["total"])
    ... def add(xs):
    ...     return sum(xs)
    >>> text = export_dag(Pipeline("doc", [make, add]), ref="pkg.pipes:doc", modelmill="/opt/mm/bin/modelmill",
    ...                   project_dir="/srv/project", params={"n": 3})
    >>> "t_make >> t_add" in text and "'pipeline', 'run-step', 'pkg.pipes:doc', 'add'" in text
    True
    >>> run_key_id("doc", "modelmill__doc/manual__1") == run_key_id("doc", "modelmill__doc/manual__1")
    True
"""

from __future__ import annotations

import datetime
import hashlib
import keyword
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from modelmill.errors import InputError, NotFoundError
from modelmill.project import Project
from modelmill.store.tables.training import pipeline_runs, pipeline_steps
from modelmill.training.executors import StepOutcome, executor_for
from modelmill.training.pipeline import (
    FAILED,
    Pipeline,
    StepResult,
    _Attempt,
    _check_params,
    _done_steps,
    _Prepared,
    _profile,
)

__all__ = ["export_dag", "finish_run", "run_key_id", "run_step"]

FINISH_TASK = "modelmill_finish"


def run_key_id(pipeline: str, key: str) -> str:
    """The pipeline run id of an external run key (an Airflow DAG run): the same key, the same run."""
    if not isinstance(key, str) or not key.strip() or len(key) > 500:
        raise InputError("key", "must name the external run (1 to 500 characters), e.g. '<dag id>/<run id>'", key)
    return hashlib.sha256(f"{pipeline}\0{key}".encode()).hexdigest()[:32]


def _attempt(project: Project, pipeline: Pipeline, key: str, params: Mapping[str, Any] | None) -> _Attempt:
    """The run of ``key``: made by the first task that gets here (with its params), joined by the others."""
    rid = run_key_id(pipeline.name, key)
    pr = pipeline_runs.c
    with project.db.engine.connect() as conn:
        row = conn.execute(sa.select(pipeline_runs).where(pr.id == rid)).first()
    if row is None:
        try:
            _Attempt.new(pipeline, project, params, f"airflow {key}"[:500], rid)
        except sa.exc.IntegrityError:
            pass  # another task made it first
        with project.db.engine.connect() as conn:
            row = conn.execute(sa.select(pipeline_runs).where(pr.id == rid)).one()
    if row.pipeline != pipeline.name:
        raise InputError("key", f"names a run of pipeline {row.pipeline!r}, not {pipeline.name!r}", key)
    with project.db.engine.connect() as conn:
        done = _done_steps(conn, rid)
    return _Attempt(pipeline, project, rid, dict(row.params), row.attempts, done)


def run_step(project: Project, pipeline: Pipeline, step_name: str, *, key: str,
             params: Mapping[str, Any] | None = None) -> StepResult:
    """Run one step of the pipeline run named by ``key`` (its upstream steps must be done), as
    :meth:`Pipeline.run` would: from the cache when its key is known, else with its retries and timeout.
    A step already done in this run is not run again (an Airflow task cleared and rerun)."""
    st = pipeline.step(step_name)
    _check_params(pipeline, params)
    attempt = _attempt(project, pipeline, key, params)
    if st.name in attempt.done:
        prior = attempt.done[st.name]
        return StepResult(name=st.name, status="resumed", seconds=0.0, cache_key=prior["cache_key"])
    missing = [u for u in pipeline.upstream[st.name] if u not in attempt.done]
    if missing:
        raise InputError(f"step {st.name!r}", "runs after its upstream steps, which are not done in this run",
                         missing)
    refs: dict[str, dict[str, Any]] = {}
    values: dict[str, Any] = {}
    lineages: dict[str, dict[str, Any]] = {}
    results: dict[str, StepResult] = {}
    for up in pipeline.upstream[st.name]:
        refs.update(attempt.done[up]["outputs"])
        attempt.note_data(attempt.done[up]["lineage"])
    prepared = attempt._prepare(st, refs, values, lineages, results)
    if isinstance(prepared, _Prepared):
        executor = executor_for(pipeline.executor, max_workers=1)
        try:
            future = executor.submit(prepared.task)
            try:
                outcome = future.result()
            except Exception as exc:
                outcome = StepOutcome(status="failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            executor.close()
        attempt._complete(prepared, outcome, refs, values, lineages, results)
    result = results[st.name]
    if attempt._run is not None:
        attempt._run.end("failed" if result.status in FAILED else "finished", error=result.error)
    return result


def finish_run(project: Project, pipeline: Pipeline, *, key: str) -> dict[str, Any]:
    """End the pipeline run named by ``key``: ``finished`` when every step is done, else ``failed``
    (naming the first failed step, or the first that never ran); its lineage merged as a local run's."""
    rid = run_key_id(pipeline.name, key)
    ps = pipeline_steps.c
    with project.db.engine.connect() as conn:
        run = conn.execute(sa.select(pipeline_runs).where(pipeline_runs.c.id == rid)).first()
        if run is None:
            raise NotFoundError("pipeline run", f"{pipeline.name}/{key}", "no step of it ran")
        rows = {r.step: r for r in conn.execute(sa.select(pipeline_steps).where(ps.pipeline_run_id == rid))}
    lineage: dict[str, Any] = {}
    failed: tuple[str, str] | None = None
    for name in pipeline.order:
        row = rows.get(name)
        if row is not None and row.status in ("ran", "cached", "resumed"):
            lineage.update(row.lineage or {})
        elif failed is None:
            failed = (name, (row.error or row.status).strip().splitlines()[-1] if row is not None
                      else "never ran (an upstream step failed, or its task did not run)")
    status = "failed" if failed else "finished"
    full = {"pipeline": pipeline.name, "pipeline_run_id": rid, **lineage}
    with project.db.begin() as conn:
        conn.execute(pipeline_runs.update().where(pipeline_runs.c.id == rid).values(
            status=status, lineage=full, run_id=lineage.get("run_id"), ended_at=time.time(),
            failed_step=failed[0] if failed else None, error=failed[1] if failed else None))
    if not failed and lineage.get("model_version") and lineage.get("training_set"):
        _profile(project, str(lineage["model_version"]), str(lineage["training_set"]))
    return {"id": rid, "pipeline": pipeline.name, "status": status, "lineage": full,
            "failed_step": failed[0] if failed else None, "error": failed[1] if failed else None,
            "steps": {name: (rows[name].status if name in rows else "pending") for name in pipeline.order}}


# ---- the DAG file ------------------------------------------------------------------------------

_TEMPLATE = '''"""Airflow DAG of modelmill pipeline {name!r}: one task per step, and a last task that ends the run.

Written by `modelmill pipeline export-airflow {ref}` at {stamp}. Each task calls the modelmill
command below in the project's folder; Airflow's environment needs no modelmill install. Retries
and timeouts are the steps' own (modelmill's), caching and lineage too: see
`modelmill pipeline runs {name}`.
"""

from __future__ import annotations

import datetime

try:  # Airflow 3
    from airflow.providers.standard.operators.bash import BashOperator
except ImportError:  # Airflow 2
    from airflow.operators.bash import BashOperator

from airflow import DAG

MODELMILL = {modelmill!r}
PROJECT_DIR = {project_dir!r}
ENV = {env!r}
KEY = "{{{{ dag.dag_id }}}}/{{{{ run_id }}}}"


def command(*args: str) -> str:
    import shlex

    return " ".join(shlex.quote(a) for a in (MODELMILL, *args, "--key", KEY))


with DAG(
    dag_id={dag_id!r},
    description={description!r},
    schedule=None,
    start_date=datetime.datetime(2024, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["modelmill"],
) as dag:
{tasks}
    t_finish = BashOperator(task_id={finish!r}, trigger_rule="all_done", cwd=PROJECT_DIR, env=ENV, append_env=True,
                            bash_command=command("pipeline", "finish-run", {ref!r}))
{edges}
'''


def _var(step_name: str, taken: set[str]) -> str:
    base = "t_" + (re.sub(r"\W", "_", step_name) or "step")
    name, i = base, 2
    while name in taken or keyword.iskeyword(name):
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


def export_dag(pipeline: Pipeline, *, ref: str, modelmill: str, project_dir: str,
               params: Mapping[str, Any] | None = None, dag_id: str | None = None,
               env: Mapping[str, str] | None = None, argv_params: Sequence[str] = ()) -> str:
    """The Python source of an Airflow DAG running ``pipeline`` (found as ``ref`` by the tasks)."""
    _check_params(pipeline, params)
    did = dag_id or "modelmill__" + re.sub(r"[^A-Za-z0-9_.-]", "_", pipeline.name)
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,250}", did):
        raise InputError("dag_id", "must be 1 to 250 letters, digits, '_', '.' or '-'", did)
    taken: set[str] = {"t_finish"}
    names = {s.name: _var(s.name, taken) for s in pipeline.steps}
    p_args: list[str] = []
    for item in argv_params:
        p_args += ["-p", item]
    lines = []
    for name in pipeline.order:
        st = pipeline.step(name)
        args = ("pipeline", "run-step", ref, name, *p_args)
        lines.append(f"    {names[name]} = BashOperator(task_id={name!r}, retries=0, cwd=PROJECT_DIR, env=ENV, "
                     f"append_env=True,\n        bash_command=command{args!r},\n"
                     f"        doc_md={_doc(st)!r})")
    edges = []
    for name in pipeline.order:
        for up in pipeline.upstream[name]:
            edges.append(f"    {names[up]} >> {names[name]}")
    edges.append(f"    [{', '.join(names[n] for n in pipeline.order)}] >> t_finish")
    return _TEMPLATE.format(
        name=pipeline.name, ref=ref, stamp=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        modelmill=modelmill, project_dir=project_dir, env=dict(env or {}), dag_id=did,
        description=f"modelmill pipeline {pipeline.name}"[:300], tasks="\n".join(lines), finish=FINISH_TASK,
        edges="\n".join(edges))


def _doc(st: Any) -> str:
    parts = [f"modelmill step `{st.name}`: inputs {list(st.inputs)}, outputs {list(st.outputs)}"]
    if st.retries:
        parts.append(f"retries {st.retries} (backoff {st.backoff:g} s)")
    if st.timeout is not None:
        parts.append(f"timeout {st.timeout:g} s")
    if not st.cache:
        parts.append("never cached")
    return "; ".join(parts)
