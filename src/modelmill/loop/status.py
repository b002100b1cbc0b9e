"""``modelmill loop status``: each configured model's state, read from the database alone.

The answer (also ``modelmill loop status --json``)::

    {"leader": "host:pid:abc123" | null,        # the live lease's holder; null when none is live
     "lease": {"name", "holder", "epoch", "acquired_at", "renewed_at", "expires_at", "live"} | null,
     "last_round_at": 1764583200.0 | null,
     "models": {"clicks": {
         "feature_service": "clicks_features" | null,
         "feature_service_version": 2 | null,     # its applied definition's version; null: not applied (yet)
         "pipeline": "mypkg.pipes:retrain",
         "rules": ["clicks.drift", ...],
         "latest_version": 3 | null,  "production": 2 | null,  "aliases": {"production": 2},
         "rollout": {"id", "candidate", "baseline", "stage", "status", "plan", ...} | null,  # active, else newest
         "alerts": [{"rule", "state", "labels", "value", "started_at"}],                   # pending and firing
         "last_trigger": {"id", "status", "reason", "created_at", "pipeline_run_id", "error"} | null,
         "last_decision": {"trigger_id", "status", "version", "rollout_id", "reason", ...} | null,
         "last_round": {"monitor", "alerts_changed", "decisions", "rollout"} | null}}}
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from modelmill.errors import NotFoundError
from modelmill.loop.config import LoopConfig
from modelmill.loop.decisions import decision_dict
from modelmill.loop.lease import DEFAULT_LEASE, Lease
from modelmill.store.tables.loop import loop_decisions
from modelmill.store.tables.training import triggers

__all__ = ["loop_status"]


def loop_status(project: Any, config: LoopConfig, *, lease: str = DEFAULT_LEASE) -> dict[str, Any]:
    """The state of every model of ``config`` (see the module docstring for the keys)."""
    from modelmill.features import FeatureStore
    from modelmill.loop.measure import LoopMeasure
    from modelmill.monitoring.alerts import AlertEvaluator
    from modelmill.registry import Registry
    from modelmill.rollout import RolloutController

    info = Lease(project.db, name=lease, holder="status").info()
    last = (info or {}).pop("last_round", None) or {}
    registry = {r.name: r for r in Registry(project).models()}
    active = AlertEvaluator(project, [], measure=LoopMeasure(project)).active()
    ctl = RolloutController(project)
    services = {d.name: d.version for d in FeatureStore(project).definitions() if d.kind == "feature_service"}
    models: dict[str, Any] = {}
    for m in config.models:
        reg = registry.get(m.name)
        aliases = dict(reg.aliases) if reg is not None else {}
        running = [s for s in ctl.active() if s.model == m.name]
        rollout = running[0] if running else None
        if rollout is None:
            try:
                rollout = ctl.get(m.name)
            except NotFoundError:  # never rolled out
                rollout = None
        rules = [m.rule_name(r.kind) for r in m.rules]
        with project.db.engine.connect() as conn:
            trig = conn.execute(sa.select(triggers).where(triggers.c.pipeline == m.pipeline.function)
                                .order_by(triggers.c.id.desc()).limit(1)).first()
            dec = conn.execute(sa.select(loop_decisions).where(loop_decisions.c.model == m.name)
                               .order_by(loop_decisions.c.id.desc()).limit(1)).first()
        models[m.name] = {
            "feature_service": m.feature_service,
            "feature_service_version": None if m.feature_service is None else services.get(m.feature_service),
            "pipeline": m.pipeline.function,
            "rules": rules,
            "latest_version": reg.latest_version if reg is not None else None,
            "production": aliases.get("production"),
            "aliases": aliases,
            "rollout": None if rollout is None else rollout.as_dict(),
            "alerts": [{"rule": a["rule"], "state": a["state"], "labels": a["labels"], "value": a["value"],
                        "started_at": a["started_at"]} for a in active if a["rule"] in rules],
            "last_trigger": None if trig is None else {
                "id": trig.id, "status": trig.status, "reason": trig.reason, "created_at": trig.created_at,
                "pipeline_run_id": trig.pipeline_run_id, "error": trig.error},
            "last_decision": None if dec is None else decision_dict(dec),
            "last_round": (last.get("models") or {}).get(m.name),
        }
    live = info is not None and info["live"]
    return {"leader": info["holder"] if live and info is not None else None, "lease": info,
            "last_round_at": None if info is None else info["last_round_at"], "models": models}
