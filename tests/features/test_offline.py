"""Point-in-time training sets: exact against a brute-force reference, no leakage, every row kept."""

from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelmill.config import Settings
from modelmill.errors import InputError, NotFoundError
from modelmill.features import Entity, FeatureStore, FeatureView, Field
from modelmill.project import Project

T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
TTLS = {"forever": None, "short": dt.timedelta(minutes=1), "medium": dt.timedelta(minutes=5)}
user = Entity(name="user", join_keys=["user_id"])


def minutes(m: int) -> dt.datetime:
    return T0 + dt.timedelta(minutes=m)


def brute_force(events: list[tuple[int, int, int, float | None]], row: tuple[int, int],
                ttl: dt.timedelta | None) -> float | None:
    """Latest (ts, created) event of the row's entity at or before the row time, if within ttl."""
    uid, ts = row
    best = None
    for e_uid, e_ts, created, value in events:
        if e_uid == uid and e_ts <= ts and (best is None or (e_ts, created) > (best[0], best[1])):
            best = (e_ts, created, value)
    if best is None or (ttl is not None and dt.timedelta(minutes=ts - best[0]) > ttl):
        return None
    return best[2]


@pytest.fixture(scope="module")
def pit() -> Any:
    """One project with three views over one Parquet file (ttl: none, 1 min, 5 min), rewritten per example."""
    home = tempfile.mkdtemp()
    project = Project(Settings.defaults(home=home))
    path = str(Path(home) / "events.parquet")
    views = [FeatureView(name=name, entities=[user], source=path, timestamp_field="ts", ttl=ttl,
                         created_timestamp_field="created", fields=[Field("value", "float64")])
             for name, ttl in TTLS.items()]
    fs = FeatureStore(project)
    fs.apply([user, *views])
    yield fs, path
    project.close()


events_st = st.lists(
    st.tuples(st.integers(0, 3), st.integers(0, 12), st.integers(0, 3),
              st.one_of(st.none(), st.integers(-50, 50).map(float))),
    max_size=40, unique_by=lambda e: (e[0], e[1], e[2]),
)
rows_st = st.lists(st.tuples(st.integers(0, 4), st.integers(0, 15)), min_size=1, max_size=30)


def write_events(path: str, events: list[tuple[int, int, int, float | None]]) -> None:
    pq.write_table(pa.table({
        "user_id": pa.array([e[0] for e in events], pa.int64()),
        "ts": pa.array([minutes(e[1]) for e in events], pa.timestamp("us", tz="UTC")),
        "created": pa.array([minutes(e[2]) for e in events], pa.timestamp("us", tz="UTC")),
        "value": pa.array([e[3] for e in events], pa.float64()),
    }), path)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=events_st, rows=rows_st)
def test_training_set_equals_brute_force(pit: Any, events: list[Any], rows: list[tuple[int, int]]) -> None:
    fs, path = pit
    write_events(path, events)
    entity = pd.DataFrame({"user_id": [r[0] for r in rows], "event_timestamp": [minutes(r[1]) for r in rows]})
    refs = [f"{name}:value" for name in TTLS]
    got = fs.get_training_set(entity, refs, full_feature_names=True)
    assert len(got) == len(rows)  # every entity row is kept, in order
    assert got["user_id"].tolist() == entity["user_id"].tolist()
    assert got["event_timestamp"].tolist() == entity["event_timestamp"].tolist()
    for name, ttl in TTLS.items():
        want = [brute_force(events, r, ttl) for r in rows]
        col = [None if pd.isna(v) else float(v) for v in got[f"{name}__value"]]
        assert col == want, name


def test_no_value_from_after_the_row_time_ever_appears(project: Project) -> None:
    """The feature value is its own event time, so any leak would show as value > row time."""
    rng = np.random.default_rng(7)
    n_events, n_rows = 60_000, 20_000
    ev_ts = T0 + pd.to_timedelta(rng.integers(0, 10_000_000, n_events), unit="s")
    ev_ts = pd.Series(ev_ts).dt.floor("s")
    events = pd.DataFrame({"user_id": rng.integers(0, 500, n_events), "ts": ev_ts})
    events["stamp"] = events["ts"].astype("int64") // 10**9  # seconds since epoch, equal to the event time
    events = events.drop_duplicates(["user_id", "ts"])
    project.offline.write("clicks", pa.Table.from_pandas(events, preserve_index=False), time_column="ts")
    view = FeatureView(name="clicks", entities=[user], source="clicks", timestamp_field="ts",
                       ttl=dt.timedelta(days=3), fields=[Field("stamp", "int64")])
    fs = FeatureStore(project)
    fs.apply([view])
    rows = pd.DataFrame({"user_id": rng.integers(0, 520, n_rows),
                         "event_timestamp": pd.Series(T0 + pd.to_timedelta(rng.integers(0, 10_500_000, n_rows),
                                                                           unit="s")).dt.floor("s")})
    # Half the rows sit exactly on an event time: ties must be included.
    rows.loc[: n_rows // 2, ["user_id", "event_timestamp"]] = events[["user_id", "ts"]].iloc[: n_rows // 2 + 1].values
    rows["event_timestamp"] = pd.to_datetime(rows["event_timestamp"], utc=True)
    rows["user_id"] = rows["user_id"].astype("int64")
    got = fs.get_training_set(rows, ["clicks:stamp"])
    assert len(got) == n_rows
    row_s = got["event_timestamp"].astype("int64") // 10**9
    present = got["stamp"].notna()
    assert (got.loc[present, "stamp"] <= row_s[present]).all(), "a value from after the row time leaked"
    assert ((row_s[present] - got.loc[present, "stamp"]) <= 3 * 86400).all(), "a value older than ttl was used"
    assert (got.loc[: n_rows // 2, "stamp"] == row_s[: n_rows // 2 + 1]).all(), "a tie was not included"
    # Cross-check against pandas' merge_asof (no ties in the source: one event per user and second).
    ref = pd.merge_asof(rows.reset_index().sort_values("event_timestamp"),
                        events.sort_values("ts").rename(columns={"ts": "ets"}), left_on="event_timestamp",
                        right_on="ets", by="user_id", direction="backward", allow_exact_matches=True,
                        tolerance=pd.Timedelta(days=3)).sort_values("index")
    assert np.array_equal(ref["stamp"].to_numpy(dtype=float), got["stamp"].to_numpy(dtype=float), equal_nan=True)


def test_entity_rows_without_history_are_kept_with_nulls(project: Project) -> None:
    project.offline.write("scores", pa.table({"user_id": [1], "ts": [minutes(5)], "score": [0.5]}), time_column="ts")
    view = FeatureView(name="scores", entities=[user], source="scores", timestamp_field="ts",
                       fields=[Field("score", "float64")])
    fs = FeatureStore(project)
    fs.apply([view])
    rows = pd.DataFrame({"user_id": [1, 2, 1], "event_timestamp": [minutes(6), minutes(6), minutes(4)],
                         "label": [1, 0, 1]})
    got = fs.get_training_set(rows, ["scores:score"])
    assert got["label"].tolist() == [1, 0, 1]
    assert got["score"].tolist()[0] == 0.5
    assert got["score"].isna().tolist() == [False, True, True]


def test_naive_entity_times_are_utc_and_csv_sources_work(project: Project, tmp_path: Path) -> None:
    csv = tmp_path / "w.csv"
    csv.write_text("origin,time_hour,temp\nJFK,2013-01-01T06:00:00Z,39.0\nJFK,2013-01-01T07:00:00Z,40.5\n")
    port = Entity(name="airport", join_keys=["origin"])
    view = FeatureView(name="w", entities=[port], source=str(csv), timestamp_field="time_hour",
                       fields=[Field("temp", "float64")])
    fs = FeatureStore(project)
    fs.apply([view])
    rows = pd.DataFrame({"origin": ["JFK", "JFK"],
                         "event_timestamp": [dt.datetime(2013, 1, 1, 6, 59), dt.datetime(2013, 1, 1, 7)]})
    assert fs.get_training_set(rows, ["w:temp"])["temp"].tolist() == [39.0, 40.5]


def test_output_to_parquet_spills_under_a_small_memory_limit(tmp_path: Path) -> None:
    settings = Settings.defaults(home=tmp_path / "mm")
    settings = Settings(**{**settings.__dict__, "extra": {"features": {"memory_limit": "64MB", "threads": 1}}})
    with Project(settings) as project:
        rng = np.random.default_rng(3)
        n = 400_000
        events = pa.table({"user_id": rng.integers(0, 50_000, n), "ts": pa.array(
            (np.datetime64("2024-01-01", "us") + rng.integers(0, 10**12, n).astype("timedelta64[us]")),
            pa.timestamp("us")), "v": rng.random(n)})
        project.offline.write("big", events, time_column="ts", batch_id="b")
        fs = FeatureStore(project)
        fs.apply([FeatureView(name="big", entities=[user], source="big", timestamp_field="ts",
                              fields=[Field("v", "float64")])])
        entity = pa.table({"user_id": rng.integers(0, 50_000, n), "event_timestamp": events.column("ts")})
        out = str(tmp_path / "train.parquet")
        assert fs.get_training_set(entity, ["big:v"], output=out) == out
        result = pq.read_table(out)
        assert result.num_rows == n
        assert result.column("user_id").equals(entity.column("user_id"))  # input order kept
        assert fs.duckdb_settings().memory_limit == "64MB"


def test_bad_requests_are_input_errors(project: Project) -> None:
    fs = FeatureStore(project)
    port = Entity(name="airport", join_keys=["origin"])
    fs.apply([FeatureView(name="w", entities=[port], source="nowhere", timestamp_field="ts",
                          fields=[Field("temp")])])
    rows = pd.DataFrame({"origin": ["JFK"], "event_timestamp": [T0]})
    with pytest.raises(NotFoundError, match="offline table 'nowhere'"):
        fs.get_training_set(rows, ["w:temp"])
    with pytest.raises(InputError, match="no feature 'nope'"):
        fs.get_training_set(rows, ["w:nope"])
    with pytest.raises(NotFoundError, match="feature view 'zz'"):
        fs.get_training_set(rows, ["zz:temp"])
    with pytest.raises(InputError, match="join key"):
        fs.get_training_set(rows.rename(columns={"origin": "o"}), ["w:temp"])
    with pytest.raises(InputError, match="timestamp column"):
        fs.get_training_set(rows, ["w:temp"], timestamp_column="when")
