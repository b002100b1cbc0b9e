"""Online feature lookup: one packed value per entity per view in a key-value store.

Layout: key ``mm:fv:{view}:{entity}`` holds ``orjson({"__ts": event_us, feature: value, ...})``
(null features are left out), so 20 features of one entity are one GET and
100 entities are one MGET. Stream aggregations are read from their partial
buckets (:mod:`modelmill.features.aggregations`).

A read plan is built once per feature list — key prefixes, output column
indexes, ttl in µs — and cached by :class:`~modelmill.features.FeatureStore`.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson

from modelmill.errors import InputError
from modelmill.features.aggregations import AggregateStore, entity_key
from modelmill.features.definitions import FeatureView, StreamAggregation
from modelmill.store.kv import KeyValue

__all__ = ["OnlineResponse", "ReadPlan", "Status", "pack", "view_prefix"]



class Status(enum.IntEnum):
    """Status codes of :meth:`FeatureStore.online_vector` (``get_online_features`` uses the lower-case names)."""

    PRESENT = 0
    MISSING = 1
    EXPIRED = 2


PRESENT, MISSING, EXPIRED = int(Status.PRESENT), int(Status.MISSING), int(Status.EXPIRED)
NAMESPACE = "mm:fv:"
_NAN = math.nan
_loads = orjson.loads


def view_prefix(view: str) -> str:
    return f"{NAMESPACE}{view}:"


def pack(ts_us: int, features: Mapping[str, Any]) -> bytes:
    """The stored value of one entity of one view."""
    out: dict[str, Any] = {"__ts": ts_us}
    for k, v in features.items():
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            out[k] = v
    return orjson.dumps(out)


def _row_keys(rows: Sequence[Mapping[str, Any]], join_keys: tuple[str, ...], prefix: str) -> list[str]:
    try:
        if len(join_keys) == 1:
            k = join_keys[0]
            return [f"{prefix}{r[k]}" for r in rows]
        return [prefix + entity_key([r[k] for k in join_keys]) for r in rows]
    except KeyError as exc:
        raise InputError("entity_rows", f"every row needs the join key {exc.args[0]!r}") from None
    except TypeError:
        raise InputError("entity_rows", "must be a list of dicts of join-key values", rows) from None


@dataclasses.dataclass(frozen=True)
class _ViewPart:
    prefix: str
    join_keys: tuple[str, ...]
    ttl_us: int | None
    names: tuple[str, ...]
    columns: tuple[int, ...]
    contiguous: slice | None


@dataclasses.dataclass(frozen=True)
class _AggPart:
    agg: StreamAggregation
    names: tuple[str, ...]
    columns: tuple[int, ...]


class ReadPlan:
    """Everything about a feature list that does not depend on the entities asked for."""

    def __init__(self, refs: Sequence[str], resolved: Sequence[tuple[FeatureView | StreamAggregation, str]]) -> None:
        self.refs = tuple(refs)
        groups: dict[str, list[tuple[int, FeatureView | StreamAggregation, str]]] = {}
        for i, (defn, feature) in enumerate(resolved):
            groups.setdefault(defn.name, []).append((i, defn, feature))
        self.views: list[_ViewPart] = []
        self.aggs: list[_AggPart] = []
        self.numeric = True
        for items in groups.values():
            defn = items[0][1]
            cols = tuple(i for i, _, _ in items)
            names = tuple(f for _, _, f in items)
            if any(defn.dtype(f) not in ("float64", "float32", "int64", "int32", "bool") for f in names):
                self.numeric = False
            if isinstance(defn, FeatureView):
                ttl = None if defn.ttl is None else int(defn.ttl.total_seconds() * 1_000_000)
                contiguous = slice(cols[0], cols[-1] + 1) if cols == tuple(range(cols[0], cols[-1] + 1)) else None
                self.views.append(_ViewPart(view_prefix(defn.name), defn.join_keys, ttl, names, cols, contiguous))
            else:
                self.aggs.append(_AggPart(defn, names, cols))
        only = self.views[0] if len(self.views) == 1 and not self.aggs else None
        self._single = only if only is not None and only.columns == tuple(range(len(self.refs))) else None

    def _fetch(self, kv: KeyValue, rows: Sequence[Mapping[str, Any]]) -> list[bytes | None]:
        keys: list[str] = []
        for part in self.views:
            keys.extend(_row_keys(rows, part.join_keys, part.prefix))
        if not keys:
            return []
        if len(keys) == 1:
            return [kv.get(keys[0])]
        return kv.mget(keys)

    def vector(self, kv: KeyValue, aggregates: AggregateStore | None, rows: Sequence[Mapping[str, Any]],
               at_us: int) -> tuple[np.ndarray, np.ndarray]:
        """Values as float64 ``[n, k]`` (NaN where not present) and status codes ``[n, k]`` (int8)."""
        n, k = len(rows), len(self.refs)
        raws = self._fetch(kv, rows)
        if self._single is not None:
            return self._vector_single(self._single, raws, at_us)
        out = np.full((n, k), _NAN)
        status = np.full((n, k), MISSING, dtype=np.int8)
        off = 0
        for part in self.views:
            names = part.names
            width = len(names)
            block: list[list[Any]] = []
            row_status = np.full(n, MISSING, dtype=np.int8)
            missing_row = [_NAN] * width
            ttl = part.ttl_us
            for i in range(n):
                raw = raws[off + i]
                if raw is None:
                    block.append(missing_row)
                    continue
                d = _loads(raw)
                if ttl is not None and at_us - d["__ts"] > ttl:
                    row_status[i] = EXPIRED
                    block.append(missing_row)
                    continue
                row_status[i] = PRESENT
                block.append([d.get(name, _NAN) for name in names])
            off += n
            values = np.array(block, dtype=np.float64).reshape(n, width)
            codes = np.where(np.isnan(values) & (row_status == PRESENT)[:, None], MISSING, row_status[:, None])
            if part.contiguous is not None:
                out[:, part.contiguous] = values
                status[:, part.contiguous] = codes
            else:
                out[:, part.columns] = values
                status[:, part.columns] = codes
        for agg_part in self.aggs:
            assert aggregates is not None
            entities = [entity_key([r[j] for j in agg_part.agg.join_keys]) for r in rows]
            for i, vals in enumerate(aggregates.values(agg_part.agg, entities, agg_part.names, at_us)):
                if vals is None:
                    continue
                for j, v in zip(agg_part.columns, vals, strict=True):
                    if v is not None:
                        out[i, j] = v
                        status[i, j] = PRESENT
        return out, status

    def _vector_single(self, part: _ViewPart, raws: list[bytes | None], at_us: int) -> tuple[np.ndarray, np.ndarray]:
        """The common serving case, one view asked for in full or in part: three numpy calls in all."""
        names = part.names
        ttl = part.ttl_us
        missing_row = [_NAN] * len(names)
        block: list[list[Any]] = []
        expired: list[int] = []
        for i, raw in enumerate(raws):
            if raw is None:
                block.append(missing_row)
                continue
            d = _loads(raw)
            if ttl is not None and at_us - d["__ts"] > ttl:
                expired.append(i)
                block.append(missing_row)
                continue
            get = d.get
            block.append([get(name, _NAN) for name in names])
        values = np.array(block, dtype=np.float64).reshape(len(raws), len(names))
        status = np.isnan(values).view(np.int8)  # False/True are PRESENT (0) / MISSING (1)
        if expired:
            status[expired] = EXPIRED
        return values, status

    def response(self, kv: KeyValue, aggregates: AggregateStore | None, rows: Sequence[Mapping[str, Any]],
                 at_us: int) -> OnlineResponse:
        n, k = len(rows), len(self.refs)
        values: list[list[Any]] = [[None] * k for _ in range(n)]
        statuses: list[list[str]] = [["missing"] * k for _ in range(n)]
        stamps: list[list[datetime | None]] = [[None] * k for _ in range(n)]
        raws = self._fetch(kv, rows)
        off = 0
        for part in self.views:
            for i in range(n):
                raw = raws[off + i]
                if raw is None:
                    continue
                d = _loads(raw)
                ts = d["__ts"]
                when = datetime.fromtimestamp(ts / 1_000_000, tz=UTC)
                expired = part.ttl_us is not None and at_us - ts > part.ttl_us
                for name, j in zip(part.names, part.columns, strict=True):
                    stamps[i][j] = when
                    if expired:
                        statuses[i][j] = "expired"
                    elif name in d:
                        values[i][j] = d[name]
                        statuses[i][j] = "present"
            off += n
        for agg_part in self.aggs:
            assert aggregates is not None
            entities = [entity_key([r[j] for j in agg_part.agg.join_keys]) for r in rows]
            at = datetime.fromtimestamp(at_us / 1_000_000, tz=UTC)
            for i, vals in enumerate(aggregates.values(agg_part.agg, entities, agg_part.names, at_us)):
                if vals is None:
                    continue
                for j, v in zip(agg_part.columns, vals, strict=True):
                    stamps[i][j] = at
                    if v is not None:
                        values[i][j] = v
                        statuses[i][j] = "present"
        return OnlineResponse(self.refs, values, statuses, stamps)


@dataclasses.dataclass(frozen=True)
class OnlineResponse:
    """Per entity row: the value, status (present/missing/expired) and event time of each feature."""

    features: tuple[str, ...]
    values: list[list[Any]]
    statuses: list[list[str]]
    timestamps: list[list[datetime | None]]

    def rows(self) -> list[dict[str, Any]]:
        """One ``{ref: value}`` dict per entity row."""
        return [dict(zip(self.features, v, strict=True)) for v in self.values]

    def to_dict(self) -> dict[str, Any]:
        """Column-oriented and JSON-ready: ``{"features": [...], "values": {ref: [...]}, ...}``."""
        cols = range(len(self.features))
        return {
            "features": list(self.features),
            "values": {f: [row[j] for row in self.values] for j, f in zip(cols, self.features, strict=True)},
            "statuses": {f: [row[j] for row in self.statuses] for j, f in zip(cols, self.features, strict=True)},
            "timestamps": {f: [_iso(row[j]) for row in self.timestamps] for j, f in zip(cols, self.features, strict=True)},
        }


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()
