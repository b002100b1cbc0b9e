"""Pipelines: Python functions with declared inputs and outputs, cached, resumable, with lineage.

Each step's outputs are pickled into the artifact store under a key made of
the step's code and the hashes of its inputs. A step whose key is already in
the cache is skipped (its outputs are reused without being loaded, unless a
later step needs them); a failed pipeline run can be resumed, in any process,
from the step that failed. Every pipeline run records its lineage (data
snapshot, training set, tracking run, model version) in the metadata database;
a run that recorded both a ``model_version`` and its ``training_set`` leaves that
version with a monitoring reference profile of the set.

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

import dataclasses
import hashlib
import importlib
import inspect
import json
import logging
import pickle
import time
import traceback
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from modelmill.errors import ConflictError, InputError, ModelmillError, NotFoundError
from modelmill.project import Project
from modelmill.store.tables.training import pipeline_runs, pipeline_steps, step_cache
from modelmill.training.tracking import Run

__all__ = [
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


class Step:
    """A function with declared inputs (params or earlier outputs) and outputs. Calling it calls the function."""

    def __init__(self, fn: Callable[..., Any], *, inputs: Sequence[str], outputs: Sequence[str],
                 name: str | None = None) -> None:
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

    def __repr__(self) -> str:
        return f"Step({self.name!r}, inputs={list(self.inputs)}, outputs={list(self.outputs)})"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    @property
    def code_hash(self) -> str:
        """Hash of the function's source (its bytecode and constants when the source is unavailable)."""
        try:
            code = inspect.getsource(self.fn).encode()
        except (OSError, TypeError):
            co = self.fn.__code__
            code = co.co_code + repr(co.co_consts).encode()
        return hashlib.sha256(code).hexdigest()

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


def step(*, inputs: Sequence[str] = (), outputs: Sequence[str] = (), name: str | None = None
         ) -> Callable[[Callable[..., Any]], Step]:
    """Declare a function as a pipeline step. A parameter named ``ctx`` receives a :class:`StepContext`."""

    def wrap(fn: Callable[..., Any]) -> Step:
        return Step(fn, inputs=inputs, outputs=outputs, name=name)

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

    @property
    def run(self) -> Run:
        """The pipeline attempt's tracking run (experiment = pipeline name), started on first use."""
        run = self._attempt.tracking_run()
        self.lineage["run_id"] = run.run_id
        return run

    def record(self, **lineage: Any) -> None:
        """Record lineage: ``data_snapshot``, ``training_set``, ``feature_version``, ``model_version`` or others."""
        for key, value in lineage.items():
            json.dumps(value, default=str)  # must be storable
            self.lineage[key] = value if isinstance(value, str | int | float | bool | None | list | dict) else str(value)
        self._attempt.note_data(self.lineage)


@dataclasses.dataclass(frozen=True, kw_only=True)
class StepResult:
    name: str
    status: str  # ran | cached | resumed | failed | pending
    seconds: float
    cache_key: str | None
    error: str | None = None


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

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "pipeline": self.pipeline, "status": self.status, "attempts": self.attempts,
                "steps": [dataclasses.asdict(s) for s in self.steps], "lineage": self.lineage,
                "run_id": self.run_id, "failed_step": self.failed_step, "error": self.error}


class Pipeline:
    """An ordered list of steps under a name. ``run()`` executes it against a project."""

    def __init__(self, name: str, steps: Sequence[Step]) -> None:
        if not isinstance(name, str) or not name or len(name) > 300:
            raise InputError("pipeline name", "must be a non-empty string of at most 300 characters", name)
        self.name = name
        self.steps = list(steps)
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

    def __repr__(self) -> str:
        return f"Pipeline({self.name!r}, steps={[s.name for s in self.steps]})"

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
            reason: str | None = None) -> PipelineResult:
        """Run every step, skipping those whose cache key is known.

        ``resume`` is a failed pipeline run's id (or ``"last"``): its finished steps are reused as
        they were, and execution starts again at the step that failed, with the params it had.
        A failure does not raise: the result has ``status == "failed"``, the step and the error.
        """
        attempt = _Attempt.resume(self, project, resume) if resume else _Attempt.new(self, project, params, reason)
        return attempt.execute()


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

    @classmethod
    def new(cls, pipeline: Pipeline, project: Project, params: Mapping[str, Any] | None,
            reason: str | None) -> _Attempt:
        values = dict(params or {})
        missing = [p for p in pipeline.params_needed if p not in values]
        if missing:
            raise InputError(f"pipeline {pipeline.name!r} params", "missing values for inputs no step produces",
                             missing)
        try:
            json.dumps(values)
        except TypeError as exc:
            raise InputError(f"pipeline {pipeline.name!r} params", f"must be JSON values ({exc})") from exc
        rid = uuid.uuid4().hex
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
            ps = pipeline_steps.c
            done = {r.step: {"outputs": r.outputs, "lineage": r.lineage, "cache_key": r.cache_key}
                    for r in conn.execute(sa.select(pipeline_steps).where(
                        (ps.pipeline_run_id == row.id) & (ps.status.in_(("ran", "cached", "resumed")))))}
        return cls(pipeline, project, row.id, dict(row.params), row.attempts + 1, done)

    # ---- used by StepContext -----------------------------------------------------------------

    def tracking_run(self) -> Run:
        if self._run is None:
            self._run = Run(self.project, experiment=self.pipeline.name[:200],
                            tags={"pipeline": self.pipeline.name, "pipeline_run_id": self.id,
                                  "attempt": self.attempts}).start()
            self._run.log_params({k: v for k, v in self.params.items()})
            self._apply_data()
        return self._run

    def note_data(self, lineage: Mapping[str, Any]) -> None:
        for key in ("data_snapshot", "feature_version"):
            if lineage.get(key) is not None:
                self._data[key] = str(lineage[key])
        self._apply_data()

    def _apply_data(self) -> None:
        if self._run is not None and self._data:
            self._run.set_data(**self._data)

    # ---- execution ---------------------------------------------------------------------------

    def execute(self) -> PipelineResult:
        refs: dict[str, dict[str, Any]] = {}  # output -> {"path", "sha256"}
        values: dict[str, Any] = {}
        lineage: dict[str, Any] = {}
        results: list[StepResult] = []
        failed: tuple[str, str] | None = None
        for st in self.pipeline.steps:
            t0 = time.perf_counter()
            prior = self.done.get(st.name)
            if failed is not None:
                results.append(StepResult(name=st.name, status="pending", seconds=0.0, cache_key=None))
                continue
            if prior is not None:
                refs.update(prior["outputs"])
                lineage.update(prior["lineage"])
                self.note_data(prior["lineage"])
                results.append(StepResult(name=st.name, status="resumed", seconds=0.0, cache_key=prior["cache_key"]))
                continue
            key = self._cache_key(st, refs)
            cached = self._cached(key)
            if cached is not None:
                refs.update(cached["outputs"])
                lineage.update(cached["lineage"])
                self._note(st.name, "cached", key, cached["outputs"], cached["lineage"], t0)
                self.note_data(cached["lineage"])
                results.append(StepResult(name=st.name, status="cached", seconds=time.perf_counter() - t0,
                                          cache_key=key))
                continue
            ctx = StepContext(self, st.name)
            try:
                kwargs = {i: self._value(i, refs, values) for i in st.inputs}
                if st.wants_ctx:
                    kwargs["ctx"] = ctx
                outputs = st.split_outputs(st.fn(**kwargs))
                out_refs = {}
                for name, value in outputs.items():
                    ref = self.project.artifacts.put_bytes(
                        f"pipelines/{_slug(self.pipeline.name)}/{key}/{name}.pkl",
                        pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
                    out_refs[name] = {"path": ref.path, "sha256": ref.sha256}
                    values[name] = value
            except Exception as exc:
                error = "".join(traceback.format_exception(exc)[-6:]).strip()[-4000:]
                self._note(st.name, "failed", key, {}, ctx.lineage, t0, error=error)
                results.append(StepResult(name=st.name, status="failed", seconds=time.perf_counter() - t0,
                                          cache_key=key, error=f"{type(exc).__name__}: {exc}"))
                failed = (st.name, f"{type(exc).__name__}: {exc}")
                continue
            refs.update(out_refs)
            lineage.update(ctx.lineage)
            self._remember(st.name, key, out_refs, ctx.lineage)
            self._note(st.name, "ran", key, out_refs, ctx.lineage, t0)
            results.append(StepResult(name=st.name, status="ran", seconds=time.perf_counter() - t0, cache_key=key))
        return self._finish(results, refs, values, lineage, failed)

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

    def _cache_key(self, st: Step, refs: dict[str, dict[str, Any]]) -> str:
        inputs = {}
        for name in st.inputs:
            if name in refs:
                inputs[name] = refs[name]["sha256"]
            elif name in self.params:
                inputs[name] = hashlib.sha256(json.dumps(self.params[name], sort_keys=True).encode()).hexdigest()
            else:
                inputs[name] = "missing"
        blob = json.dumps({"pipeline": self.pipeline.name, "step": st.name, "code": st.code_hash,
                           "outputs": list(st.outputs), "inputs": inputs}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

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
              t0: float, *, error: str | None = None) -> None:
        now = time.time()
        ps = pipeline_steps.c
        with self.project.db.begin() as conn:
            conn.execute(pipeline_steps.delete().where((ps.pipeline_run_id == self.id) & (ps.step == step_name)))
            conn.execute(pipeline_steps.insert().values(
                pipeline_run_id=self.id, step=step_name, status=status, cache_key=key, outputs=outputs,
                lineage=lineage, started_at=now - (time.perf_counter() - t0), ended_at=now, error=error))


def pipeline_runs_of(project: Project, pipeline: str | None = None, *, limit: int = 20) -> list[dict[str, Any]]:
    """Recent pipeline runs (newest first) with their lineage and per-step status."""
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
                                             "error": s.error})
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
