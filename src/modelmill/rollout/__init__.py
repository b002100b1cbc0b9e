"""Safe rollout: shadow → canary → gradual → full, guarded, rolled back automatically, resumable.

    >>> parse_plan("shadow,5,10,50,100")
    ('shadow', 5, 10, 50, 100)
"""

from __future__ import annotations

from modelmill.rollout.controller import (
    RolloutController,
    RolloutState,
    Step,
    parse_plan,
    routes_for,
)
from modelmill.rollout.guardrails import CHECKS, Breach, Guardrails, Observation, Verdict, check, evaluate
from modelmill.rollout.sources import GuardrailSource, RouteSink, ServingGuardrails, ServingRoutes, Target

__all__ = [
    "CHECKS",
    "Breach",
    "GuardrailSource",
    "Guardrails",
    "Observation",
    "RolloutController",
    "RolloutState",
    "RouteSink",
    "ServingGuardrails",
    "ServingRoutes",
    "Step",
    "Target",
    "Verdict",
    "check",
    "evaluate",
    "parse_plan",
    "routes_for",
]
