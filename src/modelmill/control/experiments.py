"""Experiments as the control plane runs them: create, list, status, results with the decision, stop.

``modelmill experiment ...`` and the ``/v1/experiments`` routes call these. An experiment on a
served model splits that model's traffic route as soon as it is created and sends it all to the
winner when it stops; the results read the prediction log joined with the delayed labels.

    >>> import tempfile
    >>> from modelmill.config import Settings
    >>> from modelmill.project import Project
    >>> project = Project(Settings.defaults(home=tempfile.mkdtemp()))
    >>> made = create_experiment(project, **create_request({"name": "ranker", "metric": "click", "variants": [
    ...     {"name": "control", "weight": 50}, {"name": "treatment", "weight": 50}]}), actor="ann")
    >>> made["salt"], made["status"]
    ('ranker', 'running')
    >>> results = experiment_results(project, "ranker")
    >>> results["experiment"]["exposures"], results["analysis"], results["no_data"][:30]
    ({'control': 0, 'treatment': 0}, None, 'experiment ranker has no serve')
    >>> stop_experiment(project, "ranker", actor="ann")["status"]
    'stopped'
    >>> project.close()
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from modelmill.control import fields
from modelmill.errors import InputError
from modelmill.experiments import Arm, Experiment, Experiments
from modelmill.experiments.stats import check_correction
from modelmill.registry import Registry
from modelmill.registry.versions import check_model_name

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["CREATE_FIELDS", "analyze_experiment", "create_experiment", "create_request", "experiment_results",
           "experiment_status", "list_experiments", "stop_experiment"]

#: What ``POST /v1/experiments`` takes: the options of ``modelmill experiment create``.
CREATE_FIELDS = ("name", "variants", "metric", "direction", "model", "unit", "salt", "guardrails",
                 "min_sample_size", "alpha", "correction")
_ARM_FIELDS = ("name", "weight", "version")


def _arms(raw: Any) -> tuple[Arm, ...]:
    if not isinstance(raw, list) or not 2 <= len(raw) <= 100:
        raise InputError("variants", "is required: an array of 2 to 100 {name, weight, version}, the control first",
                         raw)
    arms = []
    for i, v in enumerate(raw):
        where = f"variants[{i}]"
        if not isinstance(v, dict):
            raise InputError(where, "must be an object {name, weight, version}", v)
        try:
            fields.only(v, _ARM_FIELDS, "a variant")
            name = fields.string(v, "name")
            weight = fields.number(v, "weight", exclusive=True, maximum=1e9)
            version = v.get("version")
            number = isinstance(version, int) and not isinstance(version, bool) and version >= 1
            alias = isinstance(version, str) and 0 < len(version) <= 64
            if not (version is None or number or alias):
                raise InputError("version", "must be a version number or an alias", version)
            arms.append(Arm(name, weight, version))
        except InputError as exc:
            raise InputError(f"{where}.{exc.field}", exc.problem, exc.value) from None
    return tuple(arms)


def create_request(body: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of :func:`create_experiment` a ``POST /v1/experiments`` body gives (checked)."""
    fields.only(body, CREATE_FIELDS, "an experiment")
    model = fields.string(body, "model", None, max_length=128, nullable=True)
    return {
        "name": fields.string(body, "name"),
        "variants": _arms(body.get("variants")),
        "metric": fields.string(body, "metric"),
        "direction": fields.string(body, "direction", None, nullable=True),
        "model": None if model is None else check_model_name(model),
        "unit": fields.string(body, "unit", "user_id"),
        "salt": fields.string(body, "salt", ""),
        "guardrails": fields.strings(body, "guardrails"),
        "min_sample_size": fields.integer(body, "min_sample_size", 0),
        "alpha": fields.number(body, "alpha", 0.05, exclusive=True, maximum=0.5),
        "correction": check_correction(fields.string(body, "correction", "holm")),
    }


def create_experiment(project: Any, *, name: str, variants: Sequence[Arm], metric: str, actor: str,
                      direction: str | None = None, model: str | None = None, unit: str = "user_id",
                      salt: str = "", guardrails: Sequence[str] = (), min_sample_size: int = 0,
                      alpha: float = 0.05, correction: str = "holm",
                      check_versions: bool | None = None) -> dict[str, Any]:
    """Store an experiment and, on a served ``model``, split its traffic route now; the experiment.

    ``correction`` (``holm``, ``bh`` or ``none``) is applied across the treatments when it is analysed.

    ``check_versions`` first resolves and loads every variant's version of ``model``, as the
    servers would, so that a split no server can serve is refused (404, 409), not stored; by default
    (None) that is done whenever ``model`` is registered (an experiment on a model known only from a
    prediction log has no versions to check).
    """
    exp = Experiment(name=name, variants=tuple(variants), primary_metric=metric, direction=direction, model=model,
                     unit=unit, salt=salt, guardrails=tuple(guardrails), min_sample_size=min_sample_size, alpha=alpha,
                     correction=correction)
    registry = Registry(project)
    if check_versions is None and model is not None:
        check_versions = any(m.name == model for m in registry.models())
    if check_versions and model is not None:
        for arm in exp.variants:
            registry.load(registry.resolve(f"{model}@{arm.version}"))
    return Experiments(project).create(exp, actor=actor).as_dict()


def list_experiments(project: Any) -> dict[str, Any]:
    """``{"experiments": [experiment, ...]}``, oldest first."""
    return {"experiments": [e.as_dict() for e in Experiments(project).list()]}


def experiment_status(project: Any, name: str, *, sync: bool = True) -> dict[str, Any]:
    """The definition with ``exposures`` per variant, ``srm_p_value`` and ``min_sample_reached``; with
    ``sync``, new exposures are read from the prediction log first."""
    store = Experiments(project)
    if sync:
        store.sync_exposures(name)
    return store.status(name)


def analyze_experiment(project: Any, name: str, *, test: str | None = None, direction: str | None = None,
                       correction: str | None = None) -> dict[str, Any]:
    """Every treatment compared with the control, from the prediction log and the labels, with its decision;
    ``correction`` overrides the experiment's own for this analysis."""
    return Experiments(project).analyze(name, test=test, direction=direction, correction=correction).as_dict()


def experiment_results(project: Any, name: str, *,
                       log: tuple[Experiment, pd.DataFrame] | None = None) -> dict[str, Any]:
    """``{"experiment": status, "analysis", "decisions", "no_data"}``; ``log``: the experiment's
    :meth:`~modelmill.experiments.Experiments.log`, already read (the console reads it once per page).

    ``decisions`` has one ``{treatment, decision, reason}`` per treatment (``keep_control``,
    ``switch_to_treatment`` or ``continue``). An experiment that cannot be analysed yet (no served
    model, nothing logged, no labels for a labelled metric, too few units) has ``analysis`` null, no
    decisions and the reason in ``no_data``: no data is never a decision.
    """
    status = experiment_status(project, name)
    store = Experiments(project)
    try:
        analysis = store.analyze(name) if log is None else store.analyze_log(*log)
    except InputError as exc:  # the request is sound; the log cannot answer it yet
        return {"experiment": status, "analysis": None, "decisions": [], "no_data": _no_data(name, exc)}
    decisions = [{"treatment": c.treatment.name, "decision": d.decision, "reason": d.reason}
                 for c, d in analysis.comparisons]
    return {"experiment": status, "analysis": analysis.as_dict(), "decisions": decisions, "no_data": None}


def _no_data(name: str, exc: InputError) -> str:
    if exc.field == "experiment":
        return f"experiment {name} {exc.problem}"
    return exc.message


def stop_experiment(project: Any, name: str, *, actor: str, winner: str | None = None) -> dict[str, Any]:
    """End the experiment; on a served model all traffic goes to ``winner`` (default: the control)."""
    return Experiments(project).stop(name, winner=winner, actor=actor).as_dict()
