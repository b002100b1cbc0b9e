"""Definitions: validation, versioned storage (SQLite and PostgreSQL), the CLI."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelmill.config import Settings
from modelmill.errors import ConflictError, InputError, NotFoundError
from modelmill.features import (
    Aggregation,
    Entity,
    FeatureService,
    FeatureStore,
    FeatureView,
    Field,
    StreamAggregation,
)
from modelmill.features.definitions import from_spec, to_spec
from modelmill.project import Project

airport = Entity(name="airport", join_keys=["origin"])
weather = FeatureView(name="weather", entities=[airport], source="weather", timestamp_field="time_hour",
                      ttl=dt.timedelta(hours=2), fields=[Field("temp"), Field("visib", "float64")])
stats = StreamAggregation(name="dep_stats", entities=[airport], stream="flights", timestamp_field="ts",
                          event_id_field="id",
                          aggregations=[Aggregation(column="dep_delay", function="mean", windows=["1h", "24h", "7d"]),
                                        Aggregation(column=None, function="count", windows=["1h"])])
service = FeatureService(name="delay", features=["weather:temp", "dep_stats:dep_delay_mean_24h"])


def test_specs_round_trip_and_name_features() -> None:
    for d in (airport, weather, stats, service):
        assert from_spec(json.loads(json.dumps(to_spec(d)))) == d
    assert stats.feature_names == ("dep_delay_mean_1h", "dep_delay_mean_24h", "dep_delay_mean_7d", "count_1h")


@pytest.mark.parametrize(("make", "match"), [
    (lambda: Entity(name="bad name", join_keys=["x"]), "entity.name"),
    (lambda: Field("t", "decimal"), "dtype"),
    (lambda: FeatureView(name="v", entities=[airport], source="s", timestamp_field="ts",
                         fields=[Field("origin")]), "join key"),
    (lambda: FeatureView(name="v", entities=[airport], source="s", timestamp_field="ts", ttl=-1,
                         fields=[Field("a")]), "ttl"),
    (lambda: Aggregation(column="x", function="median", windows=["1h"]), "function"),
    (lambda: Aggregation(column="x", function="sum", windows=["1 hour"]), "windows"),
    (lambda: FeatureService(name="s", features=["no_colon"]), "view:feature"),
])
def test_bad_definitions_name_the_field(make: object, match: str) -> None:
    with pytest.raises(InputError, match=match):
        make()  # type: ignore[operator]


def run_versioning(project: Project) -> None:
    fs = FeatureStore(project)
    first = fs.apply([weather, stats, service])
    assert {(r.kind, r.name, r.version, r.changed) for r in first} == {
        ("entity", "airport", 1, True), ("feature_view", "weather", 1, True),
        ("stream_aggregation", "dep_stats", 1, True), ("feature_service", "delay", 1, True)}
    assert all(not r.changed for r in fs.apply([weather, stats, service]))  # unchanged: same versions
    wider = FeatureView(name="weather", entities=[airport], source="weather", timestamp_field="time_hour",
                        ttl=dt.timedelta(hours=3), fields=[Field("temp"), Field("visib"), Field("wind_speed")])
    [r] = [r for r in fs.apply([wider]) if r.name == "weather"]
    assert (r.version, r.changed) == (2, True)
    assert fs.feature_view("weather") == wider
    assert [h.version for h in fs.history("feature_view", "weather")] == [1, 2]
    assert fs.feature_service("delay").features == ("weather:temp", "dep_stats:dep_delay_mean_24h")
    # a second store (another process) sees the applied definitions
    assert FeatureStore(project).feature_view("weather").ttl == dt.timedelta(hours=3)


def test_apply_versions_definitions_on_sqlite(project: Project) -> None:
    run_versioning(project)


def test_apply_versions_definitions_on_postgres(tmp_path: Path, pg_url: str) -> None:
    with Project(Settings.defaults(home=tmp_path).replace(db=pg_url)) as project:
        run_versioning(project)


def test_apply_rejects_inconsistent_definitions(project: Project) -> None:
    fs = FeatureStore(project)
    with pytest.raises(NotFoundError, match="feature view 'nope'"):
        fs.apply([FeatureService(name="s", features=["nope:x"])])
    fs.apply([weather])
    with pytest.raises(InputError, match="no feature 'wind'"):
        fs.apply([FeatureService(name="s", features=["weather:wind"])])
    other = Entity(name="airport", join_keys=["faa"])
    with pytest.raises(ConflictError, match="entity 'airport'"):
        fs.apply([FeatureView(name="w2", entities=[other], source="w", timestamp_field="ts", fields=[Field("a")])])
    clash = StreamAggregation(name="weather", entities=[airport], stream="s", timestamp_field="ts",
                              event_id_field="id", aggregations=[Aggregation(column=None, function="count",
                                                                             windows=["1h"])])
    with pytest.raises(ConflictError, match="namespace"):
        fs.apply([clash])
    with pytest.raises(NotFoundError, match="feature service 'missing'"):
        fs.feature_service("missing")


DEFS = '''
from datetime import timedelta
from modelmill.features import Entity, FeatureService, FeatureView, Field

airport = Entity(name="airport", join_keys=["origin"])
weather = FeatureView(name="weather", entities=[airport], source="weather", timestamp_field="time_hour",
                      ttl=timedelta(hours=2), fields=[Field("temp", "float64"), Field("visib", "float64")])
delay = FeatureService(name="delay", features=["weather:temp"])
'''


def cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MODELMILL_HOME": str(tmp_path / "home")}
    return subprocess.run([sys.executable, "-m", "modelmill", "features", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow  # over 5 s (make test alone stays under 10 min; .ci/run runs it)
def test_cli_apply_and_list(tmp_path: Path) -> None:
    (tmp_path / "defs.py").write_text(DEFS)
    out = cli(tmp_path, "apply", "defs.py", "--json")
    assert out.returncode == 0, out.stderr
    applied = json.loads(out.stdout)["applied"]
    assert {(a["name"], a["version"]) for a in applied} == {("airport", 1), ("weather", 1), ("delay", 1)}
    listed = cli(tmp_path, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    defs = json.loads(listed.stdout)["definitions"]
    assert [(d["kind"], d["name"]) for d in defs] == [("entity", "airport"), ("feature_view", "weather"),
                                                      ("feature_service", "delay")]
    human = cli(tmp_path, "list")
    assert "weather" in human.stdout and "2 features from weather" in human.stdout
    (tmp_path / "broken.py").write_text("raise RuntimeError('boom')\n")
    bad = cli(tmp_path, "apply", "broken.py", "--json")
    assert bad.returncode == 2 and "boom" in json.loads(bad.stdout)["error"]
    assert "Traceback" not in bad.stderr
