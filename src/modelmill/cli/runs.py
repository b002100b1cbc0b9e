"""``modelmill runs list|search|show|compare``: tracked training runs."""

from __future__ import annotations

import datetime as dt
from typing import Any

import typer

from modelmill.cli.output import JsonOption, console, emit_json, table
from modelmill.errors import InputError
from modelmill.project import open_project
from modelmill.training.tracking import RunInfo, Runs

runs_app = typer.Typer(help="Tracked training runs: params, metrics, code and data versions.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(runs_app, name="runs")


def _when(ts: float | None) -> str:
    return "" if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _summary(info: RunInfo) -> dict[str, Any]:
    return {"run_id": info.run_id, "experiment": info.experiment, "name": info.name, "status": info.status,
            "start_time": info.start_time, "end_time": info.end_time, "git_commit": info.git_commit,
            "git_dirty": info.git_dirty, "data_snapshot": info.data_snapshot,
            "feature_version": info.feature_version, "params": info.params,
            "metrics": {k: v["last"] for k, v in info.metrics.items()}}


@runs_app.command("list")
def list_runs(
    experiment: str | None = typer.Option(None, "--experiment", "-e", help="Only this experiment."),
    status: str | None = typer.Option(None, help="running, finished or failed."),
    limit: int = typer.Option(20, help="How many runs, newest first."),
    as_json: bool = JsonOption,
) -> None:
    """List runs, newest first, with their last metric values."""
    with open_project() as project:
        infos = Runs(project).find(experiment=experiment, status=status, limit=limit)
    if as_json:
        emit_json({"runs": [_summary(i) for i in infos]})
        return
    rows = []
    for i in infos:
        metrics = ", ".join(f"{k}={v['last']:.4g}" for k, v in sorted(i.metrics.items())
                            if isinstance(v["last"], float))
        rows.append([i.run_id[:12], i.experiment, i.status, _when(i.start_time), metrics[:80]])
    table("runs", ["run", "experiment", "status", "started (UTC)", "metrics (last)"], rows)


@runs_app.command("search")
def search_runs(
    filter: str = typer.Argument("", metavar="FILTER",
                                 help="MLflow's filter syntax, e.g. \"metrics.auc > 0.7 and params.max_depth = 6\"; "
                                      "metrics./params./tags./attributes.; =, !=, <, <=, >, >=, LIKE, ILIKE; "
                                      "'and' between clauses; string values quoted. Empty: every run."),
    experiment: list[str] = typer.Option([], "--experiment", "-e", help="Only these experiments (repeatable)."),
    order_by: list[str] = typer.Option([], "--order-by", help="'metrics.auc DESC', 'params.lr', "
                                       "'attributes.start_time ASC' (repeatable; then newest first)."),
    max_results: int = typer.Option(100, "--max-results", help="At most this many runs."),
    as_json: bool = JsonOption,
) -> None:
    """Runs matching a filter, as MLflow's search_runs reads one (see the README, Tracking)."""
    with open_project() as project:
        infos = Runs(project).search(filter, experiments=experiment or None, order_by=order_by,
                                     max_results=max_results)
    if as_json:
        emit_json({"filter": filter, "order_by": order_by, "count": len(infos),
                   "runs": [{**_summary(i), "tags": i.tags} for i in infos]})
        return
    rows = []
    for i in infos:
        params = ", ".join(f"{k}={v}" for k, v in sorted(i.params.items()))
        metrics = ", ".join(f"{k}={v['last']:.4g}" for k, v in sorted(i.metrics.items())
                            if isinstance(v["last"], float))
        rows.append([i.run_id[:12], i.experiment, i.status, _when(i.start_time), params[:60], metrics[:60]])
    table(f"runs matching {filter or '(every run)'}: {len(infos)}",
          ["run", "experiment", "status", "started (UTC)", "params", "metrics (last)"], rows)


@runs_app.command("show")
def show_run(
    run_id: str = typer.Argument(..., help="Run id or a unique prefix (4+ characters)."),
    metric: list[str] = typer.Option([], "--metric", "-m", help="Include the full history of this metric."),
    as_json: bool = JsonOption,
) -> None:
    """Everything about one run: params, metric summaries, tags, artifacts, code, data, environment."""
    with open_project() as project:
        store = Runs(project)
        info = store.get(run_id)
        history = {key: [[p.step, p.value, p.timestamp] for p in store.history(info.run_id, key)] for key in metric}
    if as_json:
        emit_json({"run": info.as_dict(), "history": history})
        return
    console.print(f"[bold]{info.run_id}[/]  {info.experiment}  {info.status}  started {_when(info.start_time)} UTC")
    dirty = " (dirty)" if info.git_dirty else ""
    console.print(f"code {info.git_commit or '-'}{dirty}; data {info.data_snapshot or '-'}; "
                  f"features {info.feature_version or '-'}")
    if info.error:
        console.print(f"[red]error:[/] {info.error}", highlight=False)
    table("params", ["key", "value"], sorted(info.params.items()))
    table("metrics", ["key", "last", "min", "max", "points"],
          [[k, v["last"], v["min"], v["max"], v["count"]] for k, v in sorted(info.metrics.items())])
    if info.artifacts:
        table("artifacts", ["name", "path", "bytes"], [[k, a["path"], a["size"]] for k, a in info.artifacts.items()])
    for key, points in history.items():
        table(f"history of {key}", ["step", "value"], [[s, v] for s, v, _t in points])


@runs_app.command("compare")
def compare_runs(
    run_ids: list[str] = typer.Argument(..., help="Two or more run ids (or unique prefixes)."),
    as_json: bool = JsonOption,
) -> None:
    """Params and last metric values side by side."""
    if len(run_ids) < 2:
        raise InputError("run_ids", "give at least two runs to compare", run_ids)
    with open_project() as project:
        result = Runs(project).compare(run_ids)
    if as_json:
        emit_json(result)
        return
    ids = [r["run_id"] for r in result["runs"]]
    rows = [[f"param {k}" + (" *" if k in result["differs"] else ""), *(v[i] for i in ids)]
            for k, v in result["params"].items()]
    rows += [[f"metric {k}", *(v[i] for i in ids)] for k, v in result["metrics"].items()]
    table("compare (* = differs)", ["", *(i[:12] for i in ids)], rows)
