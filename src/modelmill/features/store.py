"""The feature store: versioned definitions, training sets, materialisation and online lookups.

    >>> import tempfile, datetime as dt, pandas as pd, pyarrow as pa
    >>> from modelmill.config import Settings
    >>> from modelmill.project import Project
    >>> from modelmill.features import Entity, FeatureView, Field, FeatureStore
    >>> project = Project(Settings.defaults(home=tempfile.mkdtemp()))
    >>> t = [dt.datetime(2013, 1, 1, h, tzinfo=dt.UTC) for h in (5, 6)]
    >>> _ = project.offline.write("weather", pa.table({"origin": ["JFK", "JFK"], "time_hour": t,
    ...                                                 "temp": [39.0, 41.0]}), time_column="time_hour")
    >>> airport = Entity(name="airport", join_keys=["origin"])
    >>> weather = FeatureView(name="weather", entities=[airport], source="weather", timestamp_field="time_hour",
    ...                       ttl=dt.timedelta(hours=2), fields=[Field("temp", "float64")])
    >>> fs = FeatureStore(project)
    >>> [r.version for r in fs.apply([airport, weather])]
    [1, 1]
    >>> rows = pd.DataFrame({"origin": ["JFK", "JFK"], "event_timestamp": [t[1], t[0] - dt.timedelta(hours=1)]})
    >>> fs.get_training_set(rows, ["weather:temp"])["temp"].tolist()
    [41.0, nan]
    >>> _ = fs.materialize(t[0], t[1])
    >>> fs.online_vector([{"origin": "JFK"}], ["weather:temp"], at=t[1])[0].tolist()
    [[41.0]]
    >>> project.close()
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import sqlalchemy as sa

from modelmill.config import mask_url
from modelmill.errors import ConfigError, ConflictError, InputError, NotFoundError
from modelmill.features import offline as off
from modelmill.features.aggregations import AggregateStore, entity_key, events_from_batch, open_aggregates
from modelmill.features.definitions import (
    Definition,
    Entity,
    FeatureService,
    FeatureView,
    StreamAggregation,
    collect,
    fingerprint,
    from_spec,
    kind_of,
    parse_ref,
    to_spec,
)
from modelmill.features.online import OnlineResponse, ReadPlan, pack, view_prefix
from modelmill.project import Project
from modelmill.store.kv import KeyValue
from modelmill.store.tables.features import feature_definitions, feature_materializations

CLOCK_KEY = "mm:clock"
CLOCK_REFRESH_S = 0.1

__all__ = ["AggregationProcessor", "ApplyResult", "DefinitionInfo", "FeatureStore", "MaterializeResult", "to_us"]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def to_us(value: datetime | pd.Timestamp | str | int | float, field: str = "time") -> int:
    """Microseconds since the epoch; a naive datetime is taken as UTC, an int/float as epoch seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value * 1_000_000)
    if isinstance(value, datetime) and not isinstance(value, pd.Timestamp):  # the hot path: exact, no pandas
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return (value - EPOCH) // _MICROSECOND
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError) as exc:
        raise InputError(field, "must be a datetime or an ISO 8601 time", value) from exc
    if ts is pd.NaT:
        raise InputError(field, "must be a datetime or an ISO 8601 time", value)
    if ts.tzinfo is None:
        ts = ts.tz_localize("UTC")
    return int(ts.value // 1000)


def _utc(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1_000_000, tz=UTC)


@dataclasses.dataclass(frozen=True)
class ApplyResult:
    kind: str
    name: str
    version: int
    changed: bool


@dataclasses.dataclass(frozen=True)
class DefinitionInfo:
    kind: str
    name: str
    version: int
    created_at: float
    actor: str
    spec: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class MaterializeResult:
    view: str
    start: datetime
    end: datetime
    rows: int
    seconds: float


class _Registry:
    """The current version of every definition, parsed once."""

    def __init__(self, rows: Iterable[Any]) -> None:
        self.defs: dict[tuple[str, str], Definition] = {}
        self.info: dict[tuple[str, str], DefinitionInfo] = {}
        for row in rows:
            key = (row.kind, row.name)
            if key not in self.info or row.version > self.info[key].version:
                self.info[key] = DefinitionInfo(row.kind, row.name, row.version, row.created_at, row.actor, row.spec)
        for key, info in self.info.items():
            self.defs[key] = from_spec(info.spec)

    def source(self, name: str) -> FeatureView | StreamAggregation | None:
        for kind in ("feature_view", "stream_aggregation"):
            d = self.defs.get((kind, name))
            if d is not None:
                return d  # type: ignore[return-value]
        return None


class FeatureStore:
    """Feature definitions, offline training sets and online lookups of one project.

    ``online`` overrides the project's online key-value store (tests use a
    prefixed :class:`~modelmill.store.RedisKV` for isolation).
    """

    def __init__(self, project: Project, *, online: KeyValue | None = None, actor: str = "api") -> None:
        self.project = project
        self._online = online
        self.actor = actor
        self._registry: _Registry | None = None
        self._plans: dict[tuple[str, ...], ReadPlan] = {}
        self._aggregates: AggregateStore | None = None
        self._clock_cache: tuple[float, int] = (0.0, 0)

    # ---- the clock ttl and windows are judged by ------------------------------------------------

    @property
    def clock(self) -> str:
        """``"wall"`` (default): online reads are judged at the current time. ``"event"``: at the newest
        event time this online store has seen (its watermark), for replays of past data.
        Set by ``[features] clock`` in modelmill.toml."""
        value = self.project.settings.section("features").get("clock", "wall")
        if value not in ("wall", "event"):
            raise ConfigError("features.clock", value, "'wall' or 'event'")
        return str(value)

    def watermark(self) -> int | None:
        """The newest event time (µs) materialised or aggregated into this online store, if any."""
        raw = self.online.get(CLOCK_KEY)
        return int(raw) if raw else None

    def advance_watermark(self, ts_us: int) -> None:
        """Move the watermark forward to ``ts_us`` (never back)."""
        current = self.watermark()
        if current is None or ts_us > current:
            self.set_watermark(ts_us)

    def set_watermark(self, ts_us: int | None) -> None:
        """Put the watermark at ``ts_us``, back as well as forward; ``None`` forgets it (until the next
        materialisation or aggregated event sets it again). The way out of a watermark set too far ahead."""
        if ts_us is None:
            self.online.delete(CLOCK_KEY)
        else:
            self.online.set(CLOCK_KEY, str(int(ts_us)).encode())
        self._clock_cache = (0.0, 0)

    def newest_event_us(self, views: Sequence[str] | None = None) -> int | None:
        """The newest event time (µs) in the offline sources of ``views`` (default: every feature view)."""
        found = [t for view in self._views(views) if (t := self._newest_in(view)) is not None]
        return max(found) if found else None

    def _newest_in(self, view: FeatureView) -> int | None:
        ts = f"epoch_us({off.ident(view.timestamp_field)})"
        source: str | None
        if view.partitioned_by_timestamp:  # only the newest event_date folder can hold the newest event
            offline = self.project.offline
            root = offline.table_path(view.source)
            folders = sorted(str(p).rstrip("/").rsplit("/", 1)[-1] for p in offline.fs.ls(root, detail=False)
                             if str(p).rstrip("/").rsplit("/", 1)[-1].startswith("event_date=")
                             ) if offline.fs.exists(root) else []
            source = (f"read_parquet({off.quote(f'{root}/{folders[-1]}/*.parquet')}, union_by_name = true)"
                      if folders else None)
        else:
            try:
                source = off.source_sql(view.source, self.project.offline)
            except NotFoundError:
                source = None
        if source is None:
            return None
        con = off.connect(self.duckdb_settings())
        try:
            rows = con.sql(f"SELECT max({ts}) FROM {source}").fetchall()
        finally:
            con.close()
        return None if not rows or rows[0][0] is None else int(rows[0][0])

    def default_end_us(self, view: FeatureView) -> int | None:
        """Where a materialisation without an end stops: now under the wall clock; under the event clock the
        newest event time of the view's source (None: it has none), so the watermark never runs ahead of
        the data and expires every online read."""
        if self.clock == "wall":
            return time.time_ns() // 1000
        return self._newest_in(view)

    def now_us(self, *, fresh: bool = False) -> int:
        """The time online reads are judged at when the caller gives none (see :attr:`clock`).

        Under the event clock the watermark is re-read at most every ``CLOCK_REFRESH_S`` unless ``fresh``:
        serving asks for it fresh once per lookup batch, so the time it logs is the one the values came from.
        """
        if self.clock == "wall":
            return time.time_ns() // 1000
        checked, value = self._clock_cache
        if fresh or time.monotonic() - checked > CLOCK_REFRESH_S:
            value = self.watermark() or time.time_ns() // 1000
            self._clock_cache = (time.monotonic(), value)
        return value

    def __repr__(self) -> str:
        return f"FeatureStore({self.project!r})"

    # ---- definitions ----------------------------------------------------------------------------

    @property
    def online(self) -> KeyValue:
        return self._online if self._online is not None else self.project.online

    @property
    def aggregates(self) -> AggregateStore:
        if self._aggregates is None:
            self._aggregates = open_aggregates(self.online)
        return self._aggregates

    def refresh(self) -> None:
        """Forget cached definitions and read plans (another process may have applied new versions)."""
        self._registry = None
        self._plans.clear()

    def _reg(self) -> _Registry:
        if self._registry is None:
            with self.project.db.begin() as conn:
                rows = conn.execute(sa.select(feature_definitions)).fetchall()
            self._registry = _Registry(rows)
        return self._registry

    def apply(self, objects: Iterable[object], *, actor: str | None = None) -> list[ApplyResult]:
        """Store definitions; a changed definition gets a new version, an unchanged one keeps its version.

        Entities used by views are applied with them. Feature services must
        name features of views applied now or before.
        """
        explicit = collect(objects)
        reg = self._reg()
        self._validate(explicit, reg)
        implied = [e for d in explicit if isinstance(d, FeatureView | StreamAggregation) for e in d.entities]
        defs = collect(dict.fromkeys([*explicit, *implied]))
        results: list[ApplyResult] = []
        now = time.time()
        who = actor or self.actor
        try:
            with self.project.db.begin() as conn:
                for d in defs:
                    kind = kind_of(d)
                    spec = to_spec(d)
                    fp = fingerprint(spec)
                    last = conn.execute(
                        sa.select(feature_definitions.c.version, feature_definitions.c.fingerprint)
                        .where(feature_definitions.c.kind == kind, feature_definitions.c.name == d.name)
                        .order_by(feature_definitions.c.version.desc()).limit(1)
                    ).first()
                    if last is not None and last.fingerprint == fp:
                        results.append(ApplyResult(kind, d.name, last.version, False))
                        continue
                    version = 1 if last is None else last.version + 1
                    conn.execute(feature_definitions.insert().values(
                        kind=kind, name=d.name, version=version, spec=spec, fingerprint=fp, created_at=now, actor=who))
                    results.append(ApplyResult(kind, d.name, version, True))
                changed = [f"{r.kind}:{r.name}@{r.version}" for r in results if r.changed]
                if changed:
                    self.project.db.audit(conn, actor=who, action="features.apply", subject="features",
                                          detail={"changed": changed})
        except sa.exc.IntegrityError as exc:
            raise ConflictError("another process applied feature definitions at the same time; apply again",
                                names=[d.name for d in defs]) from exc
        self.refresh()
        return results

    def _validate(self, defs: Sequence[Definition], reg: _Registry) -> None:
        seen: dict[tuple[str, str], Definition] = {}
        for d in defs:
            key = (kind_of(d), d.name)
            if key in seen and seen[key] != d:
                raise ConflictError(f"two different definitions of {key[0]} {d.name!r} in one apply", name=d.name)
            seen[key] = d
        # Entities named by a view must match the stored ones unless the change is applied explicitly.
        entities = {n: e for (k, n), e in reg.defs.items() if k == "entity"}
        entities.update({n: e for (k, n), e in seen.items() if k == "entity"})
        sources: dict[str, Definition] = {n: d for (k, n), d in reg.defs.items() if k in ("feature_view", "stream_aggregation")}
        for (k, n), d in seen.items():
            if k in ("feature_view", "stream_aggregation"):
                other = sources.get(n)
                if other is not None and kind_of(other) != k:
                    raise ConflictError(f"{n!r} is already a {kind_of(other)}; feature views and stream "
                                        "aggregations share one namespace", name=n)
                sources[n] = d
                for e in d.entities:  # type: ignore[union-attr]
                    if entities.setdefault(e.name, e) != e:
                        raise ConflictError(f"entity {e.name!r} used by {n!r} differs from the entity applied "
                                            "with that name; apply the entity change too", name=e.name)
        for (k, n), d in seen.items():
            if k == "feature_service":
                assert isinstance(d, FeatureService)
                for ref in d.features:
                    view, feature = parse_ref(ref)
                    src = sources.get(view)
                    if src is None:
                        raise NotFoundError("feature view", view, f"feature service {n!r} refers to {ref!r}")
                    if feature not in src.feature_names:  # type: ignore[union-attr]
                        raise InputError(f"feature service {n!r}", f"{view!r} has no feature {feature!r}", ref)

    def definitions(self) -> list[DefinitionInfo]:
        """The current version of every definition, by kind then name."""
        order = {"entity": 0, "feature_view": 1, "stream_aggregation": 2, "feature_service": 3}
        return sorted(self._reg().info.values(), key=lambda i: (order.get(i.kind, 9), i.name))

    def history(self, kind: str, name: str) -> list[DefinitionInfo]:
        """Every stored version of one definition, oldest first."""
        t = feature_definitions
        with self.project.db.begin() as conn:
            rows = conn.execute(sa.select(t).where(t.c.kind == kind, t.c.name == name).order_by(t.c.version)).fetchall()
        if not rows:
            raise NotFoundError(kind.replace("_", " "), name)
        return [DefinitionInfo(r.kind, r.name, r.version, r.created_at, r.actor, r.spec) for r in rows]

    def _get(self, kind: str, name: str) -> Definition:
        d = self._reg().defs.get((kind, name))
        if d is None:
            raise NotFoundError(kind.replace("_", " "), name, "apply it first: modelmill features apply FILE.py")
        return d

    def entity(self, name: str) -> Entity:
        return self._get("entity", name)  # type: ignore[return-value]

    def feature_view(self, name: str) -> FeatureView:
        return self._get("feature_view", name)  # type: ignore[return-value]

    def stream_aggregation(self, name: str) -> StreamAggregation:
        return self._get("stream_aggregation", name)  # type: ignore[return-value]

    def feature_service(self, name: str) -> FeatureService:
        return self._get("feature_service", name)  # type: ignore[return-value]

    def refs(self, features: Sequence[str] | FeatureService | str) -> tuple[str, ...]:
        """Feature references from a list of refs, a FeatureService or a service name."""
        if isinstance(features, FeatureService):
            return features.features
        if isinstance(features, str):
            if ":" in features:
                return (features,)
            return self.feature_service(features).features
        refs = tuple(features)
        if not refs:
            raise InputError("features", "name at least one 'view:feature'")
        return refs

    def _resolve(self, refs: Sequence[str]) -> list[tuple[FeatureView | StreamAggregation, str]]:
        reg = self._reg()
        out = []
        for ref in refs:
            view, feature = parse_ref(ref)
            src = reg.source(view)
            if src is None:
                raise NotFoundError("feature view", view, f"requested as {ref!r}; see modelmill features list")
            if feature not in src.feature_names:
                raise InputError("features", f"{view!r} has no feature {feature!r} "
                                             f"(it has {', '.join(src.feature_names)})", ref)
            out.append((src, feature))
        if len(set(refs)) != len(refs):
            raise InputError("features", "lists a feature twice", list(refs))
        return out

    # ---- offline --------------------------------------------------------------------------------

    def duckdb_settings(self) -> off.DuckDBSettings:
        section = self.project.settings.section("features")
        temp = section.get("temp_directory") or str(self.project.settings.home / "tmp" / "duckdb")
        return off.DuckDBSettings(temp_directory=str(temp), memory_limit=section.get("memory_limit"),
                                  threads=section.get("threads"))

    def get_training_set(
        self,
        entity_df: pd.DataFrame | pa.Table | str,
        features: Sequence[str] | FeatureService | str,
        *,
        timestamp_column: str = "event_timestamp",
        full_feature_names: bool = False,
        output: str | None = None,
        as_arrow: bool = False,
    ) -> Any:
        """Point-in-time correct features for every entity row, in the rows' order.

        ``entity_df`` (a DataFrame, an Arrow table or a Parquet path) has the
        join keys and ``timestamp_column``. Each feature is the latest value at
        or before the row's time and within the view's ttl, else null; no row
        is dropped. Returns a DataFrame (Arrow with ``as_arrow``), or writes
        Parquet to ``output`` and returns that path (for frames past memory).
        """
        refs = self.refs(features)
        resolved = self._resolve(refs)
        groups: dict[str, list[tuple[str, str]]] = {}
        defs: dict[str, FeatureView | StreamAggregation] = {}
        names: list[str] = []
        for src, feature in resolved:
            column = f"{src.name}__{feature}" if full_feature_names else feature
            names.append(column)
            groups.setdefault(src.name, []).append((feature, column))
            defs[src.name] = src
        if len(set(names)) != len(names):
            raise InputError("features", "two views have features of the same name; pass full_feature_names=True",
                             names)
        requests = [off.ViewRequest(defs[v], tuple(f for f, _ in items), tuple(c for _, c in items))
                    for v, items in groups.items()]
        # the store first: opening it registers its filesystem (s3://...) for the connections made after it;
        # a connection made before would have DuckDB try to install httpfs for the view's source instead
        offline = self.project.offline
        con = off.connect(self.duckdb_settings())
        try:
            result = off.training_set(con, offline, entity_df, requests,
                                      timestamp_column=timestamp_column, output=output)
        finally:
            con.close()
        if isinstance(result, str) or as_arrow:
            return result
        keep = [c for c in result.column_names if c not in names] + names
        return result.select(keep).to_pandas()

    # ---- materialisation ------------------------------------------------------------------------

    def _store_id(self) -> str:
        kv = self.online
        prefix = getattr(kv, "prefix", "")
        return mask_url(kv.url) + (f"#{prefix}" if prefix else "")

    def _views(self, views: Sequence[str] | None) -> list[FeatureView]:
        if views is None:
            return [d for (k, _), d in sorted(self._reg().defs.items()) if k == "feature_view"]  # type: ignore[misc]
        return [self.feature_view(v) for v in views]

    def materialize(self, start: Any, end: Any = None, *, views: Sequence[str] | None = None,
                    progress: Any = None) -> list[MaterializeResult]:
        """Load the latest value per entity with event time in [start, end] into the online store.

        A value already online with a later event time is kept, so ranges can
        be loaded in any order. Without ``end``, each view stops at :meth:`default_end_us`.
        """
        start_us = to_us(start, "start")
        given = to_us(end, "end") if end is not None else None
        if given is not None and given < start_us:
            raise InputError("end", "is before start", str(end))
        results = []
        for view in self._views(views):
            end_us = given if given is not None else self.default_end_us(view)
            if end_us is None or end_us < start_us:
                continue  # the event clock, and no event in the source at or after start
            began = time.perf_counter()
            rows = self._materialize_view(view, start_us, end_us)
            self._record(view, start_us, end_us, rows)
            self.advance_watermark(end_us)
            results.append(MaterializeResult(view.name, _utc(start_us), _utc(end_us), rows,
                                             time.perf_counter() - began))
            if progress is not None:
                progress(view.name, rows)
        return results

    def materialize_incremental(self, end: Any = None, *, views: Sequence[str] | None = None,
                                progress: Any = None) -> list[MaterializeResult]:
        """Materialise each view from where its last run into this online store ended, up to ``end``
        (default: :meth:`default_end_us`, now or the newest event time)."""
        given = to_us(end, "end") if end is not None else None
        results = []
        last = self.last_materialized()
        for view in self._views(views):
            start_us = last.get(view.name, 0)
            end_us = given if given is not None else self.default_end_us(view)
            if end_us is None or start_us > end_us:
                continue
            results.extend(self.materialize(_utc(start_us), _utc(end_us), views=[view.name], progress=progress))
        return results

    def last_materialized(self) -> dict[str, int]:
        """Per view, the end (µs) of the newest materialisation into this online store."""
        t = feature_materializations
        with self.project.db.begin() as conn:
            rows = conn.execute(sa.select(t.c.view, sa.func.max(t.c.end_us)).where(t.c.store == self._store_id())
                                .group_by(t.c.view)).fetchall()
        return {r[0]: int(r[1]) for r in rows}

    def _record(self, view: FeatureView, start_us: int, end_us: int, rows: int) -> None:
        version = self._reg().info[("feature_view", view.name)].version
        with self.project.db.begin() as conn:
            conn.execute(feature_materializations.insert().values(
                view=view.name, store=self._store_id(), version=version, start_us=start_us, end_us=end_us,
                rows=rows, at=time.time()))

    def _partitions_sql(self, view: FeatureView, start_us: int, end_us: int) -> str | None:
        offline = self.project.offline
        first, last = _utc(start_us).date().isoformat(), _utc(end_us).date().isoformat()
        root = offline.table_path(view.source)
        if not offline.fs.exists(root):
            return None
        folders = sorted(str(p).rstrip("/").rsplit("/", 1)[-1] for p in offline.fs.ls(root, detail=False))
        wanted = [f"{root}/{name}/*.parquet" for name in folders
                  if name.startswith("event_date=") and first <= name.split("=", 1)[1] <= last]
        if not wanted:
            return None
        files = ", ".join(off.quote(w) for w in wanted)
        return f"read_parquet([{files}], hive_partitioning = true, union_by_name = true)"

    def _materialize_view(self, view: FeatureView, start_us: int, end_us: int) -> int:
        q = off.ident
        keys = ", ".join(q(k) for k in view.join_keys)
        feats = ", ".join(q(f) for f in view.feature_names)
        ts = f"epoch_us({q(view.timestamp_field)})"
        order = f"{ts} DESC" + (f", {q(view.created_timestamp_field)} DESC NULLS LAST"
                                if view.created_timestamp_field else "")
        # Partition pruning: read only the event_date folders of the range (an hourly incremental run
        # reads one or two files instead of every file's schema).
        source = (self._partitions_sql(view, start_us, end_us) if view.partitioned_by_timestamp
                  else off.source_sql(view.source, self.project.offline))
        if source is None:
            return 0
        sql = (f"SELECT {keys}, {ts} AS __ts, {feats} FROM {source} "
               f"WHERE {ts} BETWEEN {start_us} AND {end_us} "
               f"QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY {order}) = 1")
        con = off.connect(self.duckdb_settings())
        kv = self.online
        prefix = view_prefix(view.name)
        total = 0
        try:
            reader = con.sql(sql).to_arrow_reader(20_000)
            for batch in reader:
                data = batch.to_pydict()
                n = batch.num_rows
                key_cols = [data[k] for k in view.join_keys]
                keys_ = [prefix + entity_key([c[i] for c in key_cols]) for i in range(n)]
                stamps = data["__ts"]
                existing = kv.mget(keys_)
                items: dict[str, bytes] = {}
                for i in range(n):
                    old = existing[i]
                    if old is not None and orjson.loads(old)["__ts"] > stamps[i]:
                        continue  # a newer value is online already
                    items[keys_[i]] = pack(stamps[i], {f: data[f][i] for f in view.feature_names})
                if items:
                    kv.set_many(items)
                total += len(items)
        finally:
            con.close()
        return total

    # ---- online ---------------------------------------------------------------------------------

    def _plan(self, features: Sequence[str] | FeatureService | str) -> ReadPlan:
        key = features.features if isinstance(features, FeatureService) else (
            (features,) if isinstance(features, str) else tuple(features))
        plan = self._plans.get(key)
        if plan is None:
            refs = self.refs(features)
            plan = ReadPlan(refs, self._resolve(refs))
            if len(self._plans) > 256:
                self._plans.clear()
            self._plans[key] = plan
        return plan

    def _aggs_for(self, plan: ReadPlan) -> AggregateStore | None:
        return self.aggregates if plan.aggs else None

    def get_online_features(self, entity_rows: Sequence[dict[str, Any]],
                            features: Sequence[str] | FeatureService | str, *, at: Any = None) -> OnlineResponse:
        """Values, statuses (present, missing, expired) and event times for each entity row.

        ``at`` is the time ttl and windows are judged at (default: now).
        """
        plan = self._plan(features)
        at_us = to_us(at, "at") if at is not None else self.now_us()
        return plan.response(self.online, self._aggs_for(plan), entity_rows, at_us)

    def online_vector(self, entity_rows: Sequence[dict[str, Any]], features: Sequence[str] | FeatureService | str,
                      *, at: Any = None, at_us: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The serving fast path: float64 ``[n, k]`` with NaN where not present, and int8 status codes.

        Status codes are :class:`Status` values: PRESENT (0), MISSING (1) and EXPIRED (2). Reads are judged
        at ``at`` (any time :func:`to_us` takes), or ``at_us`` microseconds, or :meth:`now_us`.
        """
        plan = self._plan(features)
        if not plan.numeric:
            raise InputError("features", "online_vector serves numeric features only; use get_online_features",
                             list(plan.refs))
        if at_us is None:
            at_us = to_us(at, "at") if at is not None else self.now_us()
        return plan.vector(self.online, self._aggs_for(plan), entity_rows, at_us)

    # ---- streams --------------------------------------------------------------------------------

    def stream_processor(self) -> AggregationProcessor:
        """The processor ingestion calls with every accepted micro-batch (``process(stream, batch)``)."""
        return AggregationProcessor(self)

    def skew(self, **kwargs: Any) -> Any:
        """Training/serving skew of logged feature vectors; see :func:`modelmill.features.skew.skew_report`."""
        from modelmill.features.skew import skew_report

        return skew_report(self, **kwargs)

    def close(self) -> None:
        if self._aggregates is not None:
            self._aggregates.close()
            self._aggregates = None


class AggregationProcessor:
    """Folds stream micro-batches into every stream aggregation defined on that stream.

    Implements ingestion's ``StreamProcessor`` protocol. Safe to run in
    several consumers at once: each event id counts once, updates are atomic.
    """

    def __init__(self, store: FeatureStore) -> None:
        self.store = store

    def aggregations(self, stream: str) -> list[StreamAggregation]:
        return [d for (k, _), d in sorted(self.store._reg().defs.items())  # type: ignore[misc]
                if k == "stream_aggregation" and d.stream == stream]  # type: ignore[union-attr]

    def process(self, stream: str, batch: pa.Table) -> None:
        newest = 0
        for agg in self.aggregations(stream):
            events = events_from_batch(agg, batch)
            self.store.aggregates.apply(agg, events)
            newest = max([newest, *(ev[1] for ev in events)])
        if newest:
            self.store.advance_watermark(newest)

    def __repr__(self) -> str:
        return f"AggregationProcessor({self.store!r})"
