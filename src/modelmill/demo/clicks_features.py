"""Event schemas and feature definitions of the clicks scenario (``modelmill demo --scenario clicks``).

What a user of their own would write: the scenario publishes with
``modelmill ingest publish -s modelmill.demo.clicks_features:CLICKS`` and applies
this file with ``modelmill features apply``.

- ``users``: one profile event per user (tenure, an affinity score, country), the
  source of the ``users`` feature view, looked up online by ``user_id``;
- ``clicks``: one event per impression once its click is known (the training data);
- request-time features sent with each prediction: ``session_len``, ``device_ios``,
  ``device_web`` (Android is neither).
"""

from __future__ import annotations

from modelmill.features import Entity, FeatureService, FeatureView, Field
from modelmill.ingest import EventSchema
from modelmill.ingest import Field as EventField

__all__ = ["CLICKS", "COUNTRY_CODES", "REQUEST_FEATURES", "SERVICE", "USERS", "USER_FEATURES"]

SERVICE = "clicks"
USER_FEATURES = ("tenure_days", "affinity", "country_code")
REQUEST_FEATURES = ("session_len", "device_ios", "device_web")
COUNTRY_CODES = {"us": 0, "de": 1, "fr": 2, "br": 3, "in": 4, "jp": 5}

USERS = EventSchema(
    name="users",
    event_id="profile_id",
    event_time="updated_at",
    fields=[EventField("profile_id", "string"), EventField("updated_at", "timestamp"),
            EventField("user_id", "int", True), EventField("tenure_days", "float", True),
            EventField("affinity", "float", True), EventField("country_code", "float", True)],
)

CLICKS = EventSchema(
    name="clicks",
    event_id="event_id",
    event_time="ts",
    fields=[EventField("event_id", "string"), EventField("ts", "timestamp"), EventField("user_id", "int", True),
            EventField("session_len", "float", True), EventField("device", "string", True),
            EventField("variant", "string"), EventField("clicked", "int", True)],
)

user = Entity(name="user", join_keys=("user_id",))
users = FeatureView(name="users", entities=(user,), source="users", timestamp_field="updated_at",
                    fields=tuple(Field(f, "float64") for f in USER_FEATURES), partitioned_by_timestamp=True)
clicks = FeatureService(name=SERVICE, features=tuple(f"users:{f}" for f in USER_FEATURES),
                        description="click-through model of the clicks scenario")
