"""Where the controller acts and what it observes: a route sink and a guardrail source.

Both are one-method-each protocols so a controller can drive any router and
read any telemetry; the defaults drive modelmill's own serving:

- :class:`ServingRoutes` sets routes through :class:`modelmill.serving.RouteTable`;
- :class:`ServingGuardrails` reads the prediction log (offline table
  ``predictions``, with ``labels`` when they have arrived). The log holds every
  outcome of every request a variant was chosen for, on every server writing
  it: answered rows and failed ones (their HTTP ``status`` and error class), so
  it alone counts each variant's requests and errors. Errors are model failures
  (HTTP 422) and server errors (5xx), never a client's bad request. A shadow's
  failures are logged the same way; a mirrored request that left no shadow row
  at all (dropped, or lost with its server) counts as a failure too.
  Given the server's ``/metrics`` URL, the request and error counters per
  variant are a second source: the larger of the two counts is used, so a
  server that could not write its log is still charged its errors.
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
from modelmill.store.feedback import Feedback, is_error

__all__ = ["GuardrailSource", "RouteSink", "ServingGuardrails", "ServingRoutes", "Target"]

# (variant name, model version or alias, weight, shadow)
Target = tuple[str, "int | str", float, bool]


class RouteSink(Protocol):
    """Sets the traffic split of a model; a sink may also have ``check(model, targets)``, which raises when
    a target cannot be served (the controller calls it before it starts a rollout)."""

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

    def check(self, model: str, targets: Sequence[int | str]) -> None:
        """Raise unless every target (a version or an alias) resolves in the registry and loads, checksum
        included: a rollout of a version no server could load would otherwise route to nothing."""
        from modelmill.registry import Registry

        registry = Registry(self.project)
        for target in targets:
            registry.load(registry.resolve(f"{model}@{target}"))

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
        return Feedback(self.project.offline).outcomes(model, since=since)

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
            # Only answered live requests are mirrored (a failed one never reaches the shadows).
            live_ids = set(log.loc[window & ~log["variant"].isin(shadows) & (log["status"] == 200), "request_id"])
        out: dict[str, Observation] = {}
        for v in sorted(variants):
            rows = log[log["variant"] == v] if log is not None else None
            failed = rows["status"].map(is_error).astype(bool) if rows is not None else None
            if v in shadows:
                answered = set(rows["request_id"]) if rows is not None else set()
                failed_ids = set(rows.loc[failed, "request_id"]) if rows is not None else set()
                requests = len(live_ids)
                errors = len(live_ids - answered) + len(live_ids & failed_ids)
            else:
                requests = 0 if rows is None else len(rows)
                errors = 0 if rows is None or failed is None else int(failed.sum())
                if self.metrics_url:
                    now, then = counters.get(v, {}), before.get(v, {})
                    requests = max(requests, _delta(now.get("requests", 0.0), then.get("requests", 0.0)))
                    errors = max(errors, _delta(now.get("errors", 0.0), then.get("errors", 0.0)))
            ok = rows[rows["status"] == 200] if rows is not None else None
            out[v] = Observation(
                requests=requests, errors=min(errors, requests),
                latencies_ms=_floats(ok, "latency_ms"), outputs=_floats(ok, "output"),
                label_losses=_losses(ok))
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
