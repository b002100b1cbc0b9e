"""``modelmill features apply|list|materialize|watermark|training-set|online|skew``: the feature store from the
command line."""

from __future__ import annotations

import runpy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.progress import Progress

from modelmill.cli.output import JsonOption, console, emit_json, err_console, table
from modelmill.errors import InputError
from modelmill.features import FeatureStore
from modelmill.features.definitions import collect
from modelmill.features.store import to_us
from modelmill.project import open_project

app = typer.Typer(help="Feature store: definitions, materialisation, skew checks.", no_args_is_help=True)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="features")


def load_definitions(path: Path) -> list[Any]:
    """The Entity/FeatureView/StreamAggregation/FeatureService objects a Python file defines."""
    if not path.is_file():
        raise InputError("FILE", "is not a file", str(path))
    try:
        namespace = runpy.run_path(str(path), run_name="modelmill_features")
    except Exception as exc:  # the user's file: report its error as input, not as a crash
        raise InputError("FILE", f"{path} failed to run: {type(exc).__name__}: {exc}") from exc
    found = collect(namespace.values())
    if not found:
        raise InputError("FILE", "defines no Entity, FeatureView, StreamAggregation or FeatureService", str(path))
    return found


@app.command("apply")
def apply_cmd(
    file: Path = typer.Argument(..., help="A Python file defining the feature objects."),
    as_json: bool = JsonOption,
) -> None:
    """Store the definitions of FILE; changed ones get a new version."""
    objects = load_definitions(file)
    with open_project() as project:
        results = FeatureStore(project, actor="cli").apply(objects)
    rows = [{"kind": r.kind, "name": r.name, "version": r.version, "changed": r.changed} for r in results]
    if as_json:
        emit_json({"file": str(file), "applied": rows})
    else:
        table(f"applied {file}", ["kind", "name", "version", "changed"],
              [[r["kind"], r["name"], r["version"], "yes" if r["changed"] else "no"] for r in rows])


@app.command("list")
def list_cmd(as_json: bool = JsonOption) -> None:
    """The current version of every definition."""
    with open_project() as project:
        store = FeatureStore(project)
        infos = store.definitions()
        last = store.last_materialized() if infos else {}
    if as_json:
        emit_json({"definitions": [{**i.as_dict(), "materialized_until_us": last.get(i.name)} for i in infos]})
        return
    rows = []
    for i in infos:
        spec = i.spec
        if i.kind == "feature_view":
            what = f"{len(spec['fields'])} features from {spec['source']}"
        elif i.kind == "stream_aggregation":
            what = f"{sum(len(a['windows']) for a in spec['aggregations'])} aggregates of stream {spec['stream']}"
        elif i.kind == "feature_service":
            what = ", ".join(spec["features"])
        else:
            what = "keys " + ", ".join(spec["join_keys"])
        rows.append([i.kind, i.name, i.version, what])
    table("feature definitions", ["kind", "name", "version", "what"], rows)


@app.command("materialize")
def materialize_cmd(
    start: str | None = typer.Option(None, help="ISO time; default: where the last run ended (incremental)."),
    end: str | None = typer.Option(None, help="ISO time; default: now, or under the event clock "
                                   "(features.clock = \"event\") the newest event time of each view's source."),
    view: list[str] = typer.Option([], "--view", help="Only these views (repeatable)."),
    as_json: bool = JsonOption,
) -> None:
    """Load the latest feature values into the online store."""
    with open_project() as project:
        store = FeatureStore(project, actor="cli")
        views = view or None
        with Progress(console=err_console, disable=as_json, transient=True) as progress:
            task = progress.add_task("materialising", total=None)

            def step(name: str, rows: int) -> None:
                progress.update(task, description=f"{name}: {rows} entities")

            if start is None:
                results = store.materialize_incremental(end, views=views, progress=step)
            else:
                results = store.materialize(start, end, views=views, progress=step)
    out = [{"view": r.view, "start": r.start.isoformat(), "end": r.end.isoformat(), "rows": r.rows,
            "seconds": round(r.seconds, 3)} for r in results]
    if as_json:
        emit_json({"materialized": out})
    else:
        table("materialised", ["view", "start", "end", "entities", "seconds"],
              [[r["view"], r["start"], r["end"], r["rows"], r["seconds"]] for r in out])


@app.command("watermark")
def watermark_cmd(
    set_to: str | None = typer.Option(None, "--set", help="ISO time: put the watermark there, back or forward."),
    reset: bool = typer.Option(False, "--reset", help="Forget the watermark; the next materialisation or "
                               "aggregated event sets it again."),
    as_json: bool = JsonOption,
) -> None:
    """Show the online store's watermark (the time reads are judged at under the event clock), or move it."""
    if set_to is not None and reset:
        raise InputError("--set", "give --set TIME or --reset, not both", set_to)
    with open_project() as project:
        store = FeatureStore(project, actor="cli")
        if reset:
            store.set_watermark(None)
        elif set_to is not None:
            store.set_watermark(to_us(set_to, "--set"))
        mark, newest, clock = store.watermark(), store.newest_event_us(), store.clock
    out = {"clock": clock, "watermark": _iso(mark), "watermark_us": mark, "newest_event": _iso(newest),
           "newest_event_us": newest, "changed": "reset" if reset else "set" if set_to is not None else None}
    if as_json:
        emit_json(out)
        return
    console.print(f"watermark: {out['watermark'] or 'none'}  (clock: {clock})")
    console.print(f"newest event in the feature views' sources: {out['newest_event'] or 'none'}")
    if clock == "wall":
        console.print("online reads are judged at the wall clock; the watermark matters only under "
                      + escape('[features] clock = "event"'))
    elif mark is not None and newest is not None and mark > newest:
        console.print("the watermark is past the newest event: reads of older values may be expired; "
                      "move it with --set TIME or --reset")


def _iso(us: int | None) -> str | None:
    return None if us is None else _when(us).isoformat()


def _when(us: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)


def read_frame(path: Path, option: str) -> Any:
    """A .csv or .parquet file as a DataFrame; an :class:`InputError` naming ``option`` otherwise."""
    import pandas as pd

    if not path.is_file():
        raise InputError(option, "is not a file", str(path))
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path)
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
    except Exception as exc:  # a damaged or mislabelled file: report it as input, not as a crash
        raise InputError(option, f"cannot be read as {suffix[1:]}: {type(exc).__name__}: {exc}", str(path)) from exc
    raise InputError(option, "must be a .csv or .parquet file", str(path))


def _output_kind(path: Path, option: str = "--output") -> str:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    raise InputError(option, "must end in .csv or .parquet", str(path))


def entity_rows(path: Path, timestamp_column: str, option: str = "--entities") -> Any:
    """The entity rows of a .csv or .parquet file, with ``timestamp_column`` read as UTC times.

    A CSV's times are text: ISO 8601 (a time without a zone is UTC) or epoch seconds.
    """
    import pandas as pd

    frame = read_frame(path, option)
    if timestamp_column not in frame.columns:
        raise InputError("--timestamp-column", f"is not a column of {path.name} (columns: "
                         f"{', '.join(map(str, frame.columns))})", timestamp_column)
    col = frame[timestamp_column]
    if pd.api.types.is_datetime64_any_dtype(col):
        if getattr(col.dt, "tz", None) is None:
            frame[timestamp_column] = col.dt.tz_localize("UTC")
        return frame
    try:
        if pd.api.types.is_numeric_dtype(col):
            frame[timestamp_column] = pd.to_datetime(col, unit="s", utc=True)
        else:
            frame[timestamp_column] = pd.to_datetime(col, utc=True, format="ISO8601")
    except (ValueError, TypeError) as exc:
        raise InputError(timestamp_column, f"must hold ISO 8601 times or epoch seconds in {path.name}: {exc}",
                         str(col.iloc[0]) if len(col) else None) from None
    if frame[timestamp_column].isna().any():
        row = int(frame[timestamp_column].isna().to_numpy().nonzero()[0][0])
        raise InputError(f"row {row + 1}.{timestamp_column}", "is empty; every entity row needs its time")
    return frame


def _parquet_with_times(path: Path, column: str) -> bool:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.suffix.lower() not in (".parquet", ".pq") or not path.is_file():
        return False
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException):
        return False  # entity_rows reports it
    if column not in schema.names:
        return False
    kind = schema.field(column).type
    return pa.types.is_timestamp(kind) and kind.tz is not None  # a naive time is read as UTC by entity_rows


def build_training_set(store: FeatureStore, service: str, entities: Path, *, timestamp_column: str,
                       full_feature_names: bool = False, output: Path | None = None) -> Any:
    """Point-in-time correct features of ``service`` for every row of the ``entities`` file: a DataFrame, or
    the path written when ``output`` is given (Parquet straight from DuckDB; CSV through pandas)."""
    svc = store.feature_service(service)
    kind = _output_kind(output) if output is not None else None
    # A Parquet file whose time column is a timestamp goes to DuckDB as it is: it may be larger than memory.
    rows: Any = str(entities) if _parquet_with_times(entities, timestamp_column) else entity_rows(
        entities, timestamp_column)
    if kind == "parquet":
        assert output is not None
        output.parent.mkdir(parents=True, exist_ok=True)
        return Path(store.get_training_set(rows, svc, timestamp_column=timestamp_column,
                                           full_feature_names=full_feature_names, output=str(output)))
    frame = store.get_training_set(rows, svc, timestamp_column=timestamp_column,
                                   full_feature_names=full_feature_names)
    if output is None:
        return frame
    output.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(output, index=False)
    return output


@app.command("training-set")
def training_set_cmd(
    service: str = typer.Option(..., "--service", "-s", help="The feature service whose features are joined."),
    entities: Path = typer.Option(..., "--entities", "-e", help="A .csv or .parquet file: the entity keys, an "
                                  "event time per row, and any other columns (a label) to keep."),
    output: Path = typer.Option(..., "--output", "-o", help="The training set to write: .csv or .parquet."),
    timestamp_column: str = typer.Option("event_timestamp", "--timestamp-column",
                                         help="The entities' time column (ISO 8601 or epoch seconds in a CSV)."),
    full_feature_names: bool = typer.Option(False, "--full-feature-names",
                                            help="Name columns view__feature rather than feature."),
    as_json: bool = JsonOption,
) -> None:
    """Point-in-time correct features for every entity row: each is the latest value at or before the row's
    time (within the view's ttl), else empty; no row is dropped, and the rows keep their order."""
    import pyarrow.parquet as pq

    _output_kind(output)
    with open_project() as project:
        store = FeatureStore(project)
        try:
            svc = store.feature_service(service)
            build_training_set(store, service, entities, timestamp_column=timestamp_column,
                               full_feature_names=full_feature_names, output=output)
        finally:
            store.close()
    if output.suffix.lower() == ".csv":
        import pandas as pd

        frame = pd.read_csv(output)
        columns, rows = [str(c) for c in frame.columns], len(frame)
        nulls = {str(c): int(frame[c].isna().sum()) for c in frame.columns}
    else:
        table_ = pq.read_table(output)
        columns, rows = table_.column_names, table_.num_rows
        nulls = {c: table_.column(c).null_count for c in columns}
    features = [ref.replace(":", "__", 1) if full_feature_names else ref.split(":", 1)[1] for ref in svc.features]
    out = {"service": service, "features": list(svc.features), "entities": str(entities), "output": str(output),
           "rows": rows, "columns": columns, "empty": {c: nulls[c] for c in features}}
    if as_json:
        emit_json(out)
        return
    console.print(f"wrote {rows:,} rows to {output}", highlight=False, markup=False)
    table(f"features of {service}", ["column", "feature", "empty rows"],
          [[c, ref, nulls[c]] for c, ref in zip(features, svc.features, strict=True)])


def _entity_keys(store: FeatureStore, refs: tuple[str, ...]) -> list[str]:
    """The join keys of the views behind ``refs``, in order of first use."""
    from modelmill.errors import NotFoundError

    keys: dict[str, None] = {}
    for view in dict.fromkeys(r.split(":", 1)[0] for r in refs):
        try:
            source: Any = store.feature_view(view)
        except NotFoundError:
            source = store.stream_aggregation(view)
        keys.update(dict.fromkeys(source.join_keys))
    return list(keys)


def parse_entity(items: list[str], keys: list[str], service: str) -> dict[str, str]:
    """``["carrier=UA", "origin=EWR"]`` -> ``{"carrier": "UA", "origin": "EWR"}``; every key of ``keys``
    once, nothing else."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InputError("--entity", "must look like KEY=VALUE", item)
        if key not in keys:
            raise InputError("--entity", f"{key!r} is not a join key of feature service {service}; its keys are "
                             f"{', '.join(keys)}", item)
        if key in out:
            raise InputError("--entity", f"gives {key!r} twice", item)
        out[key] = value
    lacking = [k for k in keys if k not in out]
    if lacking:
        raise InputError("--entity", f"feature service {service} needs the key(s) {', '.join(lacking)}; add "
                         + " ".join(f"--entity {k}=VALUE" for k in lacking), sorted(out) or None)
    return out


@app.command("online")
def online_cmd(
    service: str = typer.Option(..., "--service", "-s", help="The feature service to read."),
    entity: list[str] = typer.Option(..., "--entity", help="KEY=VALUE of the entity (repeatable: one per join key)."),
    at: str | None = typer.Option(None, help="ISO time ttl and windows are judged at (default: now, or the "
                                  "watermark under the event clock)."),
    as_json: bool = JsonOption,
) -> None:
    """The online store's values of one entity for a feature service, each with its status (present,
    missing, expired) and event time; a missing value is shown as missing, never as 0."""
    with open_project() as project:
        store = FeatureStore(project)
        try:
            svc = store.feature_service(service)
            keys = parse_entity(entity, _entity_keys(store, svc.features), service)
            at_us = to_us(at, "--at") if at is not None else store.now_us()
            response = store.get_online_features([keys], svc, at=_when(at_us))
        finally:
            store.close()
    values, statuses, times = response.values[0], response.statuses[0], response.timestamps[0]
    features = {ref: {"value": v if s == "present" else None, "status": s,
                      "event_time": t.isoformat() if t is not None else None}
                for ref, v, s, t in zip(response.features, values, statuses, times, strict=True)}
    lacking = [ref for ref, f in features.items() if f["status"] != "present"]
    out = {"service": service, "entity": keys, "at": _iso(at_us), "features": features, "missing": lacking,
           "on_missing": svc.on_missing}
    if as_json:
        emit_json(out)
        return
    from rich.text import Text

    rows = []
    for ref, f in features.items():
        shown: Any = Text(f"({f['status']})", style="red") if f["status"] != "present" else str(f["value"])
        rows.append([ref, shown, f["status"], f["event_time"] or ""])
    table(f"{service} for {', '.join(f'{k}={v}' for k, v in keys.items())} at {out['at']}",
          ["feature", "value", "status", "event time"], rows)
    if lacking:
        err_console.print(f"{len(lacking)} of {len(features)} features not in the online store; the feature "
                          f"route would {_POLICY[svc.on_missing]} (on_missing = {svc.on_missing!r})",
                          highlight=False, markup=False)


_POLICY = {"reject": "refuse this entity (422)", "default": "use the declared defaults, refusing features "
           "without one", "allow": "pass NaN to the model"}


@app.command("skew")
def skew_cmd(
    model: str | None = typer.Option(None, help="Only predictions of this model."),
    since: str | None = typer.Option(None, help="ISO time: only predictions at or after it."),
    limit: int = typer.Option(100_000, help="At most this many (latest) logged rows."),
    tolerance: float = typer.Option(1e-9, help="Relative difference still counted as equal."),
    as_json: bool = JsonOption,
) -> None:
    """Mismatch rate per feature between served vectors and their offline recomputation."""
    with open_project() as project:
        report = FeatureStore(project).skew(model=model, since=since, limit=limit, tolerance=tolerance)
    if as_json:
        emit_json(report.as_dict())
    else:
        console.print(f"{report.rows} logged predictions: {report.compared} compared, {report.skipped} skipped; "
                      f"{report.status}", highlight=False)
        for reason, n in sorted(report.reasons.items()):
            console.print(f"  skipped {n}: {reason}", highlight=False)
        table("training/serving skew", ["feature", "compared", "mismatches", "rate", "null online", "null offline"],
              [[f.feature, f.compared, f.mismatches, f"{f.mismatch_rate:.4f}", f.null_online, f.null_offline]
               for f in report.features])
    if report.status != "pass":  # a mismatch, or nothing compared: neither is a clean bill
        if report.status == "no_data":
            err_console.print("no logged prediction could be recomputed offline (see the reasons above); skew "
                              "is checked on requests served through the feature route", highlight=False)
        raise typer.Exit(1)
