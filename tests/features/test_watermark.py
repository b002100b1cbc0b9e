"""The event-clock watermark: materialise's default end, and `features watermark` to show and move it."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from modelmill.cli import app
from modelmill.config import load_settings
from modelmill.errors import InputError
from modelmill.features import Entity, FeatureStore, FeatureView, Field, Status
from modelmill.project import Project

T0 = dt.datetime(2013, 1, 1, 5, tzinfo=dt.UTC)
airport = Entity(name="airport", join_keys=["origin"])
weather = FeatureView(name="weather", entities=[airport], source="weather", timestamp_field="time_hour",
                      ttl=dt.timedelta(hours=2), fields=[Field("temp", "float64")])


def us(t: dt.datetime) -> int:
    return (t - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)


@pytest.fixture
def event_clock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project replaying 2013 under ``[features] clock = "event"``, its weather view defined, nothing online."""
    (tmp_path / "modelmill.toml").write_text('[features]\nclock = "event"\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MODELMILL_HOME", raising=False)
    for key in ("DB", "ONLINE", "OFFLINE", "BROKER", "CACHE", "ARTIFACTS"):
        monkeypatch.delenv(f"MODELMILL_{key}", raising=False)
    with Project(load_settings()) as project:
        times = [T0, T0 + dt.timedelta(minutes=30), T0 + dt.timedelta(hours=3)]
        project.offline.write("weather", pa.table({"origin": ["JFK", "LGA", "JFK"], "time_hour": times,
                                                   "temp": [39.0, 35.0, 41.0]}), time_column="time_hour")
        FeatureStore(project).apply([airport, weather])
    return tmp_path


def cli(*args: str) -> dict:  # type: ignore[type-arg]
    result = CliRunner().invoke(app, [*args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def statuses() -> list[int]:
    with Project(load_settings()) as project:
        store = FeatureStore(project)
        return [int(s) for s in store.online_vector([{"origin": "JFK"}, {"origin": "LGA"}], ["weather:temp"])[1][:, 0]]


@pytest.mark.parametrize("start", [None, "2013-01-01T00:00:00Z"])
def test_materialize_without_end_stops_at_the_newest_event_under_the_event_clock(event_clock: Path,
                                                                                 start: str | None) -> None:
    """Issue 15 item 15: without --end the watermark went to the wall clock, never came back, and every
    online read was expired from then on."""
    [result] = cli("features", "materialize", *(["--start", start] if start else []))["materialized"]
    newest = T0 + dt.timedelta(hours=3)
    assert dt.datetime.fromisoformat(result["end"]) == newest and result["rows"] == 2
    shown = cli("features", "watermark")
    assert (shown["clock"], shown["watermark_us"], shown["newest_event_us"]) == ("event", us(newest), us(newest))
    # Judged at 08:00 of 2013-01-01: JFK's 08:00 value is fresh, LGA's 05:30 one is past its 2 h ttl.
    assert statuses() == [Status.PRESENT, Status.EXPIRED]
    again = cli("features", "materialize")["materialized"]  # incremental, nothing newer: nothing moves
    assert cli("features", "watermark")["watermark_us"] == us(newest) and again[0]["rows"] <= 2


def test_watermark_set_and_reset(event_clock: Path) -> None:
    """A watermark stuck in the future (set by an old materialise) is shown and moved back."""
    cli("features", "materialize", "--start", "2013-01-01", "--end", "2030-01-01")
    assert cli("features", "watermark")["watermark"] == "2030-01-01T00:00:00+00:00"
    assert statuses() == [Status.EXPIRED, Status.EXPIRED]
    moved = cli("features", "watermark", "--set", "2013-01-01T06:30:00Z")
    assert (moved["changed"], moved["watermark_us"]) == ("set", us(T0 + dt.timedelta(hours=1.5)))
    assert statuses() == [Status.PRESENT, Status.PRESENT]
    cleared = cli("features", "watermark", "--reset")
    assert (cleared["changed"], cleared["watermark"]) == ("reset", None)
    text = CliRunner().invoke(app, ["features", "watermark"], catch_exceptions=False).output
    assert "watermark: none" in text and "2013-01-01T08:00:00+00:00" in text
    bad = CliRunner().invoke(app, ["features", "watermark", "--set", "x", "--reset"])
    assert isinstance(bad.exception, InputError)
    bad = CliRunner().invoke(app, ["features", "watermark", "--set", "not a time"])
    assert isinstance(bad.exception, InputError) and "--set" in str(bad.exception)
