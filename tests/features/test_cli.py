"""``modelmill features materialize`` run as a user runs it: a subprocess, JSON on stdout, exit codes, and what
landed in the online store."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pandas as pd
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


@pytest.mark.slow  # many CLI processes or a served model: .ci/run runs it, make test keeps its 10 minutes
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


@pytest.mark.slow  # one CLI process per case: .ci/run runs them, make test keeps its 10 minutes
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


SERVICE = "airport_features"


@pytest.fixture
def served(event_clock: Path) -> Path:
    """The event-clock project with a feature service over both views."""
    from modelmill.features import FeatureService

    with Project(load_settings()) as project:
        FeatureStore(project).apply([FeatureService(name=SERVICE, features=["weather:temp", "traffic:departures"])])
    return event_clock


def _entities(root: Path) -> pd.DataFrame:
    """Entity rows, deliberately out of time order: each row's features are the latest at or before its time."""
    return pd.DataFrame({
        "origin": ["JFK", "JFK", "LGA", "JFK", "JFK", "SFO"],
        "event_timestamp": [hours(0.5), hours(-1), hours(2), hours(3), hours(20), hours(2)],
        "late": [1, 0, 0, 1, 0, 1],
    })


# (temp, departures) per entity row: JFK 39 at 0h, 41 at 3h; LGA 35 at 0.5h; departures JFK 12 at 0.25h,
# LGA 7 at 1h; nothing before its first value, nothing past the 12 h ttl, nothing for SFO.
EXPECTED = [(39.0, 12.0), (None, None), (35.0, 7.0), (41.0, 12.0), (None, None), (None, None)]


@pytest.mark.parametrize(("source", "target"), [("csv", "csv"), ("parquet", "parquet"), ("csv", "parquet")])
def test_training_set_joins_point_in_time_correct_features_to_every_entity_row(
        served: Path, source: str, target: str) -> None:
    entities = _entities(served)
    path = served / f"entities.{source}"
    if source == "csv":
        entities.assign(event_timestamp=[t.isoformat() for t in entities.event_timestamp]).to_csv(path, index=False)
    else:
        entities.to_parquet(path)
    output = served / "out" / f"train.{target}"
    out = mm(["features", "training-set", "--service", SERVICE, "--entities", str(path), "--output", str(output),
              "--json"], served)
    assert out.returncode == 0, out.stdout + out.stderr
    info = json.loads(out.stdout)
    assert info == {"service": SERVICE, "features": ["weather:temp", "traffic:departures"], "entities": str(path),
                    "output": str(output), "rows": 6, "columns": ["origin", "event_timestamp", "late", "temp",
                                                                  "departures"],
                    "empty": {"temp": 3, "departures": 3}}
    got = pd.read_csv(output) if target == "csv" else pd.read_parquet(output)
    assert got["origin"].tolist() == entities["origin"].tolist() and got["late"].tolist() == [1, 0, 0, 1, 0, 1]
    pairs = [(None if pd.isna(t) else t, None if pd.isna(d) else d) for t, d in zip(got.temp, got.departures,
                                                                                  strict=True)]
    assert pairs == EXPECTED
    # the same rows as the library's own point-in-time join
    with Project(load_settings()) as project:
        lib = FeatureStore(project).get_training_set(entities, SERVICE)
    assert lib["temp"].isna().tolist() == got["temp"].isna().tolist()


def test_training_set_with_full_feature_names_and_its_errors(served: Path) -> None:
    path = served / "entities.csv"
    _entities(served).rename(columns={"event_timestamp": "ts"}).to_csv(path, index=False)
    out = mm(["features", "training-set", "-s", SERVICE, "-e", str(path), "-o", str(served / "t.parquet"),
              "--timestamp-column", "ts", "--full-feature-names", "--json"], served)
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["columns"][-2:] == ["weather__temp", "traffic__departures"]
    from typer.testing import CliRunner

    from modelmill.cli import app
    from modelmill.errors import ModelmillError

    for args, field, words in [
        (["-s", "nope", "-e", str(path), "-o", "t.csv"], None, "feature service 'nope' not found"),
        (["-s", SERVICE, "-e", str(path), "-o", "t.csv"], "--timestamp-column", "is not a column of entities.csv"),
        (["-s", SERVICE, "-e", "missing.csv", "-o", "t.csv"], "--entities", "is not a file"),
        (["-s", SERVICE, "-e", str(path), "-o", "t.json", "--timestamp-column", "ts"], "--output",
         "must end in .csv or .parquet"),
    ]:
        result = CliRunner().invoke(app, ["features", "training-set", *args, "--json"])
        error = result.exception
        assert isinstance(error, ModelmillError) and words in error.message, result.output
        assert field is None or error.context["field"] == field, error.context
    assert not (served / "t.csv").exists()
    path.write_text("origin,ts\nJFK,yesterday\n")
    bad = mm(["features", "training-set", "-s", SERVICE, "-e", str(path), "-o", "t.csv", "--timestamp-column", "ts",
              "--json"], served)
    assert bad.returncode == 2 and json.loads(bad.stdout)["field"] == "ts", bad.stdout


def online_cli(root: Path, *args: str) -> dict[str, Any]:
    out = mm(["features", "online", "--service", SERVICE, *args, "--json"], root)
    assert out.returncode == 0, out.stdout + out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


@pytest.mark.slow  # many CLI processes or a served model: .ci/run runs it, make test keeps its 10 minutes
def test_online_shows_each_feature_with_its_status_and_a_missing_one_as_missing(served: Path) -> None:
    materialize(served, "--start", "2013-01-01", "--end", "2013-01-02", "--view", "weather")  # not traffic
    got = online_cli(served, "--entity", "origin=JFK", "--at", iso(hours(4)))
    assert got["entity"] == {"origin": "JFK"} and got["at"] == iso(hours(4)) and got["on_missing"] == "reject"
    assert got["features"] == {
        "weather:temp": {"value": 41.0, "status": "present", "event_time": iso(hours(3))},
        "traffic:departures": {"value": None, "status": "missing", "event_time": None}}
    assert got["missing"] == ["traffic:departures"]
    # past the 12 h ttl the value is expired: shown as such, with no value, not as the old one or as 0
    late = online_cli(served, "--entity", "origin=JFK", "--at", iso(hours(16)))
    assert late["features"]["weather:temp"] == {"value": None, "status": "expired", "event_time": iso(hours(3))}
    unknown = online_cli(served, "--entity", "origin=SFO", "--at", iso(hours(4)))
    assert [f["status"] for f in unknown["features"].values()] == ["missing", "missing"]
    text = mm(["features", "online", "--service", SERVICE, "--entity", "origin=JFK", "--at", iso(hours(4))], served)
    assert text.returncode == 0 and "(missing)" in text.stdout and "41.0" in text.stdout
    assert "1 of 2 features not in the online store" in " ".join(text.stderr.split())
    assert " 0.0 " not in text.stdout


@pytest.mark.parametrize(("args", "words"), [
    (["--entity", "airport=JFK"], "'airport' is not a join key of feature service airport_features; its keys are "
                                  "origin"),
    (["--entity", "JFK"], "must look like KEY=VALUE"),
    (["--entity", "origin=JFK", "--entity", "origin=LGA"], "gives 'origin' twice"),
    (["--entity", "origin=JFK", "--at", "soon"], "--at"),
])
def test_online_refuses_a_bad_entity_naming_the_key(served: Path, args: list[str], words: str) -> None:
    from typer.testing import CliRunner

    from modelmill.cli import app
    from modelmill.errors import InputError

    result = CliRunner().invoke(app, ["features", "online", "--service", SERVICE, *args, "--json"])
    assert isinstance(result.exception, InputError), result.output  # main() makes it a message and exit 2
    assert words in result.exception.message and result.stdout == ""
