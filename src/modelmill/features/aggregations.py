"""Streaming aggregates kept as per-bucket partials in the online store.

A window of ``w`` is cut into ``n`` buckets of ``w / n``. Each bucket of each
entity holds mergeable partials per column: count, sum, min, max and the
last value with its (event time, event id). An update is applied once per
event id (a seen-marker written in the same atomic step), and every partial
is commutative, so consumers sharing a stream, redelivering events or
racing each other end in the same state as one consumer seeing each event
once. Redis applies a batch in one Lua script (atomic); SQLite in one
``BEGIN IMMEDIATE`` transaction.

Buckets older than ``n`` buckets behind the newest bucket of an entity are
dropped, and an event that old is skipped; both depend only on the set of
events, so the outcome does not depend on arrival order.

A window read at time ``t`` covers the bucket holding ``t`` and the ``n - 1``
before it.

**Sharding.** Every partial belongs to one entity, so the aggregates shard by
entity key: publish each event keyed by :func:`partition_key` (Kafka puts it on
partition :func:`shard_of` ``(key, partitions)``, Kinesis on the shard owning
the key's hash), and each ingestor of a consumer group folds the events of the
entities of its partitions only. N ingestors then write disjoint entities and
end in the state of one ingestor reading everything (docs/concepts/aggregates.md).
"""

from __future__ import annotations

import abc
import math
import sqlite3
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from modelmill.errors import ConfigError, InputError
from modelmill.features.definitions import StreamAggregation
from modelmill.store.kv import KeyValue, RedisKV, SQLiteKV

__all__ = ["AggregateStore", "RedisAggregateStore", "SQLiteAggregateStore", "events_from_batch", "murmur2",
           "open_aggregates", "partition_key", "shard_of"]

STATS = ("c", "s", "mn", "mx", "lt", "li", "lv")

# One event: (event id, ts in µs, entity key, values per column (None for null)); column 0 is the event count.
Event = tuple[str, int, str, tuple[float | None, ...]]
# Per resolution (bucket size in µs, buckets per window).
Resolution = tuple[int, int]


def resolutions(agg: StreamAggregation) -> list[Resolution]:
    n = agg.buckets_per_window
    return [(int(w.total_seconds()) // n * 1_000_000, n) for w in agg.windows]


def entity_key(values: Sequence[Any]) -> str:
    """The string form of an entity's join-key values (``"JFK"``, ``"7|42"``)."""
    if len(values) == 1:
        return str(values[0])
    return "|".join(str(v) for v in values)


def partition_key(agg: StreamAggregation) -> Callable[[bytes], str]:
    """``key(payload)``: the entity key of a JSON event, for a publisher's ``key=`` (``"7"``, ``"7|42"``).

    An event lacking a join key gets ``""``: the aggregation skips it anyway (:func:`events_from_batch`).
    """
    keys = agg.join_keys

    def key(payload: bytes) -> str:
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return ""
        if not isinstance(event, dict):
            return ""
        values = [event.get(k) for k in keys]
        return "" if any(v is None for v in values) else entity_key(values)

    return key


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash (seed 0x9747b28c) of ``data``, as a signed 32-bit integer like the Java client's."""
    m, r = 0x5BD1E995, 24
    length = len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    tail = length % 4
    if tail:
        rest = data[length - tail :]
        if tail == 3:
            h ^= rest[2] << 16
        if tail >= 2:
            h ^= rest[1] << 8
        h ^= rest[0]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def shard_of(entity: str, shards: int) -> int:
    """The partition of ``shards`` that Kafka's default (murmur2) partitioner gives the key ``entity``."""
    if shards < 1:
        raise InputError("shards", "must be >= 1", shards)
    return (murmur2(entity.encode()) & 0x7FFFFFFF) % shards


def events_from_batch(agg: StreamAggregation, batch: pa.Table) -> list[Event]:
    """The events of a micro-batch that this aggregation can use (rows lacking a key, time or id are skipped)."""
    need = [*agg.join_keys, agg.timestamp_field, agg.event_id_field]
    missing = [c for c in need if c not in batch.column_names]
    if missing:
        raise InputError(f"stream {agg.stream!r}", f"batch lacks column(s) {', '.join(missing)} "
                                                   f"needed by stream aggregation {agg.name!r}")
    ts_col = batch.column(agg.timestamp_field)
    if not pa.types.is_timestamp(ts_col.type):
        raise InputError(agg.timestamp_field, f"must be a timestamp column, got {ts_col.type}")
    ts_us = pc.cast(pc.cast(ts_col, pa.timestamp("us", tz=ts_col.type.tz)), pa.int64()).to_pylist()
    ids = batch.column(agg.event_id_field).to_pylist()
    keys = [batch.column(k).to_pylist() for k in agg.join_keys]
    cols = []
    for c in agg.columns[1:]:
        if c not in batch.column_names:
            raise InputError(f"stream {agg.stream!r}", f"batch lacks column {c!r} aggregated by {agg.name!r}")
        cols.append(pc.cast(batch.column(c), pa.float64()).to_pylist())
    out: list[Event] = []
    for i in range(batch.num_rows):
        kv = [k[i] for k in keys]
        if ids[i] is None or ts_us[i] is None or any(v is None for v in kv):
            continue
        vals = tuple(None if (v := col[i]) is None or math.isnan(v) else v for col in cols)
        out.append((str(ids[i]), ts_us[i], entity_key(kv), (1.0, *vals)))
    return out


class Partial:
    """Mergeable partial aggregate of one column."""

    __slots__ = ("c", "li", "lt", "lv", "mn", "mx", "s")

    def __init__(self) -> None:
        self.c = 0.0
        self.s = 0.0
        self.mn: float | None = None
        self.mx: float | None = None
        self.lt: int | None = None
        self.li = ""
        self.lv: float | None = None

    def add(self, value: float, ts: int, eid: str) -> None:
        self.merge(1.0, value, value, value, ts, eid, value)

    def merge(self, c: float, s: float, mn: float | None, mx: float | None, lt: int | None, li: str,
              lv: float | None) -> None:
        self.c += c
        self.s += s
        if mn is not None and (self.mn is None or mn < self.mn):
            self.mn = mn
        if mx is not None and (self.mx is None or mx > self.mx):
            self.mx = mx
        if lt is not None and (self.lt is None or (lt, li) > (self.lt, self.li)):
            self.lt, self.li, self.lv = lt, li, lv

    def value(self, function: str, column_is_count: bool) -> float | int | None:
        if function == "count":
            return int(self.c)
        if function == "sum":
            return self.s
        if function == "mean":
            return self.s / self.c if self.c else None
        if function == "min":
            return self.mn
        if function == "max":
            return self.mx
        return self.lv


def window_values(agg: StreamAggregation, features: Sequence[str],
                  buckets: dict[int, dict[int, dict[str, Partial]]], at_us: int) -> list[Any]:
    """Feature values at ``at_us`` from ``{bucket_us: {bucket: {column: Partial}}}``; None where undefined."""
    out: list[Any] = []
    for feature in features:
        a, window = agg.feature(feature)
        n = agg.buckets_per_window
        b_us = int(window.total_seconds()) // n * 1_000_000
        current = at_us // b_us
        total = Partial()
        col = a.column or ""
        for b, parts in buckets.get(b_us, {}).items():
            if current - n < b <= current and col in parts:
                p = parts[col]
                total.merge(p.c, p.s, p.mn, p.mx, p.lt, p.li, p.lv)
        out.append(total.value(a.function, a.column is None))
    return out


class AggregateStore(abc.ABC):
    """Where partial aggregates live; one per online store."""

    @abc.abstractmethod
    def apply(self, agg: StreamAggregation, events: Sequence[Event]) -> int:
        """Fold events in, once per event id; returns how many were new."""

    @abc.abstractmethod
    def read(self, agg: StreamAggregation, entities: Sequence[str]) -> list[dict[int, dict[int, dict[str, Partial]]] | None]:
        """Per entity, ``{bucket_us: {bucket: {column: Partial}}}``; None for an entity never seen."""

    def values(self, agg: StreamAggregation, entities: Sequence[str], features: Sequence[str],
               at_us: int) -> list[list[Any] | None]:
        # A batch of lookups names the same entity many times (every flight of one carrier): fold its
        # buckets once.
        done: dict[str, list[Any]] = {}
        out: list[list[Any] | None] = []
        for entity, buckets in zip(entities, self.read(agg, entities), strict=True):
            if buckets is None:
                # Never seen is no events in any window: a count of 0 and an undefined mean, exactly what the
                # offline recomputation gives (a NaN count online would be a skew of its own).
                buckets = {}
            values = done.get(entity)
            if values is None:
                values = done[entity] = window_values(agg, features, buckets, at_us)
            out.append(list(values))
        return out

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


def seen_retention_s(agg: StreamAggregation) -> float:
    """How long an event id is remembered: twice the longest window (wall-clock)."""
    return 2 * max(w.total_seconds() for w in agg.windows)


# ---- Redis --------------------------------------------------------------------------------------

# KEYS: the seen-marker of each event, then each (resolution, entity) hash.
# ARGV[1]: JSON {"ttl": ms, "cols": [...], "res": [[n, hash_ttl_ms], ...], "ev": [[seen_i, [[key_i, bucket]...], ts, eid, [v...]]]}
# Values travel as strings so that no precision is lost in Lua's number formatting.
_LUA = r"""
local a = cjson.decode(ARGV[1])
local cols, res, stats = a.cols, a.res, {"c", "s", "mn", "mx", "lt", "li", "lv"}
local maxb = {}
local new = 0
local function getmax(key)
  local m = maxb[key]
  if m == nil then
    m = tonumber(redis.call("HGET", key, "_max") or "") or false
    maxb[key] = m
  end
  return m
end
local function prune(key, n, old, newb)
  if old == false then return end
  if newb - n >= old then
    redis.call("DEL", key)
    return
  end
  for b = old - n + 1, newb - n do
    local f = {}
    for _, c in ipairs(cols) do
      for _, s in ipairs(stats) do f[#f + 1] = b .. ":" .. c .. ":" .. s end
    end
    redis.call("HDEL", key, unpack(f))
  end
end
for _, ev in ipairs(a.ev) do
  if redis.call("SET", KEYS[ev[1]], "1", "NX", "PX", a.ttl) then
    new = new + 1
    local ts, eid, vals = ev[3], ev[4], ev[5]
    local tsn = tonumber(ts)
    for r, kb in ipairs(ev[2]) do
      local key, b, n = KEYS[kb[1]], kb[2], res[r][1]
      local m = getmax(key)
      if m == false or b > m - n then
        if m == false or b > m then
          prune(key, n, m, b)
          redis.call("HSET", key, "_max", b)
          maxb[key] = b
        end
        redis.call("PEXPIRE", key, res[r][2])
        for i, c in ipairs(cols) do
          local v = vals[i]
          if v ~= "" then
            local p = b .. ":" .. c .. ":"
            redis.call("HINCRBYFLOAT", key, p .. "c", "1")
            if i > 1 then
              local x = tonumber(v)
              redis.call("HINCRBYFLOAT", key, p .. "s", v)
              local mn = redis.call("HGET", key, p .. "mn")
              if not mn or x < tonumber(mn) then redis.call("HSET", key, p .. "mn", v) end
              local mx = redis.call("HGET", key, p .. "mx")
              if not mx or x > tonumber(mx) then redis.call("HSET", key, p .. "mx", v) end
              local lt = redis.call("HGET", key, p .. "lt")
              local li = redis.call("HGET", key, p .. "li") or ""
              if not lt or tsn > tonumber(lt) or (tsn == tonumber(lt) and eid > li) then
                redis.call("HSET", key, p .. "lt", ts, p .. "li", eid, p .. "lv", v)
              end
            end
          end
        end
      end
    end
  end
end
return new
"""


class RedisAggregateStore(AggregateStore):
    """Partials in one Redis hash per (aggregation, bucket size, entity); updates by Lua script."""

    def __init__(self, kv: RedisKV, *, namespace: str = "mm:agg:") -> None:
        self.kv = kv
        self.namespace = namespace
        self._script = kv.script(_LUA)

    def _hash_key(self, agg: StreamAggregation, b_us: int, entity: str) -> str:
        return f"{self.kv.prefix}{self.namespace}{agg.name}:{b_us // 1_000_000}:{entity}"

    def apply(self, agg: StreamAggregation, events: Sequence[Event]) -> int:
        if not events:
            return 0
        res = resolutions(agg)
        ttl_ms = int(seen_retention_s(agg) * 1000)
        res_arg = [[n, max(1, 2 * b_us * n // 1000)] for b_us, n in res]
        new = 0
        for start in range(0, len(events), 2000):  # bound the time one script holds Redis
            chunk = events[start : start + 2000]
            keys: list[str] = []
            index: dict[str, int] = {}

            def key_index(key: str, keys: list[str] = keys, index: dict[str, int] = index) -> int:
                i = index.get(key)
                if i is None:
                    keys.append(key)
                    i = index[key] = len(keys)
                return i

            evs = []
            for eid, ts, entity, vals in chunk:
                seen = key_index(f"{self.kv.prefix}{self.namespace}seen:{agg.name}:{eid}")
                kb = [[key_index(self._hash_key(agg, b_us, entity)), ts // b_us] for b_us, _ in res]
                evs.append([seen, kb, str(ts), eid, ["" if v is None else repr(float(v)) for v in vals]])
            arg = orjson.dumps({"ttl": ttl_ms, "cols": list(agg.columns), "res": res_arg, "ev": evs})
            new += int(self._script(keys, [arg]))
        return new

    def read(self, agg: StreamAggregation, entities: Sequence[str]) -> list[dict[int, dict[int, dict[str, Partial]]] | None]:
        res = resolutions(agg)

        def commands(pipe: Any) -> None:
            for entity in entities:
                for b_us, _ in res:
                    pipe.hgetall(self._hash_key(agg, b_us, entity))

        raw = self.kv.pipeline(commands)
        out: list[dict[int, dict[int, dict[str, Partial]]] | None] = []
        i = 0
        for _ in entities:
            found: dict[int, dict[int, dict[str, Partial]]] = {}
            for b_us, _n in res:
                found[b_us] = _parse_hash(raw[i])
                i += 1
            out.append(found if any(raw[i - len(res) : i]) else None)
        return out


def _parse_hash(fields: dict[bytes, bytes]) -> dict[int, dict[str, Partial]]:
    out: dict[int, dict[str, Partial]] = defaultdict(dict)
    for k, v in fields.items():
        name = k.decode()
        if name == "_max":
            continue
        b, col, stat = name.split(":")
        part = out[int(b)].get(col)
        if part is None:
            part = out[int(b)][col] = Partial()
        text = v.decode()
        if stat == "li":
            part.li = text
        elif stat == "lt":
            part.lt = int(float(text))
        else:
            setattr(part, stat, float(text))
    return dict(out)


# ---- SQLite -------------------------------------------------------------------------------------

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS agg_buckets (agg TEXT NOT NULL, res INTEGER NOT NULL, entity TEXT NOT NULL, "
    "bucket INTEGER NOT NULL, col TEXT NOT NULL, c REAL NOT NULL, s REAL NOT NULL, mn REAL, mx REAL, "
    "lt INTEGER, li TEXT NOT NULL DEFAULT '', lv REAL, PRIMARY KEY (agg, res, entity, bucket, col)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS agg_max (agg TEXT NOT NULL, res INTEGER NOT NULL, entity TEXT NOT NULL, "
    "maxb INTEGER NOT NULL, PRIMARY KEY (agg, res, entity)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS agg_seen (agg TEXT NOT NULL, eid TEXT NOT NULL, at REAL NOT NULL, "
    "PRIMARY KEY (agg, eid)) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS agg_seen_at ON agg_seen (agg, at)",  # pruning old ids stays cheap
)

_UPSERT = (
    "INSERT INTO agg_buckets (agg, res, entity, bucket, col, c, s, mn, mx, lt, li, lv) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (agg, res, entity, bucket, col) DO UPDATE SET "
    "c = c + excluded.c, s = s + excluded.s, "
    "mn = CASE WHEN mn IS NULL OR excluded.mn < mn THEN excluded.mn ELSE mn END, "
    "mx = CASE WHEN mx IS NULL OR excluded.mx > mx THEN excluded.mx ELSE mx END, "
    "lv = CASE WHEN lt IS NULL OR excluded.lt > lt OR (excluded.lt = lt AND excluded.li > li) THEN excluded.lv ELSE lv END, "
    "li = CASE WHEN lt IS NULL OR excluded.lt > lt OR (excluded.lt = lt AND excluded.li > li) THEN excluded.li ELSE li END, "
    "lt = CASE WHEN lt IS NULL OR excluded.lt > lt OR (excluded.lt = lt AND excluded.li > li) THEN excluded.lt ELSE lt END"
)


class SQLiteAggregateStore(AggregateStore):
    """Partials in tables of the online SQLite file, on its connections; a batch is one transaction."""

    def __init__(self, kv: SQLiteKV) -> None:
        self.kv = kv
        self._ready = False

    def _conn(self) -> sqlite3.Connection:
        conn = self.kv.connection()
        if not self._ready:  # the tables live in the file: created once, seen by every connection
            for stmt in _SCHEMA:
                conn.execute(stmt)
            self._ready = True
        return conn

    def apply(self, agg: StreamAggregation, events: Sequence[Event]) -> int:
        if not events:
            return 0
        self._conn()
        res = resolutions(agg)
        cols = agg.columns
        with self.kv.transaction() as conn:  # one writer at a time: concurrent consumers serialise here
            fresh = self._dedupe(conn, agg, events)
            for b_us, n in res:
                self._fold(conn, agg, b_us, n, cols, fresh)
        return len(fresh)

    def _dedupe(self, conn: sqlite3.Connection, agg: StreamAggregation, events: Sequence[Event]) -> list[Event]:
        unique: dict[str, Event] = {}
        for ev in events:
            unique.setdefault(ev[0], ev)
        ids = list(unique)
        seen: set[str] = set()
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            seen.update(r[0] for r in conn.execute(
                f"SELECT eid FROM agg_seen WHERE agg = ? AND eid IN ({marks})", [agg.name, *chunk]))
        now = time.time()
        fresh = [ev for eid, ev in unique.items() if eid not in seen]
        conn.executemany("INSERT INTO agg_seen (agg, eid, at) VALUES (?, ?, ?)", [(agg.name, ev[0], now) for ev in fresh])
        conn.execute("DELETE FROM agg_seen WHERE agg = ? AND at < ?", (agg.name, now - seen_retention_s(agg)))
        return fresh

    def _fold(self, conn: sqlite3.Connection, agg: StreamAggregation, b_us: int, n: int, cols: Sequence[str],
              events: Sequence[Event]) -> None:
        res = b_us // 1_000_000
        by_entity: dict[str, list[Event]] = defaultdict(list)
        for ev in events:
            by_entity[ev[2]].append(ev)
        for entity, evs in by_entity.items():
            row = conn.execute("SELECT maxb FROM agg_max WHERE agg = ? AND res = ? AND entity = ?",
                               (agg.name, res, entity)).fetchone()
            old = None if row is None else int(row[0])
            newmax = max(ev[1] // b_us for ev in evs)
            if old is not None:
                newmax = max(newmax, old)
            conn.execute("INSERT INTO agg_max (agg, res, entity, maxb) VALUES (?, ?, ?, ?) "
                         "ON CONFLICT (agg, res, entity) DO UPDATE SET maxb = excluded.maxb",
                         (agg.name, res, entity, newmax))
            conn.execute("DELETE FROM agg_buckets WHERE agg = ? AND res = ? AND entity = ? AND bucket <= ?",
                         (agg.name, res, entity, newmax - n))
            parts: dict[tuple[int, str], Partial] = {}
            for eid, ts, _, vals in evs:
                b = ts // b_us
                if b <= newmax - n:
                    continue
                for c, v in zip(cols, vals, strict=True):
                    if v is not None:
                        parts.setdefault((b, c), Partial()).add(v, ts, eid)
            conn.executemany(_UPSERT, [(agg.name, res, entity, b, c, p.c, p.s if c else 0.0, p.mn if c else None,
                                        p.mx if c else None, p.lt if c else None, p.li if c else "",
                                        p.lv if c else None)
                                       for (b, c), p in parts.items()])

    def read(self, agg: StreamAggregation, entities: Sequence[str]) -> list[dict[int, dict[int, dict[str, Partial]]] | None]:
        conn = self._conn()
        found: dict[str, dict[int, dict[int, dict[str, Partial]]]] = {}
        uniq = list(dict.fromkeys(entities))
        for i in range(0, len(uniq), 500):
            chunk = uniq[i : i + 500]
            marks = ",".join("?" * len(chunk))
            ress = [b_us // 1_000_000 for b_us, _ in resolutions(agg)]
            rmarks = ",".join("?" * len(ress))
            for res, entity, bucket, col, c, s, mn, mx, lt, li, lv in conn.execute(
                "SELECT res, entity, bucket, col, c, s, mn, mx, lt, li, lv FROM agg_buckets "
                f"WHERE agg = ? AND res IN ({rmarks}) AND entity IN ({marks})", [agg.name, *ress, *chunk]
            ):
                p = Partial()
                p.merge(c, s, mn, mx, lt, li, lv)
                found.setdefault(entity, {}).setdefault(res * 1_000_000, {}).setdefault(bucket, {})[col] = p
        return [found.get(e) for e in entities]


def open_aggregates(kv: KeyValue) -> AggregateStore:
    """The aggregate store living beside an online key-value store."""
    if isinstance(kv, RedisKV):
        return RedisAggregateStore(kv)
    if isinstance(kv, SQLiteKV):
        return SQLiteAggregateStore(kv)
    raise ConfigError("online", kv.url, "'sqlite:///PATH' or 'redis://HOST:PORT/DB' for stream aggregations")


def brute_force(agg: StreamAggregation, events: Iterable[Event], entity: str, feature: str, at_us: int) -> Any:
    """Reference value of one feature from raw events (used by the tests and the skew check)."""
    a, window = agg.feature(feature)
    n = agg.buckets_per_window
    b_us = int(window.total_seconds()) // n * 1_000_000
    current = at_us // b_us
    col = agg.columns.index(a.column or "")
    total = Partial()
    seen: set[str] = set()
    for eid, ts, ent, vals in events:
        if ent != entity or eid in seen:
            continue
        seen.add(eid)
        if current - n < ts // b_us <= current and ts <= at_us and vals[col] is not None:
            total.add(vals[col], ts, eid)  # type: ignore[arg-type]
    return total.value(a.function, a.column is None)
