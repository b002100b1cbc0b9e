"""``modelmill demo``: a year of New York flights through the whole loop."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from modelmill.cli.output import JsonOption, console, emit_json, err_console, table


def register(app: typer.Typer) -> None:
    app.command()(demo)


def demo(
    months: int = typer.Option(12, min=3, max=12, help="Months of 2013 to replay (the first two train)."),
    db: str = typer.Option(None, help="Metadata database URL, e.g. postgresql://postgres@127.0.0.1/test."),
    online: str = typer.Option(None, help="Online store URL, e.g. redis://127.0.0.1:6379/0."),
    broker: str = typer.Option(None, help="Broker URL, e.g. nats://127.0.0.1:4222."),
    report: Path = typer.Option(Path("report.html"), help="Where to write the HTML report."),
    fresh: bool = typer.Option(True, "--fresh/--keep", help="Clear what an earlier demo run left."),
    as_json: bool = JsonOption,
) -> None:
    """Replay 2013's New York flights: ingest, features, train, gate, serve, monitor, retrain, roll out."""
    from modelmill.demo import MONTH_COLUMNS, DemoOptions, FlightsDemo, month_table, prepare_project
    from modelmill.demo.report import write_demo_report
    from modelmill.project import Project

    options = DemoOptions(months=months, report=report)
    settings = prepare_project(Path.cwd(), model=options.model, fresh=fresh, db=db, online=online, broker=broker)
    say = (lambda _t: None) if as_json else (lambda t: err_console.print(t, highlight=False))
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=err_console, disable=as_json, transient=False)
    with Project(settings) as project, progress:
        demo_run = FlightsDemo(project, options, say=say, progress=progress)
        result = demo_run.run()
        result.report = write_demo_report(project, result, report, last_drift=demo_run.last_drift)
    if as_json:
        emit_json(result.as_dict())
        return
    # The drifted columns are listed in report.html; the terminal table keeps to 80 columns.
    keep = [i for i, c in enumerate(MONTH_COLUMNS) if c != "drifted"]
    table("modelmill demo: 2013, month by month", [MONTH_COLUMNS[i] for i in keep],
          [[r[i] for i in keep] for r in month_table(result.months)])
    if result.ab:
        console.print(f"A/B test {result.ab['month']}: v{result.ab['control_version']} (control) vs "
                      f"v{result.ab['treatment_version']} (treatment), log loss: {result.ab['decision']} — "
                      f"{result.ab['reason']}")
    if result.broken:
        console.print(f"broken candidate v{result.broken['version']}: {result.broken.get('status')} — "
                      f"{result.broken.get('reason')}")
    console.print(f"registered versions: {result.versions}; report: {result.report}; {result.seconds:.0f} s")
