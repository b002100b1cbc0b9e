"""``modelmill demo``: a year of New York flights through the whole loop."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from modelmill.cli.output import JsonOption, console, emit_json, err_console, table


def register(app: typer.Typer) -> None:
    app.command()(demo)


def demo(
    scenario: str = typer.Option("flights", help="flights (a year of New York flights) or clicks (a synthetic "
                                                  "click stream with a planted drift and A/B effect)."),
    users: int = typer.Option(20_000, min=1_000, help="clicks: users in the click stream (impressions scale with "
                                                       "them)."),
    months: int = typer.Option(12, min=3, max=12, help="Months of 2013 to replay (the first two train)."),
    db: str = typer.Option(None, help="Metadata database URL, e.g. postgresql://postgres@127.0.0.1/test."),
    online: str = typer.Option(None, help="Online store URL, e.g. redis://127.0.0.1:6379/0."),
    broker: str = typer.Option(None, help="Broker URL, e.g. nats://127.0.0.1:4222."),
    report: Path = typer.Option(Path("report.html"), help="Where to write the HTML report."),
    fresh: bool = typer.Option(True, "--fresh/--keep", help="Clear what an earlier demo run left."),
    as_json: bool = JsonOption,
) -> None:
    """Replay 2013's New York flights (or, with --scenario clicks, a synthetic click stream): ingest, features,
    train, gate, serve, monitor, retrain, roll out."""
    if scenario == "clicks":
        _clicks(users=users, fresh=fresh, as_json=as_json, backends={"db": db, "online": online, "broker": broker})
        return
    if scenario != "flights":
        from modelmill.errors import InputError

        raise InputError("--scenario", "must be flights or clicks", scenario)
    from modelmill.demo import MONTH_COLUMNS, DemoOptions, FlightsDemo, month_table, prepare_project
    from modelmill.demo.flights import loop_toml
    from modelmill.demo.report import write_demo_report
    from modelmill.project import Project

    options = DemoOptions(months=months, report=report)
    settings = prepare_project(Path.cwd(), model=options.model, fresh=fresh, db=db, online=online, broker=broker,
                               loop=loop_toml(options))
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


def _clicks(*, users: int, fresh: bool, as_json: bool, backends: dict[str, str | None]) -> None:
    from modelmill.demo.clicks import ClicksOptions, ClicksScenario

    say = (lambda _t: None) if as_json else (lambda t: err_console.print(t, highlight=False))
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=err_console, disable=as_json, transient=True)
    with progress:
        result = ClicksScenario(Path.cwd(), ClicksOptions(users=users), say=say, progress=progress, fresh=fresh,
                                backends={k: v for k, v in backends.items() if v}).run()
    if as_json:
        emit_json(result.as_dict())
        return
    table(f"modelmill demo --scenario clicks: {result.users:,} users, {result.per_window:,} impressions an hour",
          ["hour", "truth", "predictions", "labels", "CTR", "drift share", "alerts", "served by"],
          [[str(w.window), "drifted" if w.drifted_truth else "quiet", f"{w.predictions:,}", f"{w.labels:,}",
            "n/a" if w.ctr is None else f"{w.ctr:.3f}",
            " ".join(f"v{d['version']}:{d['drift_share']:.2f}" for d in w.drift if d.get("drift_share") is not None),
            "; ".join(a.removeprefix("clicks.") for a in w.alerts), " ".join(f"v{k}:{v}" for k, v in w.served.items())] for w in result.windows])
    table("detectors against the planted ground truth", ["detector", "hits", "misses", "false alarms"],
          [[d["detector"], str(d["hits"]), str(d["misses"]), str(d["false_alarms"])] if "flagged" not in d else
           [f"{d['detector']} (moves with its inputs: flagged {d['flagged']}, not scored)", "", "", ""]
           for d in result.detectors])
    drift = next((d for d in result.detectors if d["detector"] == "dataset drift (monitor)"), None)
    if drift is not None:
        at = next((w.window for w in result.windows if w.drifted_truth), None)
        found = drift["first_hit_window"]
        console.print(f"planted drift from hour {at}: " + ("not found" if found is None else
                      f"found in hour {found}" + (" (within one monitoring window)" if found == at else "")))
    if result.retrain:
        r = result.retrain
        console.print(f"retrained v{r['version']} in hour {r['window']}: gate {r['status']}; rollout "
                      f"{(result.rollout or {}).get('status', 'not started')}, production "
                      f"v{(result.rollout or {}).get('production', '?')}")
    if result.ab:
        ab = result.ab
        console.print(f"A/B test on v{ab['version']} ({ab['metric']}): {ab.get('decision')}: measured lift "
                      f"{_signed(ab.get('measured_lift'))}, true {_signed(ab.get('true_effect'))}, p = "
                      f"{_num(ab.get('p_value'))}; planted sign found: {'yes' if ab.get('found') else 'no'}")
    console.print(f"registered versions: {result.versions}; {result.seconds:.0f} s")


def _signed(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.4f}"


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3g}"
