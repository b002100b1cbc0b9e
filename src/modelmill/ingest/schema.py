"""Event schemas: a name, typed fields, which are required, the event-time field and the event-id field.

    >>> clicks = EventSchema(
    ...     name="clicks",
    ...     fields=[Field("id", "string"), Field("ts", "timestamp"), Field("user", "int", required=True),
    ...             Field("price", "float")],
    ...     event_id="id",
    ...     event_time="ts",
    ... )
    >>> clicks.required
    ('id', 'ts', 'user')
    >>> clicks.arrow_schema.field("ts").type
    TimestampType(timestamp[us, tz=UTC])

A schema can also be read from a small JSON or TOML file (see :func:`load_schema`)::

    name = "clicks"
    event_id = "id"
    event_time = "ts"
    [fields]
    id = "string"
    ts = "timestamp"
    user = { type = "int", required = true }
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import re
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa

from modelmill.errors import InputError, NotFoundError, SchemaError

__all__ = ["TYPES", "EventSchema", "Field", "load_schema"]

#: The field types an event schema accepts, with the Arrow type each is stored as.
TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "int": pa.int64(),
    "float": pa.float64(),
    "bool": pa.bool_(),
    "timestamp": pa.timestamp("us", tz="UTC"),
}
_ALIASES = {"str": "string", "integer": "int", "int64": "int", "double": "float", "float64": "float",
            "boolean": "bool", "datetime": "timestamp"}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


@dataclasses.dataclass(frozen=True)
class Field:
    """One typed field of an event; ``type`` is one of :data:`TYPES` (or an alias such as ``"integer"``)."""

    name: str
    type: str
    required: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise SchemaError("field", "a field name must be a letter or '_' then letters, digits or '_'",
                              self.name)
        kind = _ALIASES.get(self.type, self.type)
        if kind not in TYPES:
            raise SchemaError(f"fields.{self.name}.type", f"must be one of {', '.join(TYPES)}", self.type)
        object.__setattr__(self, "type", kind)

    @property
    def arrow_type(self) -> pa.DataType:
        return TYPES[self.type]


@dataclasses.dataclass(frozen=True, kw_only=True)
class EventSchema:
    """The shape of one stream's events. Its ``name`` is also the offline table the events land in.

    The event-id and event-time fields are always required; the event-time field must be a timestamp.
    ``max_event_bytes`` bounds one event's encoded size; larger events go to the dead letters.
    """

    name: str
    fields: tuple[Field, ...]
    event_id: str
    event_time: str
    max_event_bytes: int = 1 << 20

    def __init__(self, *, name: str, fields: Iterable[Field] | Mapping[str, Any], event_id: str,
                 event_time: str, max_event_bytes: int = 1 << 20) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "fields", _fields(fields))
        object.__setattr__(self, "event_id", event_id)
        object.__setattr__(self, "event_time", event_time)
        object.__setattr__(self, "max_event_bytes", max_event_bytes)
        self._check()

    def _check(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise SchemaError("name", "must be a letter or '_' then letters, digits or '_' (it names a table)",
                              self.name)
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise SchemaError("fields", "each field may be declared once", dup)
        by_name = {f.name: f for f in self.fields}
        for role in ("event_id", "event_time"):
            value = getattr(self, role)
            if value not in by_name:
                raise SchemaError(role, f"must name one of the fields ({', '.join(names)})", value)
        if by_name[self.event_time].type != "timestamp":
            raise SchemaError("event_time", "must name a field of type 'timestamp'", self.event_time)
        if by_name[self.event_id].type not in ("string", "int"):
            raise SchemaError("event_id", "must name a field of type 'string' or 'int'", self.event_id)
        if not isinstance(self.max_event_bytes, int) or self.max_event_bytes < 16:
            raise SchemaError("max_event_bytes", "must be an integer of at least 16", self.max_event_bytes)

    @property
    def required(self) -> tuple[str, ...]:
        """Fields an event must carry (non-null): the declared ones plus the id and time fields."""
        return tuple(f.name for f in self.fields if f.required or f.name in (self.event_id, self.event_time))

    @property
    def arrow_schema(self) -> pa.Schema:
        """The Arrow schema events are stored with (every column nullable; required-ness is checked on input)."""
        return pa.schema([pa.field(f.name, f.arrow_type) for f in self.fields])

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise NotFoundError("field", name, f"schema {self.name!r} has {', '.join(f.name for f in self.fields)}")

    def as_dict(self) -> dict[str, Any]:
        """The JSON form :func:`load_schema` reads back."""
        return {"name": self.name, "event_id": self.event_id, "event_time": self.event_time,
                "max_event_bytes": self.max_event_bytes,
                "fields": {f.name: {"type": f.type, "required": f.required} for f in self.fields}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EventSchema:
        """Build a schema from its JSON/TOML form (``fields`` a table of name -> type or {type, required})."""
        if not isinstance(data, Mapping):
            raise SchemaError("schema", "must be a JSON object / TOML table", type(data).__name__)
        for key in ("name", "fields", "event_id", "event_time"):
            if key not in data:
                raise SchemaError(key, "is missing from the schema definition")
        unknown = set(data) - {"name", "fields", "event_id", "event_time", "max_event_bytes"}
        if unknown:
            raise SchemaError(sorted(unknown)[0], "is not a schema key (name, fields, event_id, event_time, "
                              "max_event_bytes)")
        return cls(name=data["name"], fields=data["fields"], event_id=data["event_id"],
                   event_time=data["event_time"], max_event_bytes=int(data.get("max_event_bytes", 1 << 20)))


def _fields(fields: Iterable[Field] | Mapping[str, Any]) -> tuple[Field, ...]:
    if isinstance(fields, Mapping):
        out = []
        for name, spec in fields.items():
            if isinstance(spec, str):
                out.append(Field(name, spec))
            elif isinstance(spec, Mapping) and "type" in spec:
                out.append(Field(name, spec["type"], bool(spec.get("required", False))))
            else:
                raise SchemaError(f"fields.{name}", "must be a type name or a table with 'type' (and 'required')",
                                  spec)
        result = tuple(out)
    else:
        result = tuple(_one_field(f) for f in fields)
    if not result:
        raise SchemaError("fields", "a schema needs at least one field")
    return result


def _one_field(spec: Any) -> Field:
    if isinstance(spec, Field):
        return spec
    if isinstance(spec, Mapping) and "name" in spec and "type" in spec:
        return Field(spec["name"], spec["type"], bool(spec.get("required", False)))
    raise SchemaError("fields", "each field must be a Field or a mapping with 'name' and 'type'", spec)


def load_schema(ref: str | EventSchema) -> EventSchema:
    """Resolve a schema named on the command line.

    ``ref`` is one of: a Python reference ``package.module:attribute``; a ``.json`` or ``.toml``
    file; or the name of a shipped dataset schema (``flights``, ``weather``).

        >>> load_schema("flights").event_id
        'event_id'
        >>> load_schema("modelmill.ingest.datasets:WEATHER").name
        'weather'
    """
    if isinstance(ref, EventSchema):
        return ref
    if not isinstance(ref, str) or not ref:
        raise InputError("schema", "name a schema: 'module:attribute', a .json/.toml file or a dataset", ref)
    path = Path(ref)
    if path.suffix.lower() in (".json", ".toml"):
        if not path.is_file():
            raise NotFoundError("schema file", ref, "check the path")
        text = path.read_text()
        try:
            data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
        except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
            raise SchemaError("schema", f"{ref} is not valid {path.suffix[1:].upper()}: {exc}") from exc
        return EventSchema.from_dict(data)
    if ":" in ref:
        module_name, _, attr = ref.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise NotFoundError("schema module", module_name, f"it could not be imported ({exc})") from exc
        value: Any = module
        for part in attr.split("."):
            value = getattr(value, part, None)
        if callable(value) and not isinstance(value, EventSchema):
            value = value()
        if not isinstance(value, EventSchema):
            raise NotFoundError("schema", ref, f"{module_name} has no EventSchema called {attr!r}")
        return value
    from modelmill.ingest.datasets import SCHEMAS

    if ref in SCHEMAS:
        return SCHEMAS[ref]
    raise NotFoundError("schema", ref, "use 'module:attribute', a .json/.toml file, or one of "
                        + ", ".join(sorted(SCHEMAS)))
