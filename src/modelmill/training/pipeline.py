"""Pipelines: a DAG of Python functions with declared inputs and outputs, cached, retried, resumable, with lineage.

Each step declares the names of its inputs (params, or other steps' outputs) and of its outputs;
the steps form a DAG (a cycle is refused when the pipeline is built), and steps that do not
depend on each other run in parallel (``local``: threads, see :mod:`modelmill.training.executors`).
A step may be retried (``retries``, with exponential ``backoff``) and given a ``timeout``: an
attempt past it is stopped (it runs in a child process that is killed) and marked ``timed_out``.
Every attempt is recorded with the run's steps.

Each step's outputs are pickled into the artifact store under a key made of the step's
transitive first-party code, the versions of the libraries it imports, the hashes of its
inputs and the fingerprints of the data they name (:mod:`modelmill.training.fingerprint`);
a step whose key is already in the cache is skipped (its outputs are reused without being
loaded, unless a later step needs them). ``step(cache=False)`` always runs. A failed pipeline
run can be resumed, in any process, from the steps that failed. Every pipeline run records its
lineage (data snapshot, training set, tracking run, model version) in the metadata database; a
run that recorded both a ``model_version`` and its ``training_set`` leaves that version with a
monitoring reference profile of the set.

    >>> import tempfile
    >>> from modelmill.config import Settings
    >>> from modelmill.project import Project
    >>> @step(inputs=["n"], outputs=["xs"])
    ... def make(n):
    ...     return list(range(n))
    >>> @step(inputs=["xs"], outputs=["total"])
    ... def add(xs):
    ...     return sum(xs)
    >>> pipe = Pipeline("doc", [make, add])
    >>> project = Project(Settings.defaults(home=tempfile.mkdtemp()))
    >>> first = pipe.run(project, params={"n": 4})
    >>> first.status, [s.status for s in first.steps], first.value("total")
    ('finished', ['ran', 'ran'], 6)
    >>> [s.status for s in pipe.run(project, params={"n": 4}).steps]
    ['cached', 'cached']
    >>> project.close()
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import importlib
import inspect
import json
import logging
import pickle
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from modelmill.errors import ConflictError, InputError, ModelmillError, NotFoundError
from modelmill.project import Project
from modelmill.store.tables.training import pipeline_runs, pipeline_steps, step_cache
from modelmill.training.executors import Executor, StepOutcome, StepTask, executor_for
from modelmill.training.fingerprint import (
    DataUnavailable,
    code_fingerprint,
    data_fingerprint,
    looks_like_data,
)
from modelmill.training.tracking import Run

__all__ = [
    "ChildContext",
    "Pipeline",
    "PipelineResult",
    "Step",
    "StepContext",
    "StepResult",
    "get_pipeline",
    "pipeline_runs_of",
    "register_pipeline",
    "registered_pipelines",
    "step",
]

log = logging.getLogger("modelmill.training")

LINEAGE_KEYS = ("data_snapshot", "training_set", "feature_version", "run_id", "model_version")
FAILED = ("failed", "timed_out")


class Step:
    """A function with declared inputs (params or other steps' outputs) and outputs. Calling it calls the function.

    ``retries`` more attempts follow a failed one, ``backoff * 2**(n-1)`` seconds apart; ``timeout``
    (seconds) stops an attempt that runs longer (it runs in a child process); ``cache=False`` runs the
    step every time; ``data`` names inputs whose values are paths or URLs of data to fingerprint
    (an input that names an existing file is fingerprinted anyway); ``reads`` lists more paths the
    function reads by itself, fingerprinted into its key.
    """

    def __init__(self, fn: Callable[..., Any], *, inputs: Sequence[str], outputs: Sequence[str],
                 name: str | None = None, retries: int = 0, backoff: float = 1.0, timeout: float | None = None,
                 cache: bool = True, data: Sequence[str] = (), reads: Sequence[str] = ()) -> None:
        self.fn = fn
        self.name = name or fn.__name__
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)
        params = inspect.signature(fn).parameters
        self.wants_ctx = "ctx" in params
        missing = [i for i in self.inputs if i not in params and not _takes_kwargs(params)]
        if missing:
            raise InputError(f"step {self.name!r}", "declares inputs its function does not accept", missing)
        if len(set(self.outputs)) != len(self.outputs):
            raise InputError(f"step {self.name!r}", "declares an output twice", list(self.outputs))
        if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 100:
            raise InputError(f"step {self.name!r} retries", "must be a whole number from 0 to 100", retries)
        if isinstance(backoff, bool) or not isinstance(backoff, int | float) or not 0 <= backoff <= 3600:
            raise InputError(f"step {self.name!r} backoff", "must be 0 to 3600 seconds", backoff)
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float)
                                    or not 0 < timeout <= 7 * 86400):
            raise InputError(f"step {self.name!r} timeout", "must be a positive number of seconds (or None)", timeout)
        unknown = [d for d in data if d not in self.inputs]
        if unknown:
            raise InputError(f"step {self.name!r} data", "names inputs the step does not declare", unknown)
        self.retries = retries
        self.backoff = float(backoff)
        self.timeout = None if timeout is None else float(timeout)
        self.cache = bool(cache)
        self.data = tuple(data)
        self.reads = tuple(str(r) for r in reads)

    def __repr__(self) -> str:
        return f"Step({self.name!r}, inputs={list(self.inputs)}, outputs={list(self.outputs)})"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __reduce_ex__(self, protocol: Any) -> Any:
        # A step defined at module level travels by reference (the child process imports it); others by value.
        module, qualname = getattr(self.fn, "__module__", None), getattr(self.fn, "__qualname__", "")
        if module and "<locals>" not in qualname:
            found = getattr(sys.modules.get(module), qualname, None)
            if found is self:
                return (_step_by_ref, (module, qualname))
        return super().__reduce_ex__(protocol)

    @property
    def code_hash(self) -> str:
        """Hash of the function's own source (its bytecode and constants when the source is unavailable)."""
        try:
            code = inspect.getsource(self.fn).encode()
        except (OSError, TypeError):
            co = self.fn.__code__
            code = co.co_code + repr(co.co_consts).encode()
        return hashlib.sha256(code).hexdigest()

    def fingerprint(self) -> dict[str, Any]:
        """The code part of the cache key: transitive first-party source and library versions."""
        return code_fingerprint(self.fn)

    def split_outputs(self, value: Any) -> dict[str, Any]:
        """Map the function's return value onto the declared output names."""
        if not self.outputs:
            return {}
        if len(self.outputs) == 1:
            return {self.outputs[0]: value}
        if isinstance(value, Mapping) and set(value) == set(self.outputs):
            return {k: value[k] for k in self.outputs}
        if isinstance(value, tuple | list) and len(value) == len(self.outputs):
            return dict(zip(self.outputs, value, strict=True))
        raise InputError(f"step {self.name!r}",
                         f"must return {len(self.outputs)} values {list(self.outputs)} (a tuple or a dict)",
                         type(value).__name__)


def _step_by_ref(module: str, qualname: str) -> Step:
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, Step):
        raise TypeError(f"{module}.{qualname} is not a pipeline step")
    return obj


def step(*, inputs: Sequence[str] = (), outputs: Sequence[str] = (), name: str | None = None, retries: int = 0,
         backoff: float = 1.0, timeout: float | None = None, cache: bool = True, data: Sequence[str] = (),
         reads: Sequence[str] = ()) -> Callable[[Callable[..., Any]], Step]:
    """Declare a function as a pipeline step (see :class:`Step` for the options).
    A parameter named ``ctx`` receives a :class:`StepContext`."""

    def wrap(fn: Callable[..., Any]) -> Step:
        return Step(fn, inputs=inputs, outputs=outputs, name=name, retries=retries, backoff=backoff,
                    timeout=timeout, cache=cache, data=data, reads=reads)

    return wrap


class StepContext:
    """What a step may use besides its inputs: the project, the tracking run, a lineage recorder."""

    def __init__(self, attempt: _Attempt, step_name: str) -> None:
        self._attempt = attempt
        self.step = step_name
        self.project = attempt.project
        self.pipeline = attempt.pipeline.name
        self.pipeline_run_id = attempt.id
        self.params: Mapping[str, Any] = attempt.params
        self.lineage: dict[str, Any] = {}
        self.attempt = 1  # this step's attempt (retries count up)

    @property
    def run(self) -> Run:
        """The pipeline attempt's tracking run (experiment = pipeline name), started on first use."""
        run = self._attempt.tracking_run()
        self.lineage["run_id"] = run.run_id
        return run

    def record(self, **lineage: Any) -> None:
        """Record lineage: ``data_snapshot``, ``training_set``, ``feature_version``, ``model_version`` or others."""
        _record(self.lineage, lineage)
        self._attempt.note_data(self.lineage)


def _record(into: dict[str, Any], lineage: Mapping[str, Any]) -> None:
    for key, value in lineage.items():
        json.dumps(value, default=str)  # must be storable
        into[key] = value if isinstance(value, str | int | float | bool | None | list | dict) else str(value)


class ChildContext:
    """The :class:`StepContext` of a step attempt in another process (a timed step, another executor):
    the same attributes; ``project`` is opened there from the settings, and ``run`` is a tracking run
    of that process (tagged with the pipeline run), ended when the attempt ends."""

    def __init__(self, *, settings: Any, step: str, pipeline: str, pipeline_run_id: str,
                 params: Mapping[str, Any], attempt: int, run_attempt: int) -> None:
        self.settings = settings
        self.step = step
        self.pipeline = pipeline
        self.pipeline_run_id = pipeline_run_id
        self.params = dict(params)
        self.attempt = attempt
        self.lineage: dict[str, Any] = {}
        self._run_attempt = run_attempt
        self._project: Project | None = None
        self._run: Run | None = None

    @classmethod
    def of(cls, ctx: Any, attempt: int) -> ChildContext:
        return cls(settings=ctx.project.settings, step=ctx.step, pipeline=ctx.pipeline,
                   pipeline_run_id=ctx.pipeline_run_id, params=ctx.params, attempt=attempt,
                   run_attempt=getattr(getattr(ctx, "_attempt", None), "attempts", 1))

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_project": None, "_run": None}

    @property
    def project(self) -> Project:
        if self._project is None:
            self._project = Project(self.settings)
        return self._project

    @property
    def run(self) -> Run:
        if self._run is None:
            self._run = Run(self.project, experiment=self.pipeline[:200],
                            tags={"pipeline": self.pipeline, "pipeline_run_id": self.pipeline_run_id,
                                  "attempt": self._run_attempt, "step": self.step}).start()
            self._run.log_params(dict(self.params))
        self.lineage["run_id"] = self._run.run_id
        return self._run

    def record(self, **lineage: Any) -> None:
        _record(self.lineage, lineage)
        if self._run is not None:
            self._run.set_data(data_snapshot=self.lineage.get("data_snapshot"),
                               feature_version=self.lineage.get("feature_version"))

    def close(self, failed: bool = False) -> None:
        if self._run is not None:
            self._run.set_data(data_snapshot=self.lineage.get("data_snapshot"),
                               feature_version=self.lineage.get("feature_version"))
            self._run.end("failed" if failed else "finished")
        if self._project is not None:
            self._project.close()


@dataclasses.dataclass(frozen=True, kw_only=True)
class StepResult:
    name: str
    status: str  # ran | cached | resumed | failed | timed_out | pending
    seconds: float
    cache_key: str | None
    error: str | None = None
    attempts: int = 0  # attempts made in this run (0: cached, resumed or pending)


@dataclasses.dataclass(kw_only=True)
class PipelineResult:
    """The outcome of one pipeline run (or one attempt of it, when resumed)."""

    id: str
    pipeline: str
    status: str  # finished | failed
    attempts: int
    steps: list[StepResult]
    lineage: dict[str, Any]
    run_id: str | None
    failed_step: str | None = None
    error: str | None = None
    _loader: Callable[[str], Any] | None = dataclasses.field(default=None, repr=False)

    def value(self, output: str) -> Any:
        """Load an output of the run (read back from the artifact store, checksum verified)."""
        if self._loader is None:
            raise NotFoundError("pipeline output", output)
        return self._loader(output)

    def step(self, name: str) -> StepResult:
        """The result of step ``name``."""
        for s in self.steps:
            if s.name == name:
                return s
        raise NotFoundError("pipeline step", name, f"steps: {', '.join(s.name for s in self.steps)}")

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "pipeline": self.pipeline, "status": self.status, "attempts": self.attempts,
                "steps": [dataclasses.asdict(s) for s in self.steps], "lineage": self.lineage,
                "run_id": self.run_id, "failed_step": self.failed_step, "error": self.error}


class Pipeline:
    """A DAG of steps under a name. ``run()`` executes it against a project.

    ``executor`` is where steps run (``"local"``, or a registered ``scheme://...``: see
    :mod:`modelmill.training.executors`); ``max_parallel`` bounds the steps ``local`` runs at once.
    """

    def __init__(self, name: str, steps: Sequence[Step], *, executor: str = "local",
                 max_parallel: int | None = None) -> None:
        if not isinstance(name, str) or not name or len(name) > 300:
            raise InputError("pipeline name", "must be a non-empty string of at most 300 characters", name)
        self.name = name
        self.steps = list(steps)
        self.executor = executor
        if max_parallel is not None and (isinstance(max_parallel, bool) or not isinstance(max_parallel, int)
                                         or max_parallel < 1):
            raise InputError(f"pipeline {name!r} max_parallel", "must be a whole number of at least 1", max_parallel)
        self.max_parallel = max_parallel
        seen: set[str] = set()
        for s in self.steps:
            if not isinstance(s, Step):
                raise InputError(f"pipeline {name!r}", "steps must be functions decorated with @step", s)
            if s.name in seen:
                raise InputError(f"pipeline {name!r}", "has two steps with one name", s.name)
            seen.add(s.name)
        producers: dict[str, str] = {}
        for s in self.steps:
            for out in s.outputs:
                if out in producers:
                    raise InputError(f"pipeline {name!r}", f"output {out!r} is produced by two steps",
                                     [producers[out], s.name])
                producers[out] = s.name
        self._producers = producers
        self.upstream: dict[str, tuple[str, ...]] = {
            s.name: tuple(dict.fromkeys(producers[i] for i in s.inputs if i in producers)) for s in self.steps}
        self.order = self._topological()

    def __repr__(self) -> str:
        return f"Pipeline({self.name!r}, steps={[s.name for s in self.steps]})"

    def _topological(self) -> list[str]:
        """Kahn's order (ties in declaration order); a cycle is an error naming its steps."""
        indegree = {s.name: len(self.upstream[s.name]) for s in self.steps}
        downstream: dict[str, list[str]] = {s.name: [] for s in self.steps}
        for s in self.steps:
            for up in self.upstream[s.name]:
                downstream[up].append(s.name)
        ready = [s.name for s in self.steps if indegree[s.name] == 0]
        order: list[str] = []
        while ready:
            current = ready.pop(0)
            order.append(current)
            for nxt in downstream[current]:
                indegree[nxt] -= 1
                if indegree[nxt] == 0:
                    ready.append(nxt)
        if len(order) != len(self.steps):
            raise InputError(f"pipeline {self.name!r}", "has a cycle: its steps need each other's outputs",
                             self._cycle({n for n, d in indegree.items() if d > 0}))
        return order

    def _cycle(self, left: set[str]) -> list[str]:
        """One cycle among the steps ``left`` (each has an upstream step in ``left``): ``[a, b, ..., a]``."""
        current = sorted(left)[0]
        path: list[str] = []
        while current not in path:
            path.append(current)
            current = next(u for u in self.upstream[current] if u in left)
        return [*path[path.index(current):], current]

    def step(self, name: str) -> Step:
        for s in self.steps:
            if s.name == name:
                return s
        raise NotFoundError("pipeline step", f"{self.name}/{name}", f"steps: {', '.join(s.name for s in self.steps)}")

    @property
    def params_needed(self) -> list[str]:
        """Inputs that no step produces: they must come from ``params``."""
        return sorted({i for s in self.steps for i in s.inputs if i not in self._producers})

    def output(self, project: Project, pipeline_run_id: str, name: str) -> Any:
        """An output of an earlier run of this pipeline (one a scheduler ran, say), checksum verified."""
        ps = pipeline_steps.c
        with project.db.engine.connect() as conn:
            rows = conn.execute(sa.select(ps.outputs).where(ps.pipeline_run_id == pipeline_run_id)).all()
        for (outputs,) in rows:
            if outputs and name in outputs:
                ref = outputs[name]
                return pickle.loads(project.artifacts.get_bytes(ref["path"], sha256=ref["sha256"]))
        raise NotFoundError("pipeline output", f"{pipeline_run_id}:{name}", f"pipeline {self.name!r} run has no such output")

    def run(self, project: Project, *, params: Mapping[str, Any] | None = None, resume: str | None = None,
            reason: str | None = None, executor: str | Executor | None = None,
            run_id: str | None = None) -> PipelineResult:
        """Run every step, skipping those whose cache key is known; independent steps run in parallel.

        ``resume`` is a failed pipeline run's id (or ``"last"``): its finished steps are reused as
        they were, and execution starts again at the steps that failed, with the params it had.
        A failure does not raise: the result has ``status == "failed"``, the step and the error;
        steps downstream of a failed one stay ``pending``, independent ones still run. ``run_id``
        names a new run (32 hex digits) instead of a random id: a scheduler records it before it starts.
        """
        if run_id is not None and (not isinstance(run_id, str) or len(run_id) != 32
                                   or any(c not in "0123456789abcdef" for c in run_id)):
            raise InputError("run_id", "must be 32 lower-case hex digits", run_id)
        attempt = (_Attempt.resume(self, project, resume) if resume
                   else _Attempt.new(self, project, params, reason, run_id))
        ex = executor_for(executor if executor is not None else self.executor, max_workers=self.max_parallel)
        try:
            return attempt.execute(ex)
        finally:
            if ex is not executor:
                ex.close()


@dataclasses.dataclass
class _Prepared:
    """A step about to run: its key and the task for the executor."""

    step: Step
    key: str
    cacheable: bool
    note: str | None
    ctx: StepContext
    task: StepTask
    t0: float


class _Attempt:
    """One execution of a pipeline run: a fresh run, or a resumption of a failed one."""

    def __init__(self, pipeline: Pipeline, project: Project, run_id: str, params: dict[str, Any],
                 attempts: int, done: dict[str, dict[str, Any]]) -> None:
        self.pipeline = pipeline
        self.project = project
        self.id = run_id
        self.params = params
        self.attempts = attempts
        self.done = done  # step -> {"outputs": {name: {path, sha256}}, "lineage": {...}} from earlier attempts
        self._run: Run | None = None
        self._data: dict[str, Any] = {}
        self._lock = threading.RLock()
        self._codes: dict[str, dict[str, Any]] = {}

    @classmethod
    def new(cls, pipeline: Pipeline, project: Project, params: Mapping[str, Any] | None,
            reason: str | None, run_id: str | None = None) -> _Attempt:
        values = _check_params(pipeline, params)
        rid = run_id or uuid.uuid4().hex
        with project.db.begin() as conn:
            conn.execute(pipeline_runs.insert().values(
                id=rid, pipeline=pipeline.name, status="running", params=values, lineage={}, attempts=1,
                reason=reason, started_at=time.time()))
        return cls(pipeline, project, rid, values, 1, {})

    @classmethod
    def resume(cls, pipeline: Pipeline, project: Project, which: str) -> _Attempt:
        pr = pipeline_runs.c
        with project.db.begin() as conn:
            query = sa.select(pipeline_runs).where(pr.pipeline == pipeline.name)
            if which == "last":
                query = query.where(pr.status == "failed").order_by(pr.started_at.desc()).limit(1)
            else:
                query = query.where(pr.id == which)
            row = conn.execute(query).first()
            if row is None:
                raise NotFoundError("failed pipeline run" if which == "last" else "pipeline run",
                                    f"{pipeline.name}/{which}", "nothing to resume")
            # Claim it atomically, so two processes cannot resume one run twice.
            claimed = conn.execute(pipeline_runs.update().where((pr.id == row.id) & (pr.status == "failed"))
                                   .values(status="running", attempts=row.attempts + 1, error=None,
                                           failed_step=None, ended_at=None)).rowcount
            if claimed != 1:
                raise ConflictError(f"pipeline run {row.id} is {row.status}, not failed; only a failed run resumes",
                                    pipeline_run_id=row.id, status=row.status)
            done = _done_steps(conn, row.id)
        return cls(pipeline, project, row.id, dict(row.params), row.attempts + 1, done)

    # ---- used by StepContext -----------------------------------------------------------------

    def tracking_run(self) -> Run:
        with self._lock:
            if self._run is None:
                self._run = Run(self.project, experiment=self.pipeline.name[:200],
                                tags={"pipeline": self.pipeline.name, "pipeline_run_id": self.id,
                                      "attempt": self.attempts}).start()
                self._run.log_params({k: v for k, v in self.params.items()})
                self._apply_data()
            return self._run

    def note_data(self, lineage: Mapping[str, Any]) -> None:
        with self._lock:
            for key in ("data_snapshot", "feature_version"):
                if lineage.get(key) is not None:
                    self._data[key] = str(lineage[key])
            self._apply_data()

    def _apply_data(self) -> None:
        if self._run is not None and self._data:
            self._run.set_data(**self._data)

    # ---- execution ---------------------------------------------------------------------------

    def execute(self, executor: Executor) -> PipelineResult:
        """Run the DAG: every step whose upstream steps are done is prepared (resumed, cached, or submitted)."""
        refs: dict[str, dict[str, Any]] = {}  # output -> {"path", "sha256"}
        values: dict[str, Any] = {}
        lineages: dict[str, dict[str, Any]] = {}
        results: dict[str, StepResult] = {}
        running: dict[concurrent.futures.Future[StepOutcome], _Prepared] = {}
        by_name = {s.name: s for s in self.pipeline.steps}
        left = list(self.pipeline.order)
        ok = ("ran", "cached", "resumed")
        while left or running:
            progressed = True
            while progressed:
                progressed = False
                for name in list(left):
                    ups = self.pipeline.upstream[name]
                    if any(results.get(u) is not None and results[u].status not in ok for u in ups):
                        results[name] = StepResult(name=name, status="pending", seconds=0.0, cache_key=None)
                        left.remove(name)
                        progressed = True
                        continue
                    if not all(u in results for u in ups):
                        continue
                    left.remove(name)
                    progressed = True
                    out = self._prepare(by_name[name], refs, values, lineages, results)
                    if isinstance(out, _Prepared):
                        running[executor.submit(out.task)] = out
            if not running:
                continue
            finished, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
            for fut in finished:
                prepared = running.pop(fut)
                try:
                    outcome = fut.result()
                except Exception as exc:  # an executor's own failure is the step's failure
                    outcome = StepOutcome(status="failed", error=f"{type(exc).__name__}: {exc}",
                                          attempts=[{"attempt": 1, "status": "failed", "error": str(exc)}])
                self._complete(prepared, outcome, refs, values, lineages, results)
        ordered = [results[s.name] for s in self.pipeline.steps]
        failed = next(((r.name, r.error or r.status) for r in ordered if r.status in FAILED), None)
        lineage: dict[str, Any] = {}
        for name in self.pipeline.order:
            lineage.update(lineages.get(name, {}))
        return self._finish(ordered, refs, values, lineage, failed)

    def _prepare(self, st: Step, refs: dict[str, dict[str, Any]], values: dict[str, Any],
                 lineages: dict[str, dict[str, Any]], results: dict[str, StepResult]) -> _Prepared | None:
        """Resume or take a step from the cache (returns None), or make its task to submit."""
        t0 = time.perf_counter()
        prior = self.done.get(st.name)
        if prior is not None:
            refs.update(prior["outputs"])
            lineages[st.name] = dict(prior["lineage"])
            self.note_data(prior["lineage"])
            results[st.name] = StepResult(name=st.name, status="resumed", seconds=0.0, cache_key=prior["cache_key"])
            return None
        try:
            key, cacheable, note = self._cache_key(st, refs, values)
            cached = self._cached(key) if cacheable and st.cache else None
        except Exception as exc:  # an unreadable input: the step fails, the run goes on
            error = f"{type(exc).__name__}: {exc}"
            self._note(st.name, "failed", "-", {}, {}, t0, error=error, attempts=0, attempt_log=[])
            results[st.name] = StepResult(name=st.name, status="failed", seconds=time.perf_counter() - t0,
                                          cache_key=None, error=error)
            return None
        if cached is not None:
            refs.update(cached["outputs"])
            lineages[st.name] = dict(cached["lineage"])
            self._note(st.name, "cached", key, cached["outputs"], cached["lineage"], t0)
            self.note_data(cached["lineage"])
            results[st.name] = StepResult(name=st.name, status="cached", seconds=time.perf_counter() - t0,
                                          cache_key=key)
            return None
        ctx = StepContext(self, st.name)
        kwargs = {i: self._value(i, refs, values) for i in st.inputs}
        task = StepTask(pipeline=self.pipeline.name, step=st, kwargs=kwargs, ctx=ctx, timeout=st.timeout,
                        retries=st.retries, backoff=st.backoff)
        return _Prepared(step=st, key=key, cacheable=cacheable and st.cache, note=note, ctx=ctx, task=task, t0=t0)

    def _complete(self, prepared: _Prepared, outcome: StepOutcome, refs: dict[str, dict[str, Any]],
                  values: dict[str, Any], lineages: dict[str, dict[str, Any]], results: dict[str, StepResult]) -> None:
        st, key, t0 = prepared.step, prepared.key, prepared.t0
        log_ = list(outcome.attempts)
        if prepared.note:
            log_.append({"note": prepared.note})
        out_refs: dict[str, dict[str, Any]] = {}
        status, error = ("ran", None) if outcome.status == "ok" else (outcome.status, outcome.error)
        if status == "ran":
            try:
                for name, value in st.split_outputs(outcome.value).items():
                    ref = self.project.artifacts.put_bytes(
                        f"pipelines/{_slug(self.pipeline.name)}/{key}/{name}.pkl",
                        pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
                    out_refs[name] = {"path": ref.path, "sha256": ref.sha256}
                    values[name] = value
            except Exception as exc:
                status, error = "failed", f"{type(exc).__name__}: {exc}"
        lineage = dict(outcome.lineage)
        if lineage:
            self.note_data(lineage)
        n = sum(1 for a in outcome.attempts if "attempt" in a)
        if status == "ran":
            refs.update(out_refs)
            lineages[st.name] = lineage
            if prepared.cacheable:
                self._remember(st.name, key, out_refs, lineage)
            self._note(st.name, "ran", key, out_refs, lineage, t0, attempts=n, attempt_log=log_)
        else:
            self._note(st.name, status, key, {}, lineage, t0, error=outcome.detail or error, attempts=n,
                       attempt_log=log_)
        results[st.name] = StepResult(name=st.name, status=status, seconds=time.perf_counter() - t0, cache_key=key,
                                      error=error, attempts=n)

    def _finish(self, results: list[StepResult], refs: dict[str, dict[str, Any]], values: dict[str, Any],
                lineage: dict[str, Any], failed: tuple[str, str] | None) -> PipelineResult:
        status = "failed" if failed else "finished"
        if self._run is not None:
            self._run.end("failed" if failed else "finished", error=failed[1] if failed else None)
        full = {"pipeline": self.pipeline.name, "pipeline_run_id": self.id, **lineage}
        with self.project.db.begin() as conn:
            conn.execute(pipeline_runs.update().where(pipeline_runs.c.id == self.id).values(
                status=status, lineage=full, run_id=lineage.get("run_id"), ended_at=time.time(),
                failed_step=failed[0] if failed else None, error=failed[1] if failed else None))
        if not failed and lineage.get("model_version") and lineage.get("training_set"):
            _profile(self.project, str(lineage["model_version"]), str(lineage["training_set"]))

        def load(output: str) -> Any:
            if output in values:
                return values[output]
            if output not in refs:
                raise NotFoundError("pipeline output", output, f"outputs: {', '.join(sorted(refs))}")
            return self._load(refs[output])

        return PipelineResult(id=self.id, pipeline=self.pipeline.name, status=status, attempts=self.attempts,
                              steps=results, lineage=full, run_id=lineage.get("run_id"),
                              failed_step=failed[0] if failed else None, error=failed[1] if failed else None,
                              _loader=load)

    def _value(self, name: str, refs: dict[str, dict[str, Any]], values: dict[str, Any]) -> Any:
        if name in values:
            return values[name]
        if name in refs:
            values[name] = self._load(refs[name])
            return values[name]
        if name in self.params:
            return self.params[name]
        raise InputError(f"pipeline {self.pipeline.name!r}", "no earlier step or param provides input", name)

    def _load(self, ref: Mapping[str, Any]) -> Any:
        # Our own pickles, verified against the sha256 recorded when they were written.
        return pickle.loads(self.project.artifacts.get_bytes(ref["path"], sha256=ref["sha256"]))

    def _code(self, st: Step) -> dict[str, Any]:
        if st.name not in self._codes:
            self._codes[st.name] = st.fingerprint()
        return self._codes[st.name]

    def _cache_key(self, st: Step, refs: dict[str, dict[str, Any]], values: dict[str, Any]
                   ) -> tuple[str, bool, str | None]:
        """``(key, cacheable, note)``: a step whose data cannot be fingerprinted is not cacheable."""
        inputs: dict[str, str] = {}
        data: dict[str, str] = {}
        problems: list[str] = []
        for name in st.inputs:
            value: Any = None
            if name in refs:
                inputs[name] = refs[name]["sha256"]
                if name not in st.data:
                    continue
                value = self._value(name, refs, values)
            elif name in self.params:
                value = self.params[name]
                inputs[name] = hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()
            else:
                inputs[name] = "missing"
                continue
            if name in st.data or looks_like_data(value):
                try:
                    data[name] = data_fingerprint(value)
                except DataUnavailable as exc:
                    problems.append(f"input {name}: {exc}")
        for path in st.reads:
            try:
                data[f"reads:{path}"] = data_fingerprint(path)
            except DataUnavailable as exc:
                problems.append(f"reads {path}: {exc}")
        code = self._code(st)
        blob = json.dumps({"pipeline": self.pipeline.name, "step": st.name, "code": code["code"],
                           "libraries": code["libraries"], "outputs": list(st.outputs), "inputs": inputs,
                           "data": data}, sort_keys=True)
        key = hashlib.sha256(blob.encode()).hexdigest()
        if problems:
            note = "not cached: no fingerprint of " + "; ".join(problems)
            log.warning("pipeline %s step %s %s", self.pipeline.name, st.name, note)
            return key, False, note
        return key, True, None

    def _cached(self, key: str) -> dict[str, Any] | None:
        with self.project.db.engine.connect() as conn:
            row = conn.execute(sa.select(step_cache).where(step_cache.c.cache_key == key)).first()
        if row is None:
            return None
        store = self.project.artifacts
        for ref in row.outputs.values():
            if not store.exists(ref["path"]):
                return None  # an output was deleted: run the step again
        return {"outputs": row.outputs, "lineage": row.lineage}

    def _remember(self, step_name: str, key: str, outputs: dict[str, Any], lineage: dict[str, Any]) -> None:
        with self.project.db.begin() as conn:
            conn.execute(step_cache.delete().where(step_cache.c.cache_key == key))
            conn.execute(step_cache.insert().values(cache_key=key, pipeline=self.pipeline.name, step=step_name,
                                                    outputs=outputs, lineage=lineage, created_at=time.time()))

    def _note(self, step_name: str, status: str, key: str, outputs: dict[str, Any], lineage: dict[str, Any],
              t0: float, *, error: str | None = None, attempts: int = 0,
              attempt_log: list[dict[str, Any]] | None = None) -> None:
        now = time.time()
        ps = pipeline_steps.c
        with self.project.db.begin() as conn:
            conn.execute(pipeline_steps.delete().where((ps.pipeline_run_id == self.id) & (ps.step == step_name)))
            conn.execute(pipeline_steps.insert().values(
                pipeline_run_id=self.id, step=step_name, status=status, cache_key=key, outputs=outputs,
                lineage=lineage, started_at=now - (time.perf_counter() - t0), ended_at=now, error=error,
                attempts=attempts, attempt_log=attempt_log or []))


def _check_params(pipeline: Pipeline, params: Mapping[str, Any] | None) -> dict[str, Any]:
    values = dict(params or {})
    missing = [p for p in pipeline.params_needed if p not in values]
    if missing:
        raise InputError(f"pipeline {pipeline.name!r} params", "missing values for inputs no step produces", missing)
    try:
        json.dumps(values)
    except TypeError as exc:
        raise InputError(f"pipeline {pipeline.name!r} params", f"must be JSON values ({exc})") from exc
    return values


def _done_steps(conn: Any, run_id: str) -> dict[str, dict[str, Any]]:
    ps = pipeline_steps.c
    return {r.step: {"outputs": r.outputs, "lineage": r.lineage, "cache_key": r.cache_key}
            for r in conn.execute(sa.select(pipeline_steps).where(
                (ps.pipeline_run_id == run_id) & (ps.status.in_(("ran", "cached", "resumed")))))}


def pipeline_runs_of(project: Project, pipeline: str | None = None, *, limit: int = 20) -> list[dict[str, Any]]:
    """Recent pipeline runs (newest first) with their lineage and per-step status and attempts."""
    pr = pipeline_runs.c
    query = sa.select(pipeline_runs).order_by(pr.started_at.desc()).limit(max(1, limit))
    if pipeline is not None:
        query = query.where(pr.pipeline == pipeline)
    with project.db.engine.connect() as conn:
        rows = conn.execute(query).all()
        ids = [r.id for r in rows]
        steps: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
        for s in conn.execute(sa.select(pipeline_steps).where(pipeline_steps.c.pipeline_run_id.in_(ids))
                              .order_by(pipeline_steps.c.started_at)):
            steps[s.pipeline_run_id].append({"step": s.step, "status": s.status, "cache_key": s.cache_key,
                                             "error": s.error, "attempts": s.attempts or 0,
                                             "attempt_log": s.attempt_log or []})
    return [{"id": r.id, "pipeline": r.pipeline, "status": r.status, "attempts": r.attempts, "params": r.params,
             "lineage": r.lineage, "run_id": r.run_id, "reason": r.reason, "started_at": r.started_at,
             "ended_at": r.ended_at, "failed_step": r.failed_step, "error": r.error, "steps": steps[r.id]}
            for r in rows]


# ---- the registry of pipelines ---------------------------------------------------------------

_PIPELINES: dict[str, Pipeline] = {}


def register_pipeline(pipeline: Pipeline) -> Pipeline:
    """Make a pipeline findable by its name (``modelmill pipeline run NAME``, the scheduler, triggers)."""
    existing = _PIPELINES.get(pipeline.name)
    if existing is not None and existing is not pipeline:
        same = [s.code_hash for s in existing.steps] == [s.code_hash for s in pipeline.steps]
        if not same:
            raise ConflictError(f"another pipeline is already registered as {pipeline.name!r}", name=pipeline.name)
    _PIPELINES[pipeline.name] = pipeline
    return pipeline


def registered_pipelines() -> dict[str, Pipeline]:
    return dict(_PIPELINES)


def get_pipeline(name: str, project: Project | None = None) -> Pipeline:
    """Find a pipeline by ``"module:attr"``, by registered name, or in the modules listed in the
    project's ``[training] pipelines = ["pkg.pipes", ...]``."""
    if ":" in name:
        module_name, attr = name.split(":", 1)
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise NotFoundError("pipeline module", module_name, f"it cannot be imported ({exc})") from exc
        obj = getattr(module, attr, None)
        if not isinstance(obj, Pipeline):
            raise NotFoundError("pipeline", name, f"{module_name} has no Pipeline named {attr!r}")
        return obj
    if name in _PIPELINES:
        return _PIPELINES[name]
    modules = project.settings.section("training").get("pipelines", []) if project is not None else []
    for module_name in modules if isinstance(modules, list) else []:
        try:
            module = importlib.import_module(str(module_name))
        except ImportError as exc:
            raise NotFoundError("pipeline module", str(module_name),
                                f"listed in [training] pipelines but cannot be imported ({exc})") from exc
        for obj in vars(module).values():
            if isinstance(obj, Pipeline) and obj.name == name:
                return register_pipeline(obj)
    raise NotFoundError("pipeline", name, "use 'module:attr', register_pipeline(), or list its module in "
                                          "modelmill.toml [training] pipelines")


def _profile(project: Project, model_version: str, training_set: str) -> None:
    """The version a run registered gets the reference profile of the training set it recorded (unless it has
    one: the registry makes it when the registration's own lineage names the set). Never raises."""
    from modelmill.monitoring.reference import ReferenceStore
    from modelmill.registry import Registry

    try:
        mv = Registry(project).resolve(model_version)
    except ModelmillError as exc:
        log.warning("pipeline lineage names model version %s, which cannot be read (%s): no reference profile",
                    model_version, exc)
        return
    ReferenceStore(project).ensure(mv, source=training_set)


def _takes_kwargs(params: Mapping[str, inspect.Parameter]) -> bool:
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:100] or "pipeline"
