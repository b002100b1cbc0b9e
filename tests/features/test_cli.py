"""``modelmill features materialize`` run as a user runs it: a subprocess, JSON on stdout, exit codes, and what
landed in the online store."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pyarrow as pa
import pytest

from modelmill.config import load_settings
from modelmill.features import Entity, FeatureStore, FeatureView, Field
from modelmill.project import Project
from tests.test_cli import mm

T0 = dt.datetime(2013, 1, 1, 5, tzinfo=dt.UTC)
airport = Entity(name="airport", join_keys=("origin",))
weather = FeatureView(name="weather", entities=(airport,), source="weather", timestamp_field="time_hour",
                      ttl=dt.timedelta(hours=12), fields=(Field("temp", "float64"),))
traffic = FeatureView(name="traffic", entities=(airport,), source="traffic", timestamp_field="ts",
                      ttl=dt.timedelta(hours=12), fields=(Field("departures", "float64"),))


def hours(h: float) -> dt.datetime:
    return T0 + dt.timedelta(hours=h)


def _project(root: Path, monkeypatch: pytest.MonkeyPatch, toml: str) -> Path:
    """Two views over two sources whose newest events differ: weather up to T0+3h, traffic up to T0+1h."""
    (root / "modelmill.toml").write_text(toml)
    monkeypatch.chdir(root)
    for key in ("HOME", "DB", "ONLINE", "OFFLINE", "BROKER", "CACHE", "ARTIFACTS"):
        monkeypatch.delenv(f"MODELMILL_{key}", raising=False)
    with Project(load_settings()) as project:
        project.offline.write("weather", pa.table({
            "origin": ["JFK", "LGA", "JFK"], "time_hour": [hours(0), hours(0.5), hours(3)],
            "temp": [39.0, 35.0, 41.0]}), time_column="time_hour")
        project.offline.write("traffic", pa.table({
            "origin": ["JFK", "LGA"], "ts": [hours(0.25), hours(1)], "departures": [12.0, 7.0]}), time_column="ts")
        FeatureStore(project).apply([airport, weather, traffic])
    return root


@pytest.fixture
def event_clock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return _project(tmp_path, monkeypatch, '[features]\nclock = "event"\n')


@pytest.fixture
def wall_clock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return _project(tmp_path, monkeypatch, "")


def materialize(root: Path, *args: str) -> list[dict[str, object]]:
    out = mm(["features", "materialize", *args, "--json"], root)
    assert out.returncode == 0, out.stdout + out.stderr
    return sorted(json.loads(out.stdout)["materialized"], key=lambda r: str(r["view"]))


def online() -> dict[tuple[str, str], float | None]:
    """What the online store now holds for JFK and LGA, judged at T0+4h (inside every ttl)."""
    with Project(load_settings()) as project:
        store = FeatureStore(project)
        rows = store.get_online_features([{"origin": "JFK"}, {"origin": "LGA"}],
                                         ["weather:temp", "traffic:departures"], at=hours(4)).rows()
        store.close()
    return {(o, f): v for o, row in zip(("JFK", "LGA"), rows, strict=True) for f, v in row.items()}


def iso(t: dt.datetime) -> str:
    return t.isoformat()


def test_start_and_end_load_the_latest_value_in_the_window_of_the_named_view(event_clock: Path) -> None:
    [only] = materialize(event_clock, "--start", "2013-01-01T00:00:00Z", "--end", "2013-01-01T06:00:00Z",
                         "--view", "weather")
    assert only == {"view": "weather", "start": "2013-01-01T00:00:00+00:00", "end": iso(hours(1)), "rows": 2,
                    "seconds": only["seconds"]}
    # JFK's 08:00 value is past --end: the 05:00 one is online; the traffic view was not named
    assert online() == {("JFK", "weather:temp"): 39.0, ("LGA", "weather:temp"): 35.0,
                        ("JFK", "traffic:departures"): None, ("LGA", "traffic:departures"): None}

    # without --start: each view from where its last run ended; without --end under the event clock: each view
    # up to the newest event of its own source (weather 08:00, traffic 06:00), never the wall clock
    again = materialize(event_clock)
    assert [(r["view"], r["start"], r["end"], r["rows"]) for r in again] == [
        ("traffic", "1970-01-01T00:00:00+00:00", iso(hours(1)), 2),
        ("weather", iso(hours(1)), iso(hours(3)), 1)]
    assert online() == {("JFK", "weather:temp"): 41.0, ("LGA", "weather:temp"): 35.0,
                        ("JFK", "traffic:departures"): 12.0, ("LGA", "traffic:departures"): 7.0}
    watermark = mm(["features", "watermark", "--json"], event_clock)
    assert json.loads(watermark.stdout)["watermark"] == iso(hours(3))  # the newest event, not now

    # nothing newer: an incremental run is the empty window at each view's end ([start, end] is closed, so the
    # one event at the end is read again), and nothing online or on the clock moves
    assert [(r["view"], r["start"], r["end"], r["rows"]) for r in materialize(event_clock)] == [
        ("traffic", iso(hours(1)), iso(hours(1)), 1), ("weather", iso(hours(3)), iso(hours(3)), 1)]
    assert online()[("JFK", "weather:temp")] == 41.0
    assert json.loads(mm(["features", "watermark", "--json"], event_clock).stdout)["watermark"] == iso(hours(3))


def test_an_earlier_window_after_a_later_one_keeps_the_newer_values(event_clock: Path) -> None:
    materialize(event_clock, "--start", "2013-01-01", "--end", "2013-01-02")
    [late] = materialize(event_clock, "--start", "2013-01-01T00:00:00Z", "--end", "2013-01-01T05:10:00Z",
                         "--view", "weather")
    assert late["rows"] == 0  # JFK's 05:00 value loses to the 08:00 one already online: nothing written
    assert online()[("JFK", "weather:temp")] == 41.0


def test_without_end_the_wall_clock_stops_now(wall_clock: Path) -> None:
    before = dt.datetime.now(dt.UTC)
    results = materialize(wall_clock, "--start", "2013-01-01")
    after = dt.datetime.now(dt.UTC)
    assert [r["view"] for r in results] == ["traffic", "weather"]
    for r in results:
        assert before <= dt.datetime.fromisoformat(str(r["end"])) <= after, r
    assert [r["rows"] for r in results] == [2, 2]


@pytest.mark.parametrize(("args", "code", "fields"), [
    (["--start", "not a time"], 2, {"type": "InputError", "field": "start", "value": "not a time"}),
    (["--start", "2013-01-01", "--end", "soon"], 2, {"type": "InputError", "field": "end", "value": "soon"}),
    (["--start", "2013-01-02", "--end", "2013-01-01"], 2,
     {"type": "InputError", "field": "end", "problem": "is before start"}),
    (["--end", "yesterday"], 2, {"type": "InputError", "field": "end", "value": "yesterday"}),
    (["--view", "nope"], 1, {"type": "NotFoundError", "kind": "feature view", "name": "nope"}),
], ids=["bad-start", "bad-end", "end-before-start", "bad-incremental-end", "unknown-view"])
def test_bad_arguments_are_refused_with_the_field_named_and_nothing_loaded(
        event_clock: Path, args: list[str], code: int, fields: dict[str, object]) -> None:
    out = mm(["features", "materialize", *args, "--json"], event_clock)
    assert out.returncode == code, out.stdout + out.stderr
    error = json.loads(out.stdout)
    assert {k: error.get(k) for k in fields} == fields
    text = mm(["features", "materialize", *args], event_clock)
    assert text.returncode == code and text.stderr.split() == ["error:", *str(error["error"]).split()]  # no traceback
    assert set(online().values()) == {None}
    with Project(load_settings()) as project:
        assert FeatureStore(project).watermark() is None  # the clock did not move either


def test_help_names_the_window_options() -> None:
    out = mm(["features", "materialize", "--help"], Path.cwd())
    assert out.returncode == 0
    for option in ("--start", "--end", "--view", "--json", "event clock"):
        assert option in " ".join(out.stdout.split()), option
