"""``modelmill features apply|list|materialize|skew``: the feature store from the command line."""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any

import typer
from rich.progress import Progress

from modelmill.cli.output import JsonOption, console, emit_json, err_console, table
from modelmill.errors import InputError
from modelmill.features import FeatureStore
from modelmill.features.definitions import collect
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
    end: str | None = typer.Option(None, help="ISO time; default: now."),
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
                results = store.materialize(start, end or _now(), views=views, progress=step)
    out = [{"view": r.view, "start": r.start.isoformat(), "end": r.end.isoformat(), "rows": r.rows,
            "seconds": round(r.seconds, 3)} for r in results]
    if as_json:
        emit_json({"materialized": out})
    else:
        table("materialised", ["view", "start", "end", "entities", "seconds"],
              [[r["view"], r["start"], r["end"], r["rows"], r["seconds"]] for r in out])


def _now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat()


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
        return
    console.print(f"{report.rows} logged predictions, {report.skipped} skipped")
    table("training/serving skew", ["feature", "compared", "mismatches", "rate", "null online", "null offline"],
          [[f.feature, f.compared, f.mismatches, f"{f.mismatch_rate:.4f}", f.null_online, f.null_offline]
           for f in report.features])
