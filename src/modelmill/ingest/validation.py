"""Turn raw event payloads into a typed Arrow table; everything malformed becomes a :class:`Rejected`.

The fast path hands a whole batch to Arrow's C++ JSON reader with the schema's
types; only a batch it refuses is walked event by event (orjson), so a clean
stream costs a fraction of a microsecond per event and a dirty one stays exact.

    >>> from modelmill.ingest.schema import EventSchema, Field
    >>> s = EventSchema(name="clicks", fields=[Field("id", "string"), Field("ts", "timestamp"),
    ...                 Field("n", "int")], event_id="id", event_time="ts")
    >>> good, bad = Validator(s).validate([b'{"id":"a","ts":"2024-01-01T00:00:00Z","n":1}', b'{"id":"b"'])
    >>> good.num_rows, [r.reason for r in bad]
    (1, ['invalid_json'])
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from modelmill.errors import ConfigError
from modelmill.ingest.schema import EventSchema

__all__ = ["REASONS", "Rejected", "TimeWindow", "Validator"]

#: Why an event is rejected: the codes a dead letter carries.
REASONS = ("oversized", "invalid_json", "not_an_object", "missing_required", "wrong_type", "out_of_range")

_INT_MIN, _INT_MAX = -(1 << 63), (1 << 63) - 1
_TS = pa.timestamp("us", tz="UTC")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
# orjson refuses documents nested deeper than this; pyarrow's reader has no such limit.
_MAX_DEPTH = 1024
_BOM = b"\xef\xbb\xbf"
# What a 64-bit nanosecond timestamp holds (pandas, numpy datetime64[ns]), in whole microseconds.
_NS_MIN_US, _NS_MAX_US = -9_223_372_036_854_775, 9_223_372_036_854_775
# What the offline store can partition by date (Python's datetime): the widest window a setting may ask for.
_DATETIME_MIN_US = (dt.datetime(1, 1, 1, tzinfo=dt.UTC) - _EPOCH) // dt.timedelta(microseconds=1)
_DATETIME_MAX_US = (dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC) - _EPOCH) // dt.timedelta(
    microseconds=1)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TimeWindow:
    """The times a timestamp field may hold; an event outside it is dead-lettered as ``out_of_range``.

    The default is what a nanosecond timestamp holds (1677-09-21 to 2262-04-11), so every accepted
    event also loads into pandas. ``[ingest] min_time`` / ``max_time`` in modelmill.toml change it,
    within years 1 to 9999 (what the offline store can partition by date).

        >>> TimeWindow.from_section({"min_time": "2000-01-01", "max_time": "2030-01-01T00:00:00Z"})
        TimeWindow(2000-01-01T00:00:00Z .. 2030-01-01T00:00:00Z)
    """

    min_us: int = _NS_MIN_US
    max_us: int = _NS_MAX_US

    def __post_init__(self) -> None:
        for key in ("min_us", "max_us"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or not (
                    _DATETIME_MIN_US <= value <= _DATETIME_MAX_US):
                raise ConfigError(f"ingest.{key[:3]}_time", value, "a time between 0001-01-01 and 9999-12-31")
        if self.min_us >= self.max_us:
            raise ConfigError("ingest.max_time", _iso(self.max_us), f"a time after min_time ({_iso(self.min_us)})")

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> TimeWindow:
        """Read ``min_time`` / ``max_time`` (ISO 8601 text or TOML dates; no offset means UTC)."""
        given = {"min_time", "max_time"} & set(section)
        bounds = {f"{k[:3]}_us": _config_time(f"ingest.{k}", section[k]) for k in sorted(given)}
        return cls(**bounds)

    def __repr__(self) -> str:
        return f"TimeWindow({_iso(self.min_us)} .. {_iso(self.max_us)})"

    def describe(self) -> str:
        return f"{_iso(self.min_us)} .. {_iso(self.max_us)}"


def _iso(us: int) -> str:
    try:
        return (_EPOCH + dt.timedelta(microseconds=us)).isoformat().replace("+00:00", "Z")
    except OverflowError:
        return f"{us} microseconds since the epoch"


def _config_time(key: str, value: Any) -> int:
    accepted = "an ISO 8601 time such as '2000-01-01T00:00:00Z', between 0001-01-01 and 9999-12-31"
    when: dt.datetime
    if isinstance(value, dt.datetime):
        when = value
    elif isinstance(value, dt.date):
        when = dt.datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        try:
            when = dt.datetime.fromisoformat(value)
        except ValueError as exc:
            raise ConfigError(key, value, accepted) from exc
    else:
        raise ConfigError(key, value, accepted)
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return (when - _EPOCH) // dt.timedelta(microseconds=1)


@dataclasses.dataclass(frozen=True)
class Rejected:
    """One event that did not pass: a code from :data:`REASONS`, a sentence, and the bytes as they arrived."""

    reason: str
    detail: str
    payload: bytes
    field: str | None = None
    index: int = -1  # position in the validated batch


class Validator:
    """Validates batches of JSON payloads against one :class:`EventSchema`.

    An event's verdict depends on the event alone, never on the rest of its batch: the fast path
    is taken only for a batch in which it would judge every event as the strict slow path does.
    """

    def __init__(self, schema: EventSchema, *, window: TimeWindow | None = None) -> None:
        self.schema = schema
        self.window = window or TimeWindow()
        self._arrow = schema.arrow_schema
        self._parse = pj.ParseOptions(explicit_schema=self._arrow, unexpected_field_behavior="ignore")
        self._required = schema.required

    def __repr__(self) -> str:
        return f"Validator({self.schema.name!r})"

    def empty(self) -> pa.Table:
        return self._arrow.empty_table()

    def validate(self, payloads: Sequence[bytes]) -> tuple[pa.Table, list[Rejected]]:
        """Split ``payloads`` into the valid events (a table in schema order) and the rejected ones."""
        rejected: list[Rejected] = []
        limit = self.schema.max_event_bytes
        positions: list[int] | None = None
        if payloads and max(map(len, payloads)) > limit:
            kept, positions = [], []
            for i, p in enumerate(payloads):
                if len(p) > limit:
                    rejected.append(Rejected("oversized", f"event is {len(p)} bytes; the limit is {limit}",
                                             bytes(p), None, i))
                else:
                    kept.append(p)
                    positions.append(i)
            payloads = kept
        if not payloads:
            return self.empty(), rejected
        found: list[Rejected] = []
        fast = self._fast(payloads)
        table = self._slow(payloads, found) if fast is None else self._check_rows(fast, payloads, found)
        if positions is not None:
            found = [dataclasses.replace(r, index=positions[r.index]) for r in found]
        rejected.extend(found)
        return table, rejected

    # ---- fast path: Arrow's JSON reader over the whole batch ------------------------------------

    def _fast(self, payloads: Sequence[bytes]) -> pa.Table | None:
        joined = b"\n".join(payloads)
        if joined.count(b"\n") != len(payloads) - 1:  # a payload with a raw newline: no line framing
            return None
        # Where pyarrow's reader is more lenient than orjson, leave the batch to the strict slow path:
        # the non-JSON literals Inf, -Inf, Infinity and NaN, a byte-order mark, and nesting deeper than
        # orjson's limit (only a payload with more opening brackets than the limit can be that deep).
        if b"Inf" in joined or b"NaN" in joined or _BOM in joined:
            return None
        if len(joined) > _MAX_DEPTH and any(len(p) > _MAX_DEPTH and p.count(b"[") + p.count(b"{") > _MAX_DEPTH
                                            for p in payloads):
            return None
        if b"null" in joined and any(p.lstrip(b" \t\r\n")[:4] == b"null" for p in payloads):
            return None  # pyarrow 26's JSON reader crashes the process on a top-level null: the slow path rejects it
        try:
            table = pj.read_json(io.BytesIO(joined), parse_options=self._parse,
                                 read_options=pj.ReadOptions(block_size=max(1 << 20, len(joined) + 1)))
        except (pa.ArrowException, UnicodeDecodeError, ValueError):
            return None
        if table.num_rows != len(payloads):  # two objects on one line, or an empty payload
            return None
        return table.select(self._arrow.names).cast(self._arrow)

    def _check_rows(self, table: pa.Table, payloads: Sequence[bytes], rejected: list[Rejected]) -> pa.Table:
        """Reject rows the reader took but the schema refuses, each for its first bad field (field order)."""
        required = set(self._required)
        lo, hi = self.window.min_us, self.window.max_us
        masks: list[tuple[str, pa.ChunkedArray]] = []  # in field order, like the slow path's checks
        for f in self.schema.fields:
            column = table.column(f.name)
            if f.name in required and (column.null_count or f.type == "string"):
                empty = pc.fill_null(pc.equal(column, ""), True) if f.type == "string" else pc.is_null(column)
                if pc.any(empty).as_py():
                    masks.append((f.name, empty))
            if f.type == "timestamp":
                micros = column.cast(pa.int64())
                outside = pc.fill_null(pc.or_(pc.less(micros, lo), pc.greater(micros, hi)), False)
                if pc.any(outside).as_py():
                    masks.append((f.name, outside))
        if not masks:
            return table
        bad = masks[0][1]
        for _, m in masks[1:]:
            bad = pc.or_(bad, m)
        rows = pc.indices_nonzero(bad).to_pylist()
        flags = [(name, m.to_pylist()) for name, m in masks]
        for i in rows:
            name = next(n for n, f in flags if f[i])
            rejected.append(self._row_problem(name, table.column(name)[i].cast(pa.int64()).as_py()
                                              if self.schema.field(name).type == "timestamp"
                                              else table.column(name)[i].as_py(), payloads[i], i))
        return table.filter(pc.invert(bad))

    def _row_problem(self, name: str, value: Any, payload: bytes, index: int) -> Rejected:
        """The rejection of a present-but-refused or absent value (shared by both paths, so details match)."""
        if value is None or value == "":
            what = "empty" if value == "" else "missing or null"
            return Rejected("missing_required", f"required field {name!r} is {what}", bytes(payload), name, index)
        return Rejected("out_of_range", f"field {name!r} is {_iso(value)}, outside the accepted window "
                        f"{self.window.describe()} (set [ingest] min_time / max_time)", bytes(payload), name, index)

    # ---- slow path: one event at a time, exact reasons ----------------------------------------------

    def _slow(self, payloads: Sequence[bytes], rejected: list[Rejected]) -> pa.Table:
        rows: list[dict[str, Any]] = []
        origin: list[bytes] = []
        where: list[int] = []
        loads = orjson.loads
        for i, p in enumerate(payloads):
            try:
                obj = loads(p)
            except orjson.JSONDecodeError as exc:
                rejected.append(Rejected("invalid_json", f"not valid JSON: {exc}", bytes(p), None, i))
                continue
            if type(obj) is not dict:
                rejected.append(Rejected("not_an_object", f"expected a JSON object, got {type(obj).__name__}",
                                         bytes(p), None, i))
                continue
            rows.append(obj)
            origin.append(p)
            where.append(i)
        problems: dict[int, Rejected] = {}
        arrays = []
        required = set(self._required)
        lo, hi = self.window.min_us, self.window.max_us
        for f in self.schema.fields:
            values = [r.get(f.name) for r in rows]
            check = _CHECKS[f.type]
            must = f.name in required
            for j, v in enumerate(values):
                if v is None or (must and v == "" and f.type == "string"):
                    if must and j not in problems:
                        problems[j] = self._row_problem(f.name, v, origin[j], where[j])
                elif not check(v):
                    if j not in problems:
                        problems[j] = Rejected("wrong_type", f"field {f.name!r} must be {f.type}, got "
                                               f"{_json_type(v)} {_show(v)}", bytes(origin[j]), f.name, where[j])
                    values[j] = None
            if f.type == "timestamp":
                micros = _timestamps(values)
                for j, v in enumerate(values):
                    if v is None or j in problems:
                        continue
                    t = micros[j]
                    if t is None:
                        problems[j] = Rejected("wrong_type", f"field {f.name!r} must be an ISO-8601 timestamp or "
                                               f"epoch seconds, got {_show(v)}", bytes(origin[j]), f.name,
                                               where[j])
                    elif not lo <= t <= hi:
                        problems[j] = self._row_problem(f.name, t, origin[j], where[j])
                        micros[j] = None  # the sentinel of an overflowing epoch must not reach Arrow's cast
                arrays.append(pa.array(micros, pa.int64()).cast(_TS))
            else:
                arrays.append(pa.array(values, f.arrow_type))
        table = pa.Table.from_arrays(arrays, schema=self._arrow)
        if problems:
            rejected.extend(problems[j] for j in sorted(problems))
            keep = [j for j in range(len(rows)) if j not in problems]
            table = table.take(pa.array(keep, pa.int64()))
        return table


def _is_int(v: Any) -> bool:
    return type(v) is int and _INT_MIN <= v <= _INT_MAX


_CHECKS: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: type(v) is str,
    "int": _is_int,
    "float": lambda v: type(v) is float or _is_int(v),
    "bool": lambda v: type(v) is bool,
    "timestamp": lambda v: type(v) is str or type(v) is float or _is_int(v),
}


def _timestamps(values: list[Any]) -> list[int | None]:
    """ISO-8601 strings (no zone offset means UTC) or epoch seconds, as microseconds since the epoch."""
    # Epoch seconds past +-9.2e12 do not fit 64-bit microseconds: the extreme int64 stands for them, which
    # lies outside every time window, so the event is dead-lettered as out of range.
    out: list[int | None] = [None if v is None or type(v) is str else round(v * 1_000_000) if abs(v) < 9.2e12
                             else (_INT_MAX if v > 0 else _INT_MIN) for v in values]
    where = [j for j, v in enumerate(values) if type(v) is str]
    if where:
        parsed = _parse_iso([values[j] for j in where])
        for j, t in zip(where, parsed, strict=True):
            out[j] = t
    return out


def _parse_iso(texts: list[str]) -> list[int | None]:
    arr = pa.array(texts, pa.string())
    for target in (_TS, pa.timestamp("us")):
        try:
            return pc.cast(arr, target).cast(pa.int64()).to_pylist()
        except (pa.ArrowException, ValueError):
            continue
    if len(texts) == 1:
        return [None]
    return [_parse_iso([t])[0] for t in texts]


def _json_type(v: Any) -> str:
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "array",
            dict: "object"}.get(type(v), type(v).__name__)


def _show(v: Any, limit: int = 40) -> str:
    try:
        text = orjson.dumps(v).decode() if not isinstance(v, bytes) else repr(v)
    except (TypeError, orjson.JSONEncodeError):  # nested deeper than orjson writes: show only its kind
        text = "[…]" if isinstance(v, list) else "{…}"
    return text if len(text) <= limit else text[: limit - 1] + "…"
