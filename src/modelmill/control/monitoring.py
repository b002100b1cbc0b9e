"""Monitoring as the control plane shows it: the latest window of every served version, and the alerts.

``GET /v1/monitoring`` calls :func:`monitoring_status`. Each monitoring round (``modelmill monitor``,
``modelmill loop``) stores one window per model version served in it, with its drift and its
delayed-label metrics; this reads back the newest window of each version, so what a console shows is
what the monitor last measured. A window without a drift verdict (no reference profile, no logged
features) says ``no_data``, never ``pass``. ``performance`` is measured when asked: the delayed-label
metrics of every version served in the last ``[monitoring] label_window``, each with the number of
labelled predictions behind it (``Monitor.performance``, the rows ``monitor --once --json`` shows).

    >>> import tempfile
    >>> from modelmill.config import Settings
    >>> from modelmill.project import Project
    >>> project = Project(Settings.defaults(home=tempfile.mkdtemp()))
    >>> monitoring_status(project)
    {'windows': [], 'performance': [], 'alerts': []}
    >>> project.close()
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from modelmill.registry.versions import check_model_name
from modelmill.store.tables.monitoring import monitoring_alerts, monitoring_windows

__all__ = ["monitoring_status"]


def monitoring_status(project: Any, *, model: str | None = None) -> dict[str, Any]:
    """``{"windows": [...], "performance": [...], "alerts": [...]}``: the newest window per model and
    version (by model, then version), the delayed-label metrics per served version, and every alert with
    its state (``pending``, ``firing``, ``resolved``, ``inactive``)."""
    from modelmill.monitoring import Monitor, MonitoringConfig


    w = monitoring_windows
    newest = sa.select(sa.func.max(w.c.id)).group_by(w.c.model, w.c.version)
    if model is not None:
        newest = newest.where(w.c.model == check_model_name(model))
    a = monitoring_alerts
    with project.db.engine.connect() as conn:
        rows = conn.execute(sa.select(w).where(w.c.id.in_(newest)).order_by(w.c.model, w.c.version)).all()
        alerts = conn.execute(sa.select(a).order_by(a.c.rule, a.c.fingerprint)).all()
    windows = [_window(r) for r in rows]
    listed = [_alert(r) for r in alerts if model is None or (r.labels or {}).get("model") in (None, model)]
    config = MonitoringConfig.from_section(project.settings.section("monitoring"))
    performance = [p for p in Monitor(project, config).performance() if model is None or p["model"] == model]
    return {"windows": windows, "performance": performance, "alerts": listed}


def _window(r: Any) -> dict[str, Any]:
    drift = dict(r.drift or {})
    columns = drift.get("columns") or {}
    status = "no_data" if r.dataset_drift is None else "fail" if r.dataset_drift else "pass"
    return {"model": r.model, "version": r.version, "at": r.at, "window_start": r.window_start,
            "window_end": r.window_end, "n_rows": r.n_rows, "status": status, "drift_share": r.drift_share,
            "dataset_drift": r.dataset_drift, "drifted": sorted(c for c, v in columns.items() if v.get("drift")),
            "drift": columns, "metrics": list(r.metrics or [])}


def _alert(r: Any) -> dict[str, Any]:
    return {"rule": r.rule, "state": r.state, "labels": dict(r.labels or {}), "annotations": dict(r.annotations or {}),
            "value": r.value, "pending_since": r.pending_since, "started_at": r.started_at,
            "resolved_at": r.resolved_at, "updated_at": r.updated_at, "actions": r.actions}
