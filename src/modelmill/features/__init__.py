"""Feature store: definitions, point-in-time training sets, online lookups, streaming aggregates.

    >>> from modelmill.features import Entity
    >>> Entity(name="airport", join_keys=["origin"]).join_keys
    ('origin',)
"""

from __future__ import annotations

from modelmill.features.definitions import (
    Aggregation,
    Entity,
    FeatureService,
    FeatureView,
    Field,
    StreamAggregation,
)
from modelmill.features.online import OnlineResponse, Status
from modelmill.features.skew import FeatureSkew, SkewReport, skew_report
from modelmill.features.store import (
    AggregationProcessor,
    ApplyResult,
    DefinitionInfo,
    FeatureStore,
    MaterializeResult,
)

__all__ = [
    "Aggregation",
    "AggregationProcessor",
    "ApplyResult",
    "DefinitionInfo",
    "Entity",
    "FeatureService",
    "FeatureSkew",
    "FeatureStore",
    "FeatureView",
    "Field",
    "MaterializeResult",
    "OnlineResponse",
    "SkewReport",
    "Status",
    "StreamAggregation",
    "skew_report",
]
