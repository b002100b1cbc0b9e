"""Feature definitions: entities, feature views, streaming aggregations and feature services.

Definitions are plain frozen value objects; :meth:`FeatureStore.apply` stores
them, versioned, in the metadata database. Every definition round-trips
through :func:`to_spec` / :func:`from_spec`::

    >>> from datetime import timedelta
    >>> airport = Entity(name="airport", join_keys=["origin"])
    >>> weather = FeatureView(name="weather", entities=[airport], source="weather",
    ...                       timestamp_field="time_hour", ttl=timedelta(hours=3),
    ...                       fields=[Field("temp", "float64"), Field("wind_speed", "float64")])
    >>> weather.join_keys, weather.feature_names
    (('origin',), ('temp', 'wind_speed'))
    >>> from_spec(to_spec(weather)) == weather
    True
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any

import orjson

from modelmill.errors import InputError

__all__ = [
    "DTYPES",
    "ON_MISSING",
    "Aggregation",
    "Definition",
    "Entity",
    "FeatureService",
    "FeatureView",
    "Field",
    "StreamAggregation",
    "from_spec",
    "match_columns",
    "parse_ref",
    "to_spec",
]

# Feature value types; "numeric" ones can be served as float64 vectors.
DTYPES = ("float64", "float32", "int64", "int32", "bool", "string", "timestamp")
NUMERIC = frozenset({"float64", "float32", "int64", "int32", "bool"})
FUNCTIONS = ("count", "sum", "mean", "min", "max", "last")
#: What serving does with a feature the online store lacks (see :class:`FeatureService`).
ON_MISSING = ("reject", "default", "allow")

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")


def _check_name(field: str, name: object) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InputError(field, "must be a letter or '_' followed by letters, digits or '_' (at most 100)", name)
    return name


def _check_feature_name(field: str, name: object) -> str:
    _check_name(field, name)
    assert isinstance(name, str)
    if name.startswith("__"):
        raise InputError(field, "names starting with '__' are reserved", name)
    return name


def _td(field: str, value: object, *, allow_none: bool = False) -> timedelta | None:
    if value is None and allow_none:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = timedelta(seconds=value)
    if not isinstance(value, timedelta) or value <= timedelta(0):
        raise InputError(field, "must be a positive timedelta (or seconds)", value)
    return value


def format_window(window: timedelta) -> str:
    """``1h``, ``24h``, ``7d``: the suffix of aggregation feature names."""
    seconds = int(window.total_seconds())
    if seconds % 86400 == 0 and seconds > 86400:
        return f"{seconds // 86400}d"
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@dataclasses.dataclass(frozen=True)
class Field:
    """One typed feature of a view: ``Field("temp", "float64")``."""

    name: str
    dtype: str = "float64"

    def __post_init__(self) -> None:
        _check_feature_name("field.name", self.name)
        if self.dtype not in DTYPES:
            raise InputError(f"field {self.name!r} dtype", f"must be one of {', '.join(DTYPES)}", self.dtype)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Entity:
    """The thing features describe (a user, an airport), identified by its join keys."""

    name: str
    join_keys: tuple[str, ...]
    description: str = ""

    def __post_init__(self) -> None:
        _check_name("entity.name", self.name)
        keys = (self.join_keys,) if isinstance(self.join_keys, str) else tuple(self.join_keys)
        if not keys:
            raise InputError(f"entity {self.name!r} join_keys", "needs at least one key")
        for k in keys:
            _check_name(f"entity {self.name!r} join_keys", k)
        object.__setattr__(self, "join_keys", keys)


def _entities(owner: str, entities: object) -> tuple[Entity, ...]:
    items = (entities,) if isinstance(entities, Entity) else tuple(entities)  # type: ignore[arg-type]
    if not items or not all(isinstance(e, Entity) for e in items):
        raise InputError(f"{owner} entities", "must be a non-empty list of Entity objects", entities)
    return items


def _join_keys(entities: Sequence[Entity]) -> tuple[str, ...]:
    out: list[str] = []
    for e in entities:
        out.extend(k for k in e.join_keys if k not in out)
    return tuple(out)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FeatureView:
    """Features read from a source with one row per entity and event time.

    ``source`` is an offline-store table name (``"weather"``) or a Parquet/CSV
    file path or glob. ``ttl`` bounds how old a value may be and still count
    (``None``: forever). The source has one column per join key, the
    ``timestamp_field`` and one column per field. ``created_timestamp_field``,
    when given, breaks ties between rows with equal event times (latest wins).
    ``partitioned_by_timestamp``: the source is an offline-store table whose
    ``event_date`` partitions are the dates of ``timestamp_field`` (true when it
    is the event time of the ingested stream); materialising a time range then
    reads only the partitions of that range instead of the whole table.
    """

    name: str
    entities: tuple[Entity, ...]
    source: str
    timestamp_field: str
    fields: tuple[Field, ...]
    ttl: timedelta | None = None
    created_timestamp_field: str | None = None
    description: str = ""
    partitioned_by_timestamp: bool = False

    def __post_init__(self) -> None:
        _check_name("feature_view.name", self.name)
        object.__setattr__(self, "entities", _entities(f"feature view {self.name!r}", self.entities))
        if not isinstance(self.source, str) or not self.source:
            raise InputError(f"feature view {self.name!r} source", "must be a table name or a file path", self.source)
        _check_name(f"feature view {self.name!r} timestamp_field", self.timestamp_field)
        fields = tuple(Field(f) if isinstance(f, str) else f for f in self.fields)
        if not fields or not all(isinstance(f, Field) for f in fields):
            raise InputError(f"feature view {self.name!r} fields", "must be a non-empty list of Field", self.fields)
        names = [f.name for f in fields]
        if len(set(names)) != len(names):
            raise InputError(f"feature view {self.name!r} fields", "has duplicate names", names)
        clash = set(names) & {*self.join_keys, self.timestamp_field}
        if clash:
            raise InputError(f"feature view {self.name!r} fields", "must not repeat a join key or the timestamp", sorted(clash))
        object.__setattr__(self, "fields", fields)
        object.__setattr__(self, "ttl", _td(f"feature view {self.name!r} ttl", self.ttl, allow_none=True))
        if self.created_timestamp_field is not None:
            _check_name(f"feature view {self.name!r} created_timestamp_field", self.created_timestamp_field)

    @property
    def join_keys(self) -> tuple[str, ...]:
        return _join_keys(self.entities)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def dtype(self, feature: str) -> str:
        for f in self.fields:
            if f.name == feature:
                return f.dtype
        raise InputError("feature", f"view {self.name!r} has no feature {feature!r} ({', '.join(self.feature_names)})")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Aggregation:
    """One aggregate of a stream column over sliding windows: ``Aggregation("dep_delay", "mean", ["1h"])``.

    ``function`` is count, sum, mean, min, max or last; ``column`` may be
    ``None`` for ``count`` (count of events). Each window yields one feature
    named ``{column}_{function}_{window}`` (``count_{window}`` for event counts).
    """

    column: str | None
    function: str
    windows: tuple[timedelta, ...]

    def __post_init__(self) -> None:
        if self.function not in FUNCTIONS:
            raise InputError("aggregation.function", f"must be one of {', '.join(FUNCTIONS)}", self.function)
        if self.column is None and self.function != "count":
            raise InputError("aggregation.column", f"is required for {self.function!r}")
        if self.column is not None:
            _check_feature_name("aggregation.column", self.column)
        raw = (self.windows,) if isinstance(self.windows, timedelta | str | int | float) else tuple(self.windows)
        windows = tuple(_parse_window(w) for w in raw)
        if not windows:
            raise InputError("aggregation.windows", "needs at least one window")
        object.__setattr__(self, "windows", windows)

    def feature_name(self, window: timedelta) -> str:
        base = "count" if self.column is None else f"{self.column}_{self.function}"
        return f"{base}_{format_window(window)}"


def _parse_window(value: object) -> timedelta:
    if isinstance(value, str):
        m = re.fullmatch(r"(\d+)([smhd])", value.strip())
        if not m:
            raise InputError("aggregation.windows", "must be a timedelta or a string like '1h', '24h', '7d'", value)
        n, unit = int(m.group(1)), m.group(2)
        value = timedelta(seconds=n * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit])
    td = _td("aggregation.windows", value)
    assert td is not None
    if td.total_seconds() % 60:
        raise InputError("aggregation.windows", "must be a whole number of minutes", value)
    return td


@dataclasses.dataclass(frozen=True, kw_only=True)
class StreamAggregation:
    """Sliding-window aggregates per entity, kept up to date from a stream.

    Ingestion hands every accepted micro-batch of ``stream`` to the processor
    (:meth:`FeatureStore.stream_processor`); events are counted once per
    ``event_id_field`` even when several consumers deliver the same event.
    Each window is kept as ``buckets_per_window`` partial aggregates, so a
    window slides in steps of ``window / buckets_per_window``.
    """

    name: str
    entities: tuple[Entity, ...]
    stream: str
    timestamp_field: str
    event_id_field: str
    aggregations: tuple[Aggregation, ...]
    buckets_per_window: int = 60
    description: str = ""

    def __post_init__(self) -> None:
        _check_name("stream_aggregation.name", self.name)
        object.__setattr__(self, "entities", _entities(f"stream aggregation {self.name!r}", self.entities))
        _check_name(f"stream aggregation {self.name!r} stream", self.stream)
        _check_name(f"stream aggregation {self.name!r} timestamp_field", self.timestamp_field)
        _check_name(f"stream aggregation {self.name!r} event_id_field", self.event_id_field)
        aggs = tuple(self.aggregations)
        if not aggs or not all(isinstance(a, Aggregation) for a in aggs):
            raise InputError(f"stream aggregation {self.name!r} aggregations", "must be a non-empty list of Aggregation")
        object.__setattr__(self, "aggregations", aggs)
        if not isinstance(self.buckets_per_window, int) or not 1 <= self.buckets_per_window <= 1000:
            raise InputError("buckets_per_window", "must be an integer from 1 to 1000", self.buckets_per_window)
        names = self.feature_names
        if len(set(names)) != len(names):
            raise InputError(f"stream aggregation {self.name!r}", "two aggregations give the same feature name", names)
        for w in self.windows:
            if int(w.total_seconds()) % self.buckets_per_window:
                raise InputError("buckets_per_window", f"must divide every window in seconds ({format_window(w)})",
                                 self.buckets_per_window)

    @property
    def join_keys(self) -> tuple[str, ...]:
        return _join_keys(self.entities)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(a.feature_name(w) for a in self.aggregations for w in a.windows)

    @property
    def windows(self) -> tuple[timedelta, ...]:
        return tuple(sorted({w for a in self.aggregations for w in a.windows}))

    @property
    def columns(self) -> tuple[str, ...]:
        """Stream columns aggregated; ``""`` stands for the event count."""
        out: list[str] = [""]
        out.extend(a.column for a in self.aggregations if a.column is not None and a.column not in out)
        return tuple(out)

    def feature(self, name: str) -> tuple[Aggregation, timedelta]:
        for a in self.aggregations:
            for w in a.windows:
                if a.feature_name(w) == name:
                    return a, w
        raise InputError("feature", f"stream aggregation {self.name!r} has no feature {name!r} "
                                    f"({', '.join(self.feature_names)})")

    def dtype(self, feature: str) -> str:
        agg, _ = self.feature(feature)
        return "int64" if agg.function == "count" else "float64"


@dataclasses.dataclass(frozen=True, kw_only=True)
class FeatureService:
    """The named list of features one model uses, as ``"view:feature"`` references.

    ``on_missing`` says what serving does when the online store has no value of a feature for a
    request's entity (never written, lost, or expired past its view's ``ttl``):

    - ``"reject"`` (the default): the request is refused (HTTP 422) naming the entity and each
      missing or expired feature;
    - ``"default"``: the value declared in ``defaults`` (``{"view:feature": value}``) is used, and a
      feature without a declared default is refused as under ``"reject"``;
    - ``"allow"``: NaN goes to the model (one that accepts missing values) and the response lists
      the features under ``"missing"``.

        >>> svc = FeatureService(name="s", features=["w:temp", "w:wind"], on_missing="default",
        ...                      defaults={"w:temp": 15.0})
        >>> svc.default_values
        {'w:temp': 15.0}
    """

    name: str
    features: tuple[str, ...]
    description: str = ""
    on_missing: str = "reject"
    defaults: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        _check_name("feature_service.name", self.name)
        refs = (self.features,) if isinstance(self.features, str) else tuple(self.features)
        if not refs:
            raise InputError(f"feature service {self.name!r} features", "needs at least one 'view:feature' reference")
        for r in refs:
            parse_ref(r)
        if len(set(refs)) != len(refs):
            raise InputError(f"feature service {self.name!r} features", "has duplicates", refs)
        object.__setattr__(self, "features", refs)
        if self.on_missing not in ON_MISSING:
            raise InputError(f"feature service {self.name!r} on_missing", f"must be one of {', '.join(ON_MISSING)}",
                             self.on_missing)
        items = self.defaults.items() if isinstance(self.defaults, dict) else self.defaults
        pairs: list[tuple[str, float]] = []
        for item in items:
            ref, value = item
            if ref not in refs:
                raise InputError(f"feature service {self.name!r} defaults", "names a feature the service does not "
                                 "have", ref)
            if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
                raise InputError(f"feature service {self.name!r} defaults.{ref}", "must be a number", value)
            pairs.append((str(ref), float(value)))
        object.__setattr__(self, "defaults", tuple(sorted(pairs)))

    @property
    def default_values(self) -> dict[str, float]:
        return dict(self.defaults)


Definition = Entity | FeatureView | StreamAggregation | FeatureService


def parse_ref(ref: object) -> tuple[str, str]:
    """``"weather:temp"`` -> ``("weather", "temp")``."""
    if not isinstance(ref, str) or ref.count(":") != 1:
        raise InputError("features", "each reference must look like 'view:feature'", ref)
    view, feature = ref.split(":")
    if not _NAME.fullmatch(view) or not _NAME.fullmatch(feature):
        raise InputError("features", "each reference must look like 'view:feature'", ref)
    return view, feature


def match_columns(columns: Sequence[str], refs: Sequence[str]) -> list[str | None]:
    """The feature reference each model input column is served from, or None for a request-time input.

    Column ``c`` is taken from the service when a reference equals ``c``, equals ``c`` with ``__`` read
    as ``:`` (training-set column names), or is the only reference whose feature part is ``c``. Serving
    fills inputs this way and the skew check reads the log back the same way.

        >>> match_columns(["w__temp", "wind", "hour"], ["w:temp", "w:wind"])
        ['w:temp', 'w:wind', None]
    """
    by_feature: dict[str, list[str]] = {}
    for r in refs:
        by_feature.setdefault(r.split(":", 1)[-1], []).append(r)
    out: list[str | None] = []
    for col in columns:
        if col in refs:
            out.append(col)
        elif col.replace("__", ":", 1) in refs:
            out.append(col.replace("__", ":", 1))
        elif len(by_feature.get(col, ())) == 1:
            out.append(by_feature[col][0])
        else:
            out.append(None)
    return out


# ---- specs: the JSON form stored in the metadata database ---------------------------------------

KINDS: dict[type, str] = {Entity: "entity", FeatureView: "feature_view",
                          StreamAggregation: "stream_aggregation", FeatureService: "feature_service"}


def kind_of(obj: object) -> str:
    kind = KINDS.get(type(obj))
    if kind is None:
        raise InputError("objects", "must be Entity, FeatureView, StreamAggregation or FeatureService", type(obj).__name__)
    return kind


def to_spec(obj: Definition) -> dict[str, Any]:
    """The JSON-ready form of a definition (timedeltas in seconds, entities by value)."""
    kind = kind_of(obj)
    data = _plain(dataclasses.asdict(obj))
    data["kind"] = kind
    return data


def _plain(value: Any) -> Any:
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def from_spec(spec: dict[str, Any]) -> Definition:
    """Rebuild a definition from :func:`to_spec`'s output."""
    data = {k: v for k, v in spec.items() if k != "kind"}
    kind = spec.get("kind")
    if kind == "entity":
        return Entity(**data)
    if kind == "feature_service":
        return FeatureService(**data)
    entities = tuple(Entity(**e) for e in data.pop("entities"))
    if kind == "feature_view":
        fields = tuple(Field(**f) for f in data.pop("fields"))
        ttl = data.pop("ttl")
        return FeatureView(entities=entities, fields=fields,
                           ttl=None if ttl is None else timedelta(seconds=ttl), **data)
    if kind == "stream_aggregation":
        aggs = tuple(Aggregation(column=a["column"], function=a["function"],
                                 windows=tuple(timedelta(seconds=w) for w in a["windows"]))
                     for a in data.pop("aggregations"))
        return StreamAggregation(entities=entities, aggregations=aggs, **data)
    raise InputError("spec.kind", "unknown definition kind", kind)


def fingerprint(spec: dict[str, Any]) -> str:
    """A stable hash of a spec: equal definitions give equal fingerprints."""
    return hashlib.sha256(orjson.dumps(spec, option=orjson.OPT_SORT_KEYS)).hexdigest()


def collect(objects: Iterable[object]) -> list[Definition]:
    """Definitions among ``objects`` (a module's globals, say), entities first, in a stable order."""
    found: list[Definition] = [o for o in objects if isinstance(o, Entity | FeatureView | StreamAggregation | FeatureService)]
    order = {"entity": 0, "feature_view": 1, "stream_aggregation": 1, "feature_service": 2}
    return sorted(found, key=lambda o: order[kind_of(o)])
