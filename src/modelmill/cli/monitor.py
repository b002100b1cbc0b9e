"""``modelmill drift``, ``modelmill monitor``, ``modelmill reference`` and ``modelmill report``."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pyarrow as pa
import typer
from rich.markup import escape
from rich.text import Text

from modelmill.cli.output import JsonOption, console, emit_json, err_console, table
from modelmill.config import load_settings
from modelmill.errors import InputError, NotFoundError
from modelmill.monitoring.drift import DriftOptions, DriftReport, detect_drift, summarize
from modelmill.monitoring.exporter import MonitoringExporter
from modelmill.monitoring.monitor import Monitor, MonitoringConfig
from modelmill.monitoring.performance import parse_duration
from modelmill.monitoring.reference import ReferenceStore
from modelmill.monitoring.report import build_report, render_report, write_report
from modelmill.project import open_project


def register(app: typer.Typer) -> None:
    app.command()(drift)
    app.command()(monitor)
    app.command(name="reference")(reference_cmd)
    app.command()(report)


def read_table(path: Path, *, field: str) -> pa.Table:
    """A Parquet (file or folder) or CSV file as Arrow."""
    if not path.exists():
        raise NotFoundError("file", str(path), f"pass an existing Parquet or CSV file as --{field}")
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv") or path.name.endswith((".csv.gz", ".csv.zst")):
            import pyarrow.csv as pacsv

            opts = pacsv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ",")
            return pacsv.read_csv(path, parse_options=opts)
        import pyarrow.parquet as pq

        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(field, f"is not a readable Parquet or CSV file: {exc}", str(path)) from exc


def _columns(value: str | None, field: str = "columns") -> list[str] | None:
    if value is None:
        return None
    cols = [c.strip() for c in value.split(",") if c.strip()]
    if not cols:
        raise InputError(field, "name at least one column", value)
    return cols


def _drift_options() -> DriftOptions:
    return DriftOptions.from_mapping(load_settings().section("monitoring").get("drift", {}))


# The column selection `drift` and `report` share, so the two give one verdict on the same files.
ColumnsOption = typer.Option(None, "--columns", help="Comma-separated columns to test (default: all in both).")
ExcludeOption = typer.Option(None, "--exclude", help="Comma-separated columns not to test (ids, timestamps).")
TargetOption = typer.Option(None, "--target", help="The label column: left out of the feature drift.")
DriftShareOption = typer.Option(None, "--drift-share", help="Share of drifted columns that makes the dataset "
                                "drift (default 0.5).")
CalibratedOption = typer.Option(None, "--calibrated/--fixed", help="Thresholds calibrated on the reference's own "
                                "variability at the current's size, or Evidently's fixed ones (default: "
                                "[monitoring.drift] calibrated, else fixed).")
QuantileOption = typer.Option(None, "--quantile", help="Calibrated threshold: this quantile of the reference's "
                              "null windows (default 0.99: an A/A column flags 1% of the time).")


def file_drift(reference: pa.Table, current: pa.Table, *, columns: str | None, exclude: str | None,
               target: str | None, drift_share: float | None, calibrated: bool | None = None,
               quantile: float | None = None) -> tuple[DriftReport, DriftOptions]:
    """Drift of two files as ``drift`` and ``report`` both compute it: one column selection, one set of options."""
    options = _drift_options()
    if drift_share is not None:
        options = dataclasses.replace(options, drift_share=drift_share)
    if calibrated is not None:
        options = dataclasses.replace(options, calibrated=calibrated)
    if quantile is not None:
        if not options.calibrated:
            raise InputError("quantile", "sets the calibrated threshold; pass --calibrated with it", quantile)
        options = dataclasses.replace(options, quantile=quantile)
    result = detect_drift(reference, current, columns=_columns(columns), exclude=_columns(exclude, "exclude") or (),
                          target=target, options=options)
    return result, options


def _verdict(result: DriftReport) -> dict[str, object]:
    return {"dataset_drift": result.dataset_drift, "drift_share": result.drift_share,
            "drifted": result.drifted, "n_columns": len(result.columns)}


def drift(
    reference: Path = typer.Option(..., "--reference", help="Reference data: Parquet or CSV."),
    current: Path = typer.Option(..., "--current", help="Current data: Parquet or CSV."),
    columns: str | None = ColumnsOption,
    exclude: str | None = ExcludeOption,
    target: str | None = TargetOption,
    drift_share: float | None = DriftShareOption,
    calibrated: bool | None = CalibratedOption,
    quantile: float | None = QuantileOption,
    as_json: bool = JsonOption,
) -> None:
    """Test every column for drift, choosing each test the way Evidently does.

    With --calibrated, each column's threshold is the quantile of its statistic over windows of the
    current's size resampled from the reference (JSON: ``threshold``, and ``calibration`` with the
    fixed threshold's verdict beside it)."""
    ref, cur = read_table(reference, field="reference"), read_table(current, field="current")
    started = time.perf_counter()
    result, _ = file_drift(ref, cur, columns=columns, exclude=exclude, target=target, drift_share=drift_share,
                           calibrated=calibrated, quantile=quantile)
    if as_json:
        emit_json(result.to_dict())
        return
    rows = [[name, c.type, c.test, f"{c.statistic:.4g}", "" if c.p_value is None else f"{c.p_value:.3g}",
             f"{c.threshold:.4g}", f"{c.psi:.3g}", Text("DRIFT", style="red") if c.drift else "ok"]
            for name, c in result.columns.items()]
    kind = "calibrated threshold" if any(c.calibration for c in result.columns.values()) else "threshold"
    table(f"drift: {reference.name} → {current.name}", ["column", "type", "test", "statistic", "p-value",
                                                        kind, "psi", "verdict"], rows)
    verdict = "[red]dataset drift[/]" if result.dataset_drift else "no dataset drift"
    console.print(f"{verdict}: {len(result.drifted)}/{len(result.columns)} columns drifted "
                  f"(share {result.drift_share:.2f}); {time.perf_counter() - started:.2f} s")


def monitor(
    once: bool = typer.Option(False, "--once", help="Evaluate one round and exit."),
    interval: str | None = typer.Option(None, "--interval", help="Seconds (or '30s', '5m') between rounds; "
                                        "default [monitoring] interval."),
    exporter_port: int | None = typer.Option(None, "--exporter-port", help="Serve the monitoring gauges here."),
    as_json: bool = JsonOption,
) -> None:
    """Compute drift and quality of the last window, evaluate the alert rules, export gauges.

    With or without rules, each round also reports every served version's delayed-label metrics
    (binary: AUC, log loss, accuracy; regression: MAE, RMSE) with the labelled predictions behind each."""
    project = open_project()
    try:
        config = MonitoringConfig.from_section(project.settings.section("monitoring"))
        if interval is not None:
            config = dataclasses.replace(config, interval=parse_duration(interval, field="interval"))
        exporter = MonitoringExporter()
        port = exporter_port or config.exporter_port
        if port:
            exporter.serve(port)
            if not as_json:
                err_console.print(f"monitoring gauges at http://127.0.0.1:{port}/metrics")
        mon = Monitor(project, config, exporter=exporter)
        if once:
            result = mon.run_once()
            if as_json:
                emit_json(result)
            else:
                table("monitoring windows", ["model", "version", "rows", "drift share", "dataset drift", "status"],
                      [[w["model"], w["version"], w["n_rows"], w["drift_share"], w["dataset_drift"],
                        w["status"].replace("_", " ")] for w in result["windows"]])
                table(f"delayed-label metrics (predictions of the last {_span(result['label_window'])} "
                      "with a label)", ["model", "version", "task", "metric", "value", "n", "status"],
                      [[p["model"], p["version"], p["task"], name, "" if m["value"] is None else f"{m['value']:.4f}",
                        m["n"], "measured" if m["reason"] is None else f"no data: {m['reason']}"]
                       for p in result["performance"] for name, m in p["metrics"].items()])
                if result["rules"]:
                    table("rules", ["rule", "status", "series", "reason"],
                          [[r["rule"], r["status"].replace("_", " "), r["series"], r["reason"]]
                           for r in result["rules"]])
                table("alerts", ["rule", "state", "labels"],
                      [[a["rule"], a["state"], a["labels"]] for a in result["alerts_active"]])
                for reason in result["reasons"]:
                    err_console.print(f"[yellow]no data:[/] {escape(reason)}", highlight=False)
                err_console.print(f"status: {result['status'].replace('_', ' ')}", highlight=False)
            # a check that could not look is not a pass: "no data" exits 3, drift 1
            if result["status"] != "pass":
                raise typer.Exit(1 if result["status"] == "fail" else 3)
            return
        if not as_json:
            err_console.print(f"monitoring every {config.interval:g} s over a {config.window:g} s window; Ctrl-C stops")
        try:
            mon.run()
        except KeyboardInterrupt:
            mon.stop()
    finally:
        project.close()


def _span(seconds: float) -> str:
    """``604800`` -> ``7d``: a window as [monitoring] writes it."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def reference_cmd(
    model_ref: str = typer.Argument(..., metavar="NAME@VERSION", help="The model version (or NAME@ALIAS)."),
    data: Path = typer.Option(..., "--data", help="Data it was trained on (Parquet or CSV): the reference."),
    columns: str | None = typer.Option(None, "--columns", help="Comma-separated columns to profile "
                                       "(default: the signature's inputs)."),
    as_json: bool = JsonOption,
) -> None:
    """Store the reference profile that `monitor` compares the served features (and outputs) with."""
    from modelmill.registry import Registry

    data_table = read_table(data, field="data")
    project = open_project()
    try:
        mv = Registry(project).resolve(model_ref)
        profile = ReferenceStore(project).profile_version(mv, data_table, columns=_columns(columns),
                                                         where=str(data))
    finally:
        project.close()
    out = {"model": mv.name, "version": mv.version, "rows": profile.n_rows, "columns": sorted(profile.columns)}
    if as_json:
        emit_json(out)
    else:
        console.print(f"reference profile of {mv.name}@{mv.version}: {profile.n_rows} rows, "
                      f"{len(profile.columns)} columns", highlight=False)


def report(
    out: Path = typer.Option(Path("report.html"), "--out", help="Where to write the HTML file."),
    model: str | None = typer.Option(None, "--model", help="Only this model."),
    window: str = typer.Option("1h", "--window", help="Bucket size of the charts over time."),
    reference: Path | None = typer.Option(None, "--reference", help="Compare this file …"),
    current: Path | None = typer.Option(None, "--current", help="… with this one instead of the prediction log."),
    columns: str | None = ColumnsOption,
    exclude: str | None = ExcludeOption,
    target: str | None = TargetOption,
    drift_share: float | None = DriftShareOption,
    calibrated: bool | None = CalibratedOption,
    quantile: float | None = QuantileOption,
    as_json: bool = JsonOption,
) -> None:
    """Write one self-contained HTML report with charts (no scripts, no network needed to view it)."""
    parse_duration(window)
    if (reference is None) != (current is None):
        raise InputError("reference", "pass both --reference and --current, or neither")
    if reference is None and any(v is not None for v in (columns, exclude, target, drift_share, calibrated,
                                                         quantile)):
        raise InputError("columns", "--columns, --exclude, --target, --drift-share, --calibrated and --quantile "
                         "apply to --reference and --current files only")
    verdict: dict[str, object] = {}
    if reference is not None and current is not None:
        ref, cur = read_table(reference, field="reference"), read_table(current, field="current")
        result, options = file_drift(ref, cur, columns=columns, exclude=exclude, target=target,
                                     drift_share=drift_share, calibrated=calibrated, quantile=quantile)
        verdict = _verdict(result)
        names = list(result.columns)
        ref_s = summarize(ref, columns=names, options=options)
        cur_s = summarize(cur, columns=names, kinds={k: v.kind for k, v in ref_s.items()})
        document = render_report(title=f"modelmill drift report: {reference.name} → {current.name}",
                                 drift=result, reference=ref_s, current=cur_s)
    else:
        project = open_project()
        try:
            document = build_report(project, model=model, window=window)
        finally:
            project.close()
    path = write_report(out, document)
    if as_json:
        emit_json({"out": str(path.absolute()), "bytes": path.stat().st_size, **verdict})
    else:
        console.print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")
