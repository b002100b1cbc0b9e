"""The registry as the control plane reads it: every model, and one version with its whole story.

``modelmill models list|show`` and ``GET /v1/models``, ``GET /v1/models/{name}/versions/{v}`` call
these. A version's story is its record (signature, metrics, lineage, the latest gate decision), the
tracked run behind it, every gate decision taken on it and every alias move that pointed an alias at
it or away from it; the decisions and moves come from the audit trail, where the registry writes
them in the same transaction as the change.

    >>> import tempfile
    >>> import numpy as np
    >>> from sklearn.linear_model import LogisticRegression
    >>> from modelmill.config import Settings
    >>> from modelmill.project import Project
    >>> from modelmill.registry import Field, Registry, Signature
    >>> project = Project(Settings.defaults(home=tempfile.mkdtemp()))
    >>> reg = Registry(project)
    >>> mv = reg.register("demo", LogisticRegression().fit(np.array([[0.0], [1.0]]), [0, 1]), flavor="sklearn",
    ...                   signature=Signature(inputs=[Field("x", "float64")]))
    >>> reg.set_alias("demo", "production", 1, actor="ann", reason="first")
    >>> list_models(project)["models"][0]["versions"]
    [1]
    >>> story = version_detail(project, "demo@1")
    >>> [(c["actor"], c["alias"], c["version"]) for c in story["alias_history"]], story["gate_history"]
    ([('ann', 'production', 1)], [])
    >>> project.close()
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from modelmill.errors import ModelmillError
from modelmill.registry import ModelVersion, Registry
from modelmill.store.tables import audit_log

__all__ = ["gate_history", "list_models", "list_versions", "version_detail"]


def list_models(project: Any) -> dict[str, Any]:
    """``{"models": [{name, latest_version, created_at, updated_at, aliases, versions}]}``, by name."""
    registry = Registry(project)
    return {"models": [{**m.to_dict(), "versions": [v.version for v in registry.versions(m.name)]}
                       for m in registry.models()]}


def list_versions(project: Any, name: str) -> dict[str, Any]:
    """``{"name", "versions": [version record, ...]}``, oldest first; a model nobody registered is a 404."""
    return {"name": name, "versions": [v.to_dict() for v in Registry(project).versions(name)]}


def version_detail(project: Any, ref: str) -> dict[str, Any]:
    """The record of version ``ref`` (``NAME``, ``NAME@3`` or ``NAME@ALIAS``) with ``run``, ``gate_history``
    and ``alias_history``."""
    registry = Registry(project)
    mv = registry.resolve(ref)
    out = mv.to_dict()
    out["run"] = _run(project, mv.run_id)
    out["gate_history"] = gate_history(project, mv)
    out["alias_history"] = [c.to_dict() for c in registry.alias_history(mv.name)
                            if mv.version in (c.version, c.previous)]
    return out


def gate_history(project: Any, mv: ModelVersion) -> list[dict[str, Any]]:
    """Every gate decision recorded on ``mv``, oldest first: ``{at, actor, decision}``.

    :meth:`Registry.record_gate` keeps the latest one on the version and audits each one
    (action ``model.gate``); this reads them back from the audit trail.
    """
    with project.db.engine.connect() as conn:
        rows = conn.execute(sa.select(audit_log.c.at, audit_log.c.actor, audit_log.c.detail).where(
            audit_log.c.subject == f"model:{mv.name}", audit_log.c.action == "model.gate")
            .order_by(audit_log.c.id)).all()
    out = []
    for r in rows:
        detail = dict(r.detail or {})
        if detail.pop("version", None) == mv.version:
            out.append({"at": r.at, "actor": r.actor, "decision": detail})
    return out


def _run(project: Any, run_id: str | None) -> dict[str, Any] | None:
    """The tracked run behind a version, when the training stage knows it."""
    if not run_id:
        return None
    from modelmill.training import Runs

    try:
        info = Runs(project).get(run_id)
    except ModelmillError as exc:
        return {"run_id": run_id, "found": False, "error": exc.message}
    keep = ("run_id", "experiment", "name", "status", "start_time", "end_time", "git_commit", "git_dirty",
            "data_snapshot", "feature_version", "params", "tags", "metrics")
    found = info.as_dict()
    return {"found": True, **{k: found.get(k) for k in keep}}
