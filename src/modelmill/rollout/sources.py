"""Where the controller acts and what it observes: a route sink and a guardrail source.

Both are one-method-each protocols so a controller can drive any router and
read any telemetry; the defaults drive modelmill's own serving:

- :class:`ServingRoutes` sets routes through :class:`modelmill.serving.RouteTable`;
- :class:`ServingGuardrails` reads the prediction log (offline table
  ``predictions``, with ``labels`` when they have arrived) and, given the
  server's ``/metrics`` URL, the request and error counters per variant.
  A shadow's failures are never answered, so they are counted as the mirrored
  requests that left no shadow row in the log. Errors are model failures (HTTP
  422) and server errors (5xx), never a client's bad request. The server labels
  every request, failed or not, with the variant chosen for it; a request with
  an empty ``variant`` label was refused before any variant was chosen (unknown
  model, unreadable body) and says nothing about one.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from modelmill.monitoring.performance import log_losses
from modelmill.rollout.guardrails import Observation

__all__ = ["GuardrailSource", "RouteSink", "ServingGuardrails", "ServingRoutes", "Target"]

# (variant name, model version or alias, weight, shadow)
Target = tuple[str, "int | str", float, bool]


class RouteSink(Protocol):
    """Sets the traffic split of a model."""

    def set_weights(self, model: str, variants: Sequence[Target], *, reason: str) -> None: ...


class GuardrailSource(Protocol):
    """Observes each variant of a model since a time; ``mark`` snapshots cumulative counters at a stage start."""

    def mark(self, model: str) -> dict[str, Any]: ...

    def window(self, model: str, *, since: float, mark: Mapping[str, Any],
               shadows: Sequence[str] = ()) -> dict[str, Observation]: ...


class ServingRoutes:
    """A :class:`RouteSink` writing serving's route table (the salt stays the model name, so canaries grow in place)."""

    def __init__(self, project: Any, *, actor: str = "rollout") -> None:
        self.project = project
        self.actor = actor

    def __repr__(self) -> str:
        return f"ServingRoutes({self.project!r})"

    def set_weights(self, model: str, variants: Sequence[Target], *, reason: str) -> None:
        from modelmill.serving import RouteTable, Variant

        RouteTable(self.project).set(model, [Variant(n, v, w, shadow=s) for n, v, w, s in variants],
                                     actor=self.actor, reason=reason)


class ServingGuardrails:
    """A :class:`GuardrailSource` over modelmill serving's prediction log and Prometheus counters.

    ``settle_s`` leaves the newest requests out of the shadow count, since their
    mirrored copies may still be running or unflushed; ``propagation_s`` bounds
    how long servers take to pick up a new route. ``token`` (default: the
    ``MODELMILL_TOKEN`` variable) is sent to a server that runs with ``auth = "required"``.
    """

    def __init__(self, project: Any, *, metrics_url: str | None = None, settle_s: float = 3.0,
                 propagation_s: float = 5.0, timeout_s: float = 5.0, token: str | None = None) -> None:
        self.project = project
        self.token = token if token is not None else os.environ.get("MODELMILL_TOKEN") or None
        self.propagation_s = propagation_s
        self.metrics_url = metrics_url
        self.settle_s = settle_s
        self.timeout_s = timeout_s

    def __repr__(self) -> str:
        return f"ServingGuardrails({self.project!r}, metrics_url={self.metrics_url!r})"

    # ---- counters from /metrics ------------------------------------------------------------

    def _counters(self, model: str) -> dict[str, dict[str, float]]:
        if not self.metrics_url:
            return {}
        import httpx
        from prometheus_client.parser import text_string_to_metric_families

        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        reply = httpx.get(self.metrics_url, timeout=self.timeout_s, headers=headers)
        reply.raise_for_status()
        text = reply.text
        out: dict[str, dict[str, float]] = {}
        for family in text_string_to_metric_families(text):
            if family.name != "modelmill_requests":
                continue
            for s in family.samples:
                if not s.name.endswith("_total") or s.labels.get("model") != model:
                    continue
                status = s.labels.get("status", "")
                failed = status == "422" or status.startswith("5")
                variant = s.labels.get("variant", "")
                if not variant:
                    continue  # refused before a variant was chosen: says nothing of any variant
                c = out.setdefault(variant, {"requests": 0.0, "errors": 0.0})
                c["requests"] += s.value
                if failed:
                    c["errors"] += s.value
        return out

    def mark(self, model: str) -> dict[str, Any]:
        return {"counters": self._counters(model)}

    # ---- the prediction log ----------------------------------------------------------------

    def _log(self, model: str, since: float) -> Any:
        offline = self.project.offline
        if not offline.exists("predictions"):
            return None
        labels = offline.exists("labels")
        tables = ["predictions", "labels"] if labels else ["predictions"]
        label = ("(SELECT last(l.label ORDER BY l.ts) FROM labels l WHERE l.request_id = p.request_id)"
                 if labels else "NULL")
        with offline.connect(tables) as con:
            return con.execute(
                f"SELECT p.request_id, p.variant, epoch(p.ts) AS t, p.latency_ms, p.output, {label} AS label "
                "FROM predictions p WHERE p.model = ? AND p.ts >= to_timestamp(?)", [model, since]).df()

    def window(self, model: str, *, since: float, mark: Mapping[str, Any],
               shadows: Sequence[str] = ()) -> dict[str, Observation]:
        log = self._log(model, since)
        counters = self._counters(model)
        before: Mapping[str, Mapping[str, float]] = mark.get("counters", {}) if mark else {}
        variants = set(counters) | (set(log["variant"].unique()) if log is not None else set()) | set(shadows)
        live_ids: set[str] = set()
        if log is not None and shadows:
            # Mirroring starts once every server has re-read the route: count live requests from the first
            # shadow row, or from ``propagation_s`` after the stage began if none came (a shadow failing on
            # everything), and only those old enough for their copies to have been answered and logged.
            shadow_t = log.loc[log["variant"].isin(shadows), "t"]
            wired = min(since + self.propagation_s, float(shadow_t.min()) if len(shadow_t) else math.inf)
            window = (log["t"] >= wired) & (log["t"] < time.time() - self.settle_s)
            live_ids = set(log.loc[window & ~log["variant"].isin(shadows), "request_id"])
        out: dict[str, Observation] = {}
        for v in sorted(variants):
            rows = log[log["variant"] == v] if log is not None else None
            logged = 0 if rows is None else len(rows)
            if v in shadows:
                answered = set(rows["request_id"]) if rows is not None else set()
                requests, errors = len(live_ids), len(live_ids - answered)
            elif self.metrics_url:
                now, then = counters.get(v, {}), before.get(v, {})
                requests = _delta(now.get("requests", 0.0), then.get("requests", 0.0))
                errors = _delta(now.get("errors", 0.0), then.get("errors", 0.0))
            else:
                requests, errors = logged, 0
            out[v] = Observation(
                requests=requests, errors=min(errors, requests),
                latencies_ms=_floats(rows, "latency_ms"), outputs=_floats(rows, "output"),
                label_losses=_losses(rows))
        return out


def _delta(now: float, then: float) -> int:
    # A counter lower than its mark means the server restarted: count from zero.
    return int(now - then) if now >= then else int(now)


def _floats(rows: Any, column: str) -> np.ndarray:
    if rows is None or not len(rows):
        return np.zeros(0)
    x = rows[column].to_numpy(dtype=np.float64, na_value=np.nan)
    return x[np.isfinite(x)]


def _losses(rows: Any) -> np.ndarray:
    """Per labelled request: log loss for probabilities of 0/1 labels, else 0/1 error or absolute error.

    Log loss is a proper scoring rule, and the metric A/B tests of classifiers use here: the error
    rate at a 0.5 threshold would instead punish a candidate that is merely calibrated for a period
    with more positives (on imbalanced labels it counts every probability above 0.5 as a miss).
    """
    if rows is None or not len(rows):
        return np.zeros(0)
    labeled = rows[rows["label"].notna()]
    if not len(labeled):
        return np.zeros(0)
    y = labeled["label"].to_numpy(dtype=np.float64)
    p = labeled["output"].to_numpy(dtype=np.float64)
    if np.isin(y, (0.0, 1.0)).all():
        if ((p >= 0.0) & (p <= 1.0)).all():
            return log_losses(y, p, eps=1e-6)
        return ((p >= 0.5).astype(np.float64) != y).astype(np.float64)
    return np.abs(p - y)
