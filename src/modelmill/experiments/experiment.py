"""An experiment's definition, stored in the metadata database, with its exposure log.

An experiment on a served model sets that model's traffic route through
serving's :class:`~modelmill.serving.RouteTable` (its salt is the experiment's),
so the router's sticky split and :class:`~modelmill.experiments.Assigner` agree.

    >>> import tempfile
    >>> from modelmill.config import Settings
    >>> from modelmill.project import Project
    >>> p = Project(Settings.defaults(home=tempfile.mkdtemp()))
    >>> store = Experiments(p)
    >>> e = store.create(Experiment(name="ranker-v2", variants=(Arm("control", 50), Arm("treatment", 50)),
    ...                             primary_metric="click", min_sample_size=1000))
    >>> store.log_exposures("ranker-v2", [("u1", "control", 1.0), ("u1", "control", 2.0), ("u2", "treatment", 3.0)])
    2
    >>> store.exposure_counts("ranker-v2")
    {'control': 1, 'treatment': 1}
    >>> p.close()
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd
import sqlalchemy as sa

from modelmill.errors import ConflictError, InputError, NotFoundError
from modelmill.events import emit
from modelmill.experiments.analysis import Analysis, analyze_frame
from modelmill.experiments.assignment import Assigner
from modelmill.experiments.metrics import (
    LABELLED_METRICS,
    SCORED_METRICS,
    check_served_metric,
    check_task_metric,
    direction_of,
    served_values,
)
from modelmill.experiments.stats import check_correction, srm_test
from modelmill.store.feedback import Feedback, LabelTask, label_task
from modelmill.store.tables.experiments import experiment_exposures, experiments, rollouts

__all__ = ["Arm", "Experiment", "Experiments", "parse_arms"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}$")


@dataclasses.dataclass(frozen=True)
class Arm:
    """A variant of an experiment: its ``weight`` and, on a served model, the ``version`` it serves."""

    name: str
    weight: float
    version: int | str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise InputError("variant.name", "must be letters, digits, '_', '.' or '-'", self.name)
        if not isinstance(self.weight, int | float) or not self.weight > 0:
            raise InputError(f"variant {self.name}: weight", "must be a number above 0", self.weight)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Experiment:
    """What is compared, on which unit, by which metrics; the first variant is the control.

    ``direction`` says which way ``primary_metric`` is better (``higher`` or ``lower``); left out,
    it follows the metric's name (``log_loss``, ``*_error``, ``latency_ms`` … are lower-is-better).
    ``correction`` is the multiple-testing correction across the treatments' comparisons:
    ``holm`` (the default; the chance of any false switch stays at most ``alpha``), ``bh``
    (Benjamini–Hochberg, the false discovery rate) or ``none``; with one treatment all three agree.
    """

    name: str
    variants: tuple[Arm, ...]
    primary_metric: str
    unit: str = "user_id"
    salt: str = ""
    guardrails: tuple[str, ...] = ()
    min_sample_size: int = 0
    alpha: float = 0.05
    model: str | None = None
    direction: str | None = None
    correction: str = "holm"
    status: str = "running"
    created_at: float = 0.0
    stopped_at: float | None = None
    result: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise InputError("name", "must be letters, digits, '_', '.' or '-' (at most 200)", self.name)
        variants = tuple(self.variants)
        if len(variants) < 2:
            raise InputError("variants", "an experiment needs a control and at least one treatment",
                             [v.name for v in variants])
        if len({v.name for v in variants}) != len(variants):
            raise InputError("variants", "variant names must be unique", [v.name for v in variants])
        if self.model is not None and any(v.version is None for v in variants):
            raise InputError("variants", "on a served model every variant needs a version (NAME=VERSION:WEIGHT)")
        if not 0 < self.alpha < 1:
            raise InputError("alpha", "must lie strictly between 0 and 1", self.alpha)
        if self.min_sample_size < 0:
            raise InputError("min_sample_size", "must be 0 or more", self.min_sample_size)
        if not self.primary_metric:
            raise InputError("primary_metric", "name the metric the decision is made on")
        object.__setattr__(self, "direction", direction_of(self.primary_metric, self.direction))
        check_correction(self.correction)
        object.__setattr__(self, "variants", variants)
        object.__setattr__(self, "guardrails", tuple(self.guardrails))
        if not self.salt:
            object.__setattr__(self, "salt", self.name)

    @property
    def control(self) -> str:
        return self.variants[0].name

    @property
    def weights(self) -> dict[str, float]:
        return {v.name: v.weight for v in self.variants}

    def assigner(self) -> Assigner:
        return Assigner(variants=[(v.name, v.weight) for v in self.variants], salt=self.salt)

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["variants"] = [dataclasses.asdict(v) for v in self.variants]
        d["guardrails"] = list(self.guardrails)
        return d

    def _row(self) -> dict[str, Any]:
        d = self.as_dict()
        return {k: d[k] for k in ("name", "model", "status", "unit", "salt", "variants", "primary_metric",
                                  "direction", "correction", "guardrails", "min_sample_size", "alpha", "created_at", "stopped_at",
                                  "result")}

    @classmethod
    def _from_row(cls, row: Any) -> Experiment:
        return cls(name=row.name, model=row.model, status=row.status, unit=row.unit, salt=row.salt,
                   variants=tuple(Arm(v["name"], v["weight"], v.get("version")) for v in row.variants),
                   primary_metric=row.primary_metric, direction=row.direction,
                   correction=row.correction or "holm", guardrails=tuple(row.guardrails),
                   min_sample_size=row.min_sample_size, alpha=row.alpha, created_at=row.created_at,
                   stopped_at=row.stopped_at, result=row.result)


class Experiments:
    """The experiments of a project: create, read, stop, log exposures, analyse from the prediction log."""

    def __init__(self, project: Any) -> None:
        self.project = project

    def __repr__(self) -> str:
        return f"Experiments({self.project!r})"

    def create(self, experiment: Experiment, *, actor: str = "api") -> Experiment:
        """Store ``experiment`` (a name is used once) and, on a served model, set its route.

        On a served model the metrics must be ones the prediction log can give (see
        :data:`~modelmill.experiments.metrics.SERVED_METRICS`) that fit the task of the versions the variants
        serve (:data:`~modelmill.experiments.metrics.TASK_SERVED_METRICS`; a variant naming no version: the
        newest): refused here, before any traffic is split, rather than when the experiment is analysed.
        Variants serving versions of different tasks are a :class:`ConflictError`.
        """
        if experiment.model is not None:
            task = self._arms_task(experiment)
            for field, metric in [("primary_metric", experiment.primary_metric),
                                  *(("guardrails", g) for g in experiment.guardrails)]:
                check_task_metric(field, metric, task.kind, experiment.model)
        exp = dataclasses.replace(experiment, status="running", created_at=time.time(), stopped_at=None,
                                  result=None)
        db = self.project.db
        with db.begin() as conn:
            if conn.execute(sa.select(experiments.c.name).where(experiments.c.name == exp.name)).first():
                raise ConflictError(f"experiment {exp.name!r} exists; choose another name", name=exp.name)
            if exp.model is not None:  # one owner of a model's route at a time: a rollout, or one experiment
                other = conn.execute(sa.select(experiments.c.name).where(
                    experiments.c.model == exp.model, experiments.c.status == "running")).scalar()
                if other is not None:
                    raise ConflictError(f"experiment {other!r} is already running on model {exp.model!r}; stop it "
                                        "first", name=exp.name, model=exp.model, running=other)
                rolling = conn.execute(sa.select(rollouts.c.candidate).where(
                    rollouts.c.model == exp.model, rollouts.c.status == "running")).scalar()
                if rolling is not None:
                    raise ConflictError(f"model {exp.model!r} has an active rollout of version {rolling}, which "
                                        "owns its traffic route; wait for it, promote it or roll it back first",
                                        name=exp.name, model=exp.model)
            conn.execute(experiments.insert().values(**exp._row()))
            db.audit(conn, actor=actor, action="experiment.create", subject=exp.name, detail=exp.as_dict())
        if exp.model is not None:
            self._route(exp, [(v.name, v.version, v.weight) for v in exp.variants], actor=actor,
                        reason=f"experiment {exp.name} started")
        return exp

    def get(self, name: str) -> Experiment:
        with self.project.db.begin() as conn:
            row = conn.execute(sa.select(experiments).where(experiments.c.name == name)).first()
        if row is None:
            raise NotFoundError("experiment", name, "list them with `modelmill experiment status`")
        return Experiment._from_row(row)

    def list(self) -> list[Experiment]:
        with self.project.db.begin() as conn:
            rows = conn.execute(sa.select(experiments).order_by(experiments.c.created_at)).all()
        return [Experiment._from_row(r) for r in rows]

    def stop(self, name: str, *, winner: str | None = None, result: dict[str, Any] | None = None,
             actor: str = "api") -> Experiment:
        """End the experiment; on a served model all traffic goes to ``winner`` (default: the control)."""
        exp = self.get(name)
        if exp.status != "running":
            raise ConflictError(f"experiment {name!r} is already {exp.status}", name=name, status=exp.status)
        winner = winner or exp.control
        arm = {v.name: v for v in exp.variants}.get(winner)
        if arm is None:
            raise InputError("winner", f"is not a variant of {name}; variants are "
                                       f"{', '.join(v.name for v in exp.variants)}", winner)
        now = time.time()
        detail = {"winner": winner, **(result or {})}
        db = self.project.db
        with db.begin() as conn:
            n = conn.execute(experiments.update()
                             .where(experiments.c.name == name, experiments.c.status == "running")
                             .values(status="stopped", stopped_at=now, result=detail)).rowcount
            if n != 1:
                raise ConflictError(f"experiment {name!r} was stopped concurrently", name=name)
            db.audit(conn, actor=actor, action="experiment.stop", subject=name, detail=detail)
            emit(self.project, "experiment.stop", {"experiment": name, "model": exp.model, **detail}, subject=name,
                 actor=actor, conn=conn)
        if exp.model is not None:
            self._route(exp, [(arm.name, arm.version, 1.0)], actor=actor, reason=f"experiment {name} stopped")
        return self.get(name)

    def _route(self, exp: Experiment, arms: Sequence[tuple[str, Any, float]], *, actor: str, reason: str) -> None:
        from modelmill.serving import RouteTable, Variant

        assert exp.model is not None
        RouteTable(self.project).set(exp.model, [Variant(n, v, w) for n, v, w in arms], salt=exp.salt,
                                     actor=actor, reason=reason)

    # ---- exposures -----------------------------------------------------------------------------

    def log_exposures(self, name: str, rows: Iterable[tuple[str, str, float]]) -> int:
        """Record first exposures ``(unit_id, variant, at)``; a unit already exposed keeps its first row.

        Returns how many units were new. Idempotent, so a replayed log does not double count.
        """
        exp = self.get(name)
        known = {v.name for v in exp.variants}
        first: dict[str, tuple[str, float]] = {}
        for unit, variant, at in rows:
            if variant not in known:
                raise InputError("variant", f"is not a variant of experiment {name}", variant)
            unit = str(unit)
            if unit not in first or at < first[unit][1]:
                first[unit] = (variant, float(at))
        db = self.project.db
        if first:  # the units logged before are left out here, not by the insert: a page re-syncs on each read
            with db.begin() as conn:
                known = set(conn.execute(sa.select(experiment_exposures.c.unit_id)
                                         .where(experiment_exposures.c.experiment == name)).scalars())
            first = {u: x for u, x in first.items() if u not in known}
        if not first:
            return 0
        values = [{"experiment": name, "unit_id": u, "variant": v, "at": t} for u, (v, t) in first.items()]
        if db.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            stmt: Any = pg_insert(experiment_exposures).on_conflict_do_nothing()
        else:
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            stmt = sqlite_insert(experiment_exposures).on_conflict_do_nothing()
        added = 0
        with db.begin() as conn:
            # RETURNING counts the rows really inserted; rowcount is -1 for batched inserts on PostgreSQL.
            for i in range(0, len(values), 1000):
                added += len(conn.execute(stmt.values(values[i: i + 1000])
                                          .returning(experiment_exposures.c.unit_id)).all())
        return added

    def exposure_counts(self, name: str) -> dict[str, int]:
        """Exposed units per variant (every variant listed, zero included)."""
        exp = self.get(name)
        q = (sa.select(experiment_exposures.c.variant, sa.func.count())
             .where(experiment_exposures.c.experiment == name).group_by(experiment_exposures.c.variant))
        with self.project.db.begin() as conn:
            got = {r[0]: int(r[1]) for r in conn.execute(q)}
        return {v.name: got.get(v.name, 0) for v in exp.variants}

    def sync_exposures(self, name: str) -> int:
        """Log the first exposure of every routing key in the served model's prediction log."""
        exp = self.get(name)
        if exp.model is None:
            return 0
        rows = Feedback(self.project.offline).assignments(exp.model, since=exp.created_at,
                                                          variants=[v.name for v in exp.variants])
        return self.log_exposures(name, rows)

    def status(self, name: str) -> dict[str, Any]:
        """The definition, exposures per variant and the sample-ratio p-value."""
        exp = self.get(name)
        counts = self.exposure_counts(name)
        total = sum(counts.values())
        srm = srm_test(list(counts.values()), [v.weight for v in exp.variants]) if total else 1.0
        return {**exp.as_dict(), "exposures": counts, "srm_p_value": srm,
                "min_sample_reached": min(counts.values()) >= exp.min_sample_size}

    def analyze(self, name: str, *, test: str | None = None, direction: str | None = None,
                correction: str | None = None) -> Analysis:
        """Analyse a served-model experiment from the prediction log joined with the delayed labels.

        The metric is one of :data:`~modelmill.experiments.metrics.SERVED_METRICS`: a column of
        the log (``output``, ``latency_ms``), the label (``label``, ``conversion``), or a per-request score
        of output and label (``log_loss``, ``brier``, ``accuracy``; a multiclass model's ``log_loss`` and
        ``accuracy``; a regression model's ``squared_error`` and ``absolute_error``), aggregated per routing
        key (the unit) as a ratio metric.
        ``direction`` and ``correction`` override the ones stored with the experiment.
        """
        exp, frame = self.log(name)
        return self.analyze_log(exp, frame, test=test, direction=direction, correction=correction)

    def log(self, name: str) -> tuple[Experiment, pd.DataFrame]:
        """The served-model experiment ``name`` and the log :meth:`analyze` reads: one row per logged
        request with a routing key since it started (``ts``: when answered; ``label`` for a labelled
        metric), with the primary metric's column. The console slices it by ``ts`` to show the analysis
        over time, one :meth:`analyze_log` per cutoff."""
        exp = self.get(name)
        if exp.model is None:
            raise InputError("experiment", "has no served model; analyse its log with "
                                           "`modelmill experiment analyze --input FILE`", name)
        check_served_metric("primary_metric", exp.primary_metric)  # stored before create() checked it
        return exp, self._joined_log(exp)

    def analyze_log(self, exp: Experiment, frame: pd.DataFrame, *, test: str | None = None,
                    direction: str | None = None, correction: str | None = None) -> Analysis:
        """Analyse ``frame`` (all or part of :meth:`log`) with the experiment's settings."""
        if frame.empty:
            raise InputError("experiment", "has no logged predictions with a routing key yet"
                             + (" that have labels" if exp.primary_metric in LABELLED_METRICS else ""), exp.name)
        return analyze_frame(frame, variant_column="variant", metric=exp.primary_metric, control=exp.control,
                             unit_column="routing_key", test=test, alpha=exp.alpha, weights=exp.weights,
                             min_sample_size=exp.min_sample_size, direction=direction or exp.direction,
                             correction=correction or exp.correction)

    def _joined_log(self, exp: Experiment) -> pd.DataFrame:
        assert exp.model is not None  # log() refuses an experiment without a served model
        metric = exp.primary_metric
        # A failed request (a row without output) has no score; it counts in the rollout guardrails, not here.
        frame = Feedback(self.project.offline).routed(exp.model, since=exp.created_at,
                                                      labelled=metric in LABELLED_METRICS,
                                                      answered=metric in ("output", *SCORED_METRICS))
        if frame.empty:
            return frame
        # Each row is scored with the task of the version that served it: variants of one experiment may serve
        # versions whose classes differ (a retrained multiclass model), and the newest version may serve none.
        versions = sorted({int(v) for v in frame["version"].dropna()}) if "version" in frame else []
        tasks: dict[int | None, LabelTask] = {v: self._task(f"{exp.model}@{v}") for v in versions} or \
            {None: self._task(exp.model)}
        _one_kind(exp.model, tasks.values())
        for task in set(tasks.values()):
            check_task_metric("primary_metric", metric, task.kind, exp.model)
        if len({(t.kind, t.classes) for t in tasks.values()}) == 1:
            task = next(iter(tasks.values()))
            frame[metric] = served_values(frame, metric, task=task.kind, classes=task.classes)
            return frame
        values = pd.Series(float("nan"), index=frame.index, dtype="float64")
        for version, task in tasks.items():
            rows = frame["version"] == version
            values[rows] = served_values(frame[rows], metric, task=task.kind, classes=task.classes).to_numpy()
        frame[metric] = values
        return frame

    def _arms_task(self, experiment: Experiment) -> LabelTask:
        """The task the experiment's variants serve: each arm's version's (the model's newest for an arm that
        names none); variants of different tasks are refused, since their metrics do not compare."""
        assert experiment.model is not None
        refs = {experiment.model if arm.version is None else f"{experiment.model}@{arm.version}"
                for arm in experiment.variants}
        tasks = [self._task(ref) for ref in sorted(refs)] or [self._task(experiment.model)]
        return _one_kind(experiment.model, tasks)

    def _task(self, ref: str) -> LabelTask:
        """The task (and classes) the version ``ref`` (``name``: its newest; ``name@3``, ``name@alias``)
        records; no task for a model or version not registered here (its metrics are then checked against its
        labels alone)."""
        from modelmill.registry import Registry  # late: the registry is not the experiments' dependency

        try:
            return label_task(Registry(self.project).resolve(ref))
        except NotFoundError:
            return LabelTask(source=ref)


def _one_kind(model: str, tasks: Iterable[LabelTask]) -> LabelTask:
    """The one task kind of ``tasks`` (their first); a ConflictError naming each when they differ."""
    tasks = list(tasks)
    kinds = {t.kind for t in tasks if t.kind is not None}
    if len(kinds) > 1:
        named = ", ".join(sorted(f"{t.source}: {t.kind}" for t in tasks if t.kind is not None))
        raise ConflictError(f"the variants of model {model!r} serve versions of different tasks ({named}); their "
                            "metrics do not compare", model=model)
    recorded = [t for t in tasks if t.kind is not None]
    return recorded[0] if recorded else tasks[0]


def parse_arms(specs: Sequence[str]) -> tuple[Arm, ...]:
    """``["control=production:50", "treatment=4:50"]`` or ``["A:50", "B:50"]`` → arms (control first)."""
    arms = []
    for spec in specs:
        name, _, rest = spec.partition("=") if "=" in spec else ("", "", spec)
        target, _, weight = rest.rpartition(":")
        if not name:
            name, target = target, ""
        try:
            w = float(weight)
        except ValueError:
            raise InputError("variant", "use NAME:WEIGHT or NAME=VERSION:WEIGHT", spec) from None
        version: int | str | None = (int(target) if target.isdigit() else target) if target else None
        arms.append(Arm(name, w, version))
    return tuple(arms)
