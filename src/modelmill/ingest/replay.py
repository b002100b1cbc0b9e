"""File replay: a CSV, Parquet or JSON-lines file as a stream, in event-time order.

``speed=None`` replays as fast as the consumer takes events; ``speed=60`` plays an
hour of event time in a minute. JSON lines are replayed byte for byte (a malformed
line reaches the dead letters like it would from a broker); CSV and Parquet rows
are encoded as JSON objects of the schema's fields.

    >>> import tempfile, os
    >>> from modelmill.ingest.schema import EventSchema, Field
    >>> s = EventSchema(name="t", fields=[Field("id", "int"), Field("ts", "timestamp")], event_id="id",
    ...                 event_time="ts")
    >>> path = os.path.join(tempfile.mkdtemp(), "t.csv")
    >>> _ = open(path, "w").write("id,ts\\n2,2024-01-02T00:00:00Z\\n1,2024-01-01T00:00:00Z\\n")
    >>> FileReplaySource(path, schema=s).open().poll(10, 0).payloads
    [b'{"id":1,"ts":"2024-01-01T00:00:00Z"}', b'{"id":2,"ts":"2024-01-02T00:00:00Z"}']
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from modelmill.errors import InputError, NotFoundError
from modelmill.ingest.schema import EventSchema
from modelmill.ingest.source import Polled, Source

__all__ = ["FileReplaySource", "read_events", "to_payloads"]


def read_events(path: str | Path, schema: EventSchema) -> pa.Table:
    """A CSV or Parquet file as a table of the schema's fields that it has (in file order)."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError("file", str(path), "check the path")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        table = pq.read_table(path)
    elif suffix == ".csv":
        import pyarrow.csv as pcsv

        # A string field stays text ("007" is not the number 7); an empty cell stays "" (the validator
        # refuses it where the field is required).
        strings = {f.name: pa.string() for f in schema.fields if f.type == "string"}
        try:
            table = pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(column_types=strings))
        except pa.ArrowInvalid as exc:
            raise InputError("file", f"is not a CSV file that can be read: {exc}", str(path)) from exc
    else:
        raise InputError("file", "must end in .csv, .parquet, .jsonl or .ndjson", str(path))
    names = [f.name for f in schema.fields if f.name in table.column_names]
    if schema.event_time not in names:
        raise InputError("file", f"has no column {schema.event_time!r} (the event-time field of {schema.name!r})",
                         str(path))
    return table.select(names)


def to_payloads(table: pa.Table) -> list[bytes]:
    """Rows as compact JSON objects (timestamps as ISO-8601, NaN as null)."""
    if not table.num_rows:
        return []
    # Nanosecond timestamps (fractional seconds in a CSV, pandas-written Parquet) become pandas
    # Timestamps that orjson cannot write; events are stored in microseconds anyway.
    for i, field in enumerate(table.schema):
        if pa.types.is_timestamp(field.type) and field.type.unit == "ns":
            us = pa.timestamp("us", tz=field.type.tz)
            table = table.set_column(i, field.name, pc.cast(table.column(i), us, safe=False))
    return [orjson.dumps(row, option=orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z) for row in table.to_pylist()]


def _epoch_seconds(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    if pa.types.is_timestamp(column.type):
        ts = column
    else:
        try:
            ts = pc.cast(column, pa.timestamp("us", tz="UTC"))
        except pa.ArrowInvalid:
            ts = pc.cast(column, pa.timestamp("us"))
    # Read in the column's own unit: a checked cast of nanoseconds to microseconds refuses any time with a
    # fraction of a microsecond (pandas writes nanoseconds), and ordering needs no such precision anyway.
    unit = ts.type.unit if pa.types.is_timestamp(ts.type) else "us"
    raw = pc.cast(ts, pa.int64()).to_numpy(zero_copy_only=False)
    return np.asarray(raw, dtype="float64") / _PER_SECOND[unit]


_PER_SECOND = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}


class FileReplaySource(Source):
    """Replays one file (or an in-memory table) in event-time order; ``speed`` compresses time."""

    def __init__(self, path: str | Path | pa.Table, *, schema: EventSchema, stream: str | None = None,
                 speed: float | None = None) -> None:
        if speed is not None and speed <= 0:
            raise InputError("speed", "must be a positive time-compression factor", speed)
        self.path = path
        self.schema = schema
        self.stream = stream or schema.name
        self.url = str(path) if not isinstance(path, pa.Table) else "memory://table"
        self.speed = speed
        self._payloads: list[bytes] | None = None
        self._table: pa.Table | None = None
        self._times = np.empty(0)
        self._pos = 0
        self._start = 0.0

    def open(self) -> FileReplaySource:
        if self._table is not None or self._payloads is not None:
            return self
        if isinstance(self.path, pa.Table) or Path(self.path).suffix.lower() in (".csv", ".parquet", ".pq"):
            table = self.path if isinstance(self.path, pa.Table) else read_events(self.path, self.schema)
            times = _epoch_seconds(table.column(self.schema.event_time))
            order = np.argsort(times, kind="stable")
            self._table = table.take(pa.array(order))
            self._times = times[order]
        else:
            self._open_lines(Path(self.path))
        self._start = time.monotonic()
        return self

    def _open_lines(self, path: Path) -> None:
        if not path.is_file():
            raise NotFoundError("file", str(path), "check the path")
        lines = [line for line in path.read_bytes().split(b"\n") if line.strip()]
        times = np.empty(len(lines))
        last = -np.inf
        field = self.schema.event_time
        for i, line in enumerate(lines):
            try:
                value = orjson.loads(line).get(field)
                last = _epoch_seconds(pa.array([value]))[0] if value is not None else last
            except (orjson.JSONDecodeError, AttributeError, pa.ArrowException, TypeError, ValueError):
                pass  # a malformed line keeps its place in the file
            times[i] = last
        order = np.argsort(times, kind="stable")
        self._payloads = [lines[i] for i in order]
        self._times = times[order]

    @property
    def total(self) -> int:
        return len(self._times)

    def poll(self, max_events: int, timeout: float) -> Polled:
        self.open()
        end = min(self._pos + max_events, self.total)
        if self.speed is not None and self._pos < self.total:
            origin = self._times[np.isfinite(self._times)][:1]
            t0 = float(origin[0]) if len(origin) else 0.0
            due_until = t0 + (time.monotonic() - self._start) * self.speed
            due = int(np.searchsorted(self._times, due_until, side="right"))
            if due <= self._pos:
                wait = (float(self._times[self._pos]) - due_until) / self.speed
                time.sleep(max(0.0, min(wait, timeout)))
                due_until = t0 + (time.monotonic() - self._start) * self.speed
                due = int(np.searchsorted(self._times, due_until, side="right"))
            end = min(end, max(due, self._pos))
        start, self._pos = self._pos, end
        if self._payloads is not None:
            return Polled(self._payloads[start:end], end)
        assert self._table is not None
        return Polled(to_payloads(self._table.slice(start, end - start)), end)

    def ack(self, polled: Sequence[Polled]) -> None:
        """Nothing to remember: a replay restarts from the top, and the sink drops what it already holds."""

    def lag(self) -> int | None:
        return self.total - self._pos

    @property
    def exhausted(self) -> bool:
        return self._pos >= self.total and (self._table is not None or self._payloads is not None)
