"""Experiment tracking: runs with params, metric series, tags, artifacts, code and data versions.

Logging is buffered in memory and written in batches (one ``executemany`` per
flush), so one call per point costs a list append, not a database round trip.
A run flushes when its buffer holds ``flush_size`` points, when
``flush_interval`` seconds have passed since the last flush (checked on the
next log call), and when it ends.

    >>> import tempfile
    >>> from modelmill.config import Settings
    >>> from modelmill.project import Project
    >>> project = Project(Settings.defaults(home=tempfile.mkdtemp()))
    >>> with start_run(experiment="demo", project=project) as run:
    ...     run.log_params({"lr": 0.1, "depth": 3})
    ...     for i in range(3):
    ...         run.log_metric("loss", 1.0 / (i + 1), step=i)
    >>> info = Runs(project).get(run.run_id)
    >>> info.status, info.params["lr"], [p.value for p in Runs(project).history(run.run_id, "loss")]
    ('finished', '0.1', [1.0, 0.5, 0.3333333333333333])
    >>> project.close()
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from modelmill.errors import InputError, NotFoundError
from modelmill.project import Project, open_project
from modelmill.store.artifacts import ArtifactRef
from modelmill.store.tables.training import run_artifacts, run_metrics, run_params, run_tags, runs

__all__ = ["MetricPoint", "Run", "RunInfo", "Runs", "environment", "git_state", "start_run"]

STATUSES = ("running", "finished", "failed")
# Packages whose versions are recorded with every run (those that change a model's numbers).
TRACKED_PACKAGES = ("modelmill", "numpy", "pandas", "scipy", "scikit-learn", "lightgbm", "torch", "onnxruntime",
                    "pyarrow", "duckdb", "xgboost", "xgboost-cpu", "catboost")


@dataclasses.dataclass(frozen=True)
class MetricPoint:
    key: str
    value: float
    step: int
    timestamp: float


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunInfo:
    """One run as stored: identity, status, code and data versions, params, tags, artifacts."""

    run_id: str
    experiment: str
    name: str | None
    status: str
    start_time: float
    end_time: float | None
    git_commit: str | None
    git_dirty: bool | None
    data_snapshot: str | None
    feature_version: str | None
    environment: dict[str, Any]
    error: str | None
    params: dict[str, str] = dataclasses.field(default_factory=dict)
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    artifacts: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    metrics: dict[str, dict[str, float | int | None]] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Run:
    """A tracked run. Use :func:`start_run`; the constructor stores settings and does no I/O."""

    def __init__(
        self,
        project: Project,
        *,
        experiment: str,
        name: str | None = None,
        tags: Mapping[str, Any] | None = None,
        data_snapshot: str | None = None,
        feature_version: str | None = None,
        flush_size: int = 10_000,
        flush_interval: float = 5.0,
        own_project: bool = False,
    ) -> None:
        if not isinstance(experiment, str) or not experiment.strip() or len(experiment) > 200:
            raise InputError("experiment", "must be a non-empty name of at most 200 characters", experiment)
        if flush_size < 1:
            raise InputError("flush_size", "must be at least 1", flush_size)
        self.project = project
        self.experiment = experiment
        self.name = name
        self.run_id = uuid.uuid4().hex
        self.data_snapshot = data_snapshot
        self.feature_version = feature_version
        self.flush_size = flush_size
        self.flush_interval = flush_interval
        self.status = "created"
        self._own_project = own_project
        self._metrics: list[tuple[str, str, float | None, int, float]] = []
        self._params: dict[str, str] = {}
        self._tags: dict[str, str] = {_key(k): _text(v) for k, v in (tags or {}).items()}
        self._last_flush = 0.0
        self._data_changed = False

    def __repr__(self) -> str:
        return f"Run(experiment={self.experiment!r}, run_id={self.run_id!r}, status={self.status!r})"

    # ---- lifecycle ----------------------------------------------------------------------------

    def start(self) -> Run:
        """Write the run's row (status ``running``) with the code version and environment."""
        commit, dirty = git_state()
        row = {"run_id": self.run_id, "experiment": self.experiment, "name": self.name, "status": "running",
               "start_time": time.time(), "git_commit": commit, "git_dirty": dirty,
               "data_snapshot": self.data_snapshot, "feature_version": self.feature_version,
               "environment": environment()}
        with self.project.db.begin() as conn:
            conn.execute(runs.insert().values(**row))
        self.status = "running"
        self._last_flush = time.monotonic()
        return self

    def end(self, status: str = "finished", *, error: str | None = None) -> None:
        """Flush what is buffered and mark the run ``finished`` or ``failed``. Idempotent."""
        if status not in ("finished", "failed"):
            raise InputError("status", "must be 'finished' or 'failed'", status)
        if self.status in ("finished", "failed"):
            return
        self._require_running()
        try:
            self.flush()
        finally:
            with self.project.db.begin() as conn:
                conn.execute(runs.update().where(runs.c.run_id == self.run_id)
                             .values(status=status, end_time=time.time(), error=error))
            self.status = status
            if self._own_project:
                self.project.close()

    def __enter__(self) -> Run:
        if self.status == "created":
            self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc is None:
            self.end("finished")
        else:
            text = "".join(traceback.format_exception_only(exc_type, exc)).strip()
            self.end("failed", error=text[-4000:])

    # ---- logging (buffered) -------------------------------------------------------------------

    def log_param(self, key: str, value: Any) -> None:
        self._params[_key(key)] = _text(value)
        self._maybe_flush()

    def log_params(self, params: Mapping[str, Any]) -> None:
        for key, value in params.items():
            self._params[_key(key)] = _text(value)
        self._maybe_flush()

    def set_tag(self, key: str, value: Any) -> None:
        self._tags[_key(key)] = _text(value)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            self._tags[_key(key)] = _text(value)

    def set_data(self, *, data_snapshot: str | None = None, feature_version: str | None = None) -> None:
        """Record the data snapshot and the feature-definition version this run trained on."""
        if data_snapshot is not None:
            self.data_snapshot = str(data_snapshot)
        if feature_version is not None:
            self.feature_version = str(feature_version)
        self._data_changed = True

    def log_metric(self, key: str, value: float, step: int = 0, timestamp: float | None = None) -> None:
        """Buffer one point; the hot path is a tuple append and two comparisons."""
        if type(key) is not str or not key:
            raise InputError("metric key", "must be a non-empty string", key)
        v = float(value)
        self._metrics.append((self.run_id, key, None if v != v else v, int(step),
                              time.time() if timestamp is None else float(timestamp)))
        if len(self._metrics) >= self.flush_size or time.monotonic() - self._last_flush >= self.flush_interval:
            self.flush()

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0, timestamp: float | None = None) -> None:
        """Buffer several points of one step, stamped with one timestamp."""
        ts = time.time() if timestamp is None else float(timestamp)
        step = int(step)
        rid = self.run_id
        append = self._metrics.append
        for key, value in metrics.items():
            if type(key) is not str or not key:
                raise InputError("metric key", "must be a non-empty string", key)
            v = float(value)
            append((rid, key, None if v != v else v, step, ts))
        self._maybe_flush()

    def log_batch(self, points: Iterable[tuple[str, float, int]], timestamp: float | None = None) -> None:
        """Buffer many ``(key, value, step)`` points at once (the MLflow ``log_batch`` counterpart)."""
        ts = time.time() if timestamp is None else float(timestamp)
        rid = self.run_id
        rows = []
        for key, value, step in points:
            if type(key) is not str or not key:
                raise InputError("metric key", "must be a non-empty string", key)
            v = float(value)
            rows.append((rid, key, None if v != v else v, int(step), ts))
        self._metrics.extend(rows)
        self._maybe_flush()

    def log_artifact(self, name: str, data: bytes | str | Path) -> ArtifactRef:
        """Store bytes (or a local file) under ``runs/<run_id>/<name>`` in the artifact store."""
        self._require_running()
        path = f"runs/{self.run_id}/{name}"
        store = self.project.artifacts
        ref = store.put_bytes(path, data) if isinstance(data, bytes) else store.put_file(path, data)
        with self.project.db.begin() as conn:
            conn.execute(run_artifacts.delete().where(
                (run_artifacts.c.run_id == self.run_id) & (run_artifacts.c.name == name)))
            conn.execute(run_artifacts.insert().values(run_id=self.run_id, name=name, path=ref.path,
                                                       sha256=ref.sha256, size=ref.size))
        return ref

    # ---- writing ------------------------------------------------------------------------------

    def _maybe_flush(self) -> None:
        if len(self._metrics) >= self.flush_size or time.monotonic() - self._last_flush >= self.flush_interval:
            self.flush()

    def _require_running(self) -> None:
        if self.status != "running":
            raise InputError("run", f"is {self.status}; log to a started run (use start_run)", self.run_id)

    def flush(self) -> None:
        """Write every buffered point, param and tag in one transaction."""
        self._require_running()
        metrics, self._metrics = self._metrics, []
        params, self._params = self._params, {}
        tags, self._tags = self._tags, {}
        self._last_flush = time.monotonic()
        if not (metrics or params or tags or self._data_changed):
            return
        db = self.project.db
        mark = "?" if db.dialect == "sqlite" else "%s"
        with db.begin() as conn:
            if metrics:
                # Raw executemany: building SQLAlchemy parameter dicts would cost more than the insert.
                conn.exec_driver_sql(
                    f"INSERT INTO run_metrics (run_id, key, value, step, timestamp) "
                    f"VALUES ({mark}, {mark}, {mark}, {mark}, {mark})", metrics)
            for table, values in ((run_params, params), (run_tags, tags)):
                if values:
                    conn.execute(table.delete().where((table.c.run_id == self.run_id) & table.c.key.in_(values)))
                    conn.execute(table.insert(), [{"run_id": self.run_id, "key": k, "value": v}
                                                  for k, v in values.items()])
            if self._data_changed:
                conn.execute(runs.update().where(runs.c.run_id == self.run_id).values(
                    data_snapshot=self.data_snapshot, feature_version=self.feature_version))
                self._data_changed = False


def start_run(
    experiment: str,
    *,
    project: Project | None = None,
    name: str | None = None,
    tags: Mapping[str, Any] | None = None,
    data_snapshot: str | None = None,
    feature_version: str | None = None,
    flush_size: int = 10_000,
    flush_interval: float = 5.0,
) -> Run:
    """Start a tracked run; use it as a context manager so it ends ``finished`` or ``failed``.

    Without ``project`` the working directory's project is opened (and closed when the run ends).
    """
    own = project is None
    run = Run(project or open_project(), experiment=experiment, name=name, tags=tags,
              data_snapshot=data_snapshot, feature_version=feature_version, flush_size=flush_size,
              flush_interval=flush_interval, own_project=own)
    return run.start()


class Runs:
    """Reads runs back: one run, recent runs (``find``), a metric's history, a comparison."""

    def __init__(self, project: Project) -> None:
        self.project = project

    def resolve(self, run_id: str) -> str:
        """The full id of a run from its id or a unique prefix of at least 4 characters."""
        if not isinstance(run_id, str) or len(run_id) < 4:
            raise InputError("run_id", "give the run id or a prefix of at least 4 characters", run_id)
        with self.project.db.engine.connect() as conn:
            found = conn.execute(sa.select(runs.c.run_id).where(runs.c.run_id.startswith(run_id, autoescape=True))
                                 .limit(2)).scalars().all()
        if not found:
            raise NotFoundError("run", run_id, "list runs with `modelmill runs list`")
        if len(found) > 1:
            raise InputError("run_id", "prefix matches several runs; give more characters", run_id)
        return str(found[0])

    def get(self, run_id: str) -> RunInfo:
        """Everything about one run, with a summary (last/min/max/count) of each metric."""
        rid = self.resolve(run_id)
        with self.project.db.engine.connect() as conn:
            row = conn.execute(sa.select(runs).where(runs.c.run_id == rid)).one()
            params = dict(conn.execute(sa.select(run_params.c.key, run_params.c.value)
                                       .where(run_params.c.run_id == rid)).all())
            tags = dict(conn.execute(sa.select(run_tags.c.key, run_tags.c.value)
                                     .where(run_tags.c.run_id == rid)).all())
            arts = {a.name: {"path": a.path, "sha256": a.sha256, "size": a.size}
                    for a in conn.execute(sa.select(run_artifacts).where(run_artifacts.c.run_id == rid))}
            metrics = self._summaries(conn, [rid]).get(rid, {})
        return _info(row, params=params, tags=tags, artifacts=arts, metrics=metrics)

    def find(self, *, experiment: str | None = None, status: str | None = None, limit: int = 50) -> list[RunInfo]:
        """Newest first; params, tags and metric summaries included."""
        if status is not None and status not in STATUSES:
            raise InputError("status", f"must be one of {', '.join(STATUSES)}", status)
        query = sa.select(runs).order_by(runs.c.start_time.desc()).limit(max(1, int(limit)))
        if experiment is not None:
            query = query.where(runs.c.experiment == experiment)
        if status is not None:
            query = query.where(runs.c.status == status)
        with self.project.db.engine.connect() as conn:
            rows = conn.execute(query).all()
            ids = [r.run_id for r in rows]
            params: dict[str, dict[str, str]] = {i: {} for i in ids}
            for r in conn.execute(sa.select(run_params).where(run_params.c.run_id.in_(ids))):
                params[r.run_id][r.key] = r.value
            summaries = self._summaries(conn, ids)
        return [_info(r, params=params[r.run_id], metrics=summaries.get(r.run_id, {})) for r in rows]

    def search(self, filter_string: str | None = None, *, experiments: Sequence[str] | None = None,
               order_by: Sequence[str] = (), max_results: int = 100) -> list[RunInfo]:
        """Runs that match an MLflow-style ``filter_string`` (see :mod:`modelmill.training.search`), ordered by
        ``order_by`` (``"metrics.auc DESC"``; then newest first), at most ``max_results``.

        Params, tags and metric summaries are included. The filter is evaluated here, not in SQL, so that
        ``LIKE``, case and numbers compare the same on SQLite and PostgreSQL; it reads every run of
        ``experiments`` (of all, when None).

            >>> import tempfile
            >>> from modelmill.config import Settings
            >>> project = Project(Settings.defaults(home=tempfile.mkdtemp()))
            >>> for depth, auc in [(4, 0.65), (6, 0.72), (6, 0.81)]:
            ...     with start_run("s", project=project) as run:
            ...         run.log_params({"max_depth": depth})
            ...         run.log_metric("auc", auc)
            >>> found = Runs(project).search("metrics.auc > 0.7 and params.max_depth = 6",
            ...                              order_by=["metrics.auc DESC"])
            >>> [r.metrics["auc"]["last"] for r in found]
            [0.81, 0.72]
            >>> project.close()
        """
        from modelmill.training.search import match, parse_filter, parse_order_by, sort_runs

        clauses = parse_filter(filter_string)
        keys = parse_order_by(order_by)
        if isinstance(max_results, bool) or not isinstance(max_results, int) or not 1 <= max_results <= 100_000:
            raise InputError("max_results", "must be a whole number from 1 to 100000", max_results)
        chosen = sa.select(runs.c.run_id)
        if experiments:
            chosen = chosen.where(runs.c.experiment.in_(list(experiments)))
        columns = [c for c in runs.c if c.name != "environment"]
        with self.project.db.engine.connect() as conn:
            rows = conn.execute(sa.select(*columns).where(runs.c.run_id.in_(chosen))).all()
            params: dict[str, dict[str, str]] = {r.run_id: {} for r in rows}
            tags: dict[str, dict[str, str]] = {r.run_id: {} for r in rows}
            for table, into in ((run_params, params), (run_tags, tags)):
                for r in conn.execute(sa.select(table).where(table.c.run_id.in_(chosen))):
                    into[r.run_id][r.key] = r.value
            summaries = self._summaries(conn, chosen)
        infos = [_info(r, params=params[r.run_id], tags=tags[r.run_id], metrics=summaries.get(r.run_id, {}),
                       environment={}) for r in rows]
        return sort_runs(match(infos, clauses), keys)[:max_results]

    def history(self, run_id: str, key: str | None = None) -> list[MetricPoint]:
        """Every point of one metric (or of all), ordered by key, step and time of logging."""
        rid = self.resolve(run_id)
        m = run_metrics.c
        query = sa.select(m.key, m.value, m.step, m.timestamp).where(m.run_id == rid)
        if key is not None:
            query = query.where(m.key == key)
        with self.project.db.engine.connect() as conn:
            rows = conn.execute(query.order_by(m.key, m.step, m.id)).all()
        return [MetricPoint(k, math.nan if v is None else v, s, t) for k, v, s, t in rows]

    def compare(self, run_ids: Sequence[str]) -> dict[str, Any]:
        """Params and last metric values side by side; ``differs`` lists params whose values differ."""
        infos = [self.get(r) for r in run_ids]
        param_keys = sorted({k for i in infos for k in i.params})
        metric_keys = sorted({k for i in infos for k in i.metrics})
        params = {k: {i.run_id: i.params.get(k) for i in infos} for k in param_keys}
        metrics = {k: {i.run_id: i.metrics.get(k, {}).get("last") for i in infos} for k in metric_keys}
        differs = [k for k, v in params.items() if len(set(v.values())) > 1]
        return {"runs": [{"run_id": i.run_id, "experiment": i.experiment, "status": i.status,
                          "git_commit": i.git_commit, "data_snapshot": i.data_snapshot} for i in infos],
                "params": params, "metrics": metrics, "differs": differs}

    def _summaries(self, conn: sa.Connection, ids: list[str] | sa.Select[Any]
                   ) -> dict[str, dict[str, dict[str, float | int | None]]]:
        """Per run and key: count, min, max, and the last point (highest step; ties go to the latest logged).

        ``ids`` is a list of run ids or a query selecting them."""
        if isinstance(ids, list) and not ids:
            return {}
        m = run_metrics.c
        rank = sa.func.row_number().over(partition_by=(m.run_id, m.key), order_by=(m.step.desc(), m.id.desc()))
        ranked = sa.select(m.run_id, m.key, m.value, m.step, rank.label("rn"),
                           sa.func.count().over(partition_by=(m.run_id, m.key)).label("n"),
                           sa.func.min(m.value).over(partition_by=(m.run_id, m.key)).label("lo"),
                           sa.func.max(m.value).over(partition_by=(m.run_id, m.key)).label("hi"),
                           ).where(m.run_id.in_(ids)).subquery()
        rows = conn.execute(sa.select(ranked).where(ranked.c.rn == 1)).all()
        out: dict[str, dict[str, dict[str, float | int | None]]] = {}
        for r in rows:
            out.setdefault(r.run_id, {})[r.key] = {"last": r.value, "last_step": r.step, "min": r.lo,
                                                   "max": r.hi, "count": r.n}
        return out


def _info(row: Any, **extra: Any) -> RunInfo:
    if "environment" not in extra:  # a search reads runs without it
        extra["environment"] = row.environment or {}
    return RunInfo(run_id=row.run_id, experiment=row.experiment, name=row.name, status=row.status,
                   start_time=row.start_time, end_time=row.end_time, git_commit=row.git_commit,
                   git_dirty=row.git_dirty, data_snapshot=row.data_snapshot, feature_version=row.feature_version,
                   error=row.error, **extra)


def _key(key: Any) -> str:
    if not isinstance(key, str) or not key or len(key) > 250:
        raise InputError("key", "must be a non-empty string of at most 250 characters", key)
    return key


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def git_state(cwd: str | Path | None = None) -> tuple[str | None, bool | None]:
    """The commit checked out at ``cwd`` and whether tracked files differ from it; (None, None) outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return None, None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None, None
    return head.stdout.strip(), (bool(status.stdout.strip()) if status.returncode == 0 else None)


@lru_cache(maxsize=1)
def environment() -> dict[str, Any]:
    """Python, platform and the versions of the packages that change a model's numbers (cached per process)."""
    packages: dict[str, str] = {}
    for name in TRACKED_PACKAGES:
        try:
            packages[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return {"python": platform.python_version(), "implementation": platform.python_implementation(),
            "platform": platform.platform(), "executable": sys.executable, "packages": packages}
