"""``modelmill features apply|list|materialize|watermark|skew``: the feature store from the command line."""

from __future__ import annotations

import runpy
from datetime import UTC, datetime
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
    return None if us is None else datetime.fromtimestamp(us / 1_000_000, tz=UTC).isoformat()


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
