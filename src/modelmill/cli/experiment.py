"""``modelmill experiment create|status|analyze|stop``: A/B tests from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from modelmill.cli.output import JsonOption, console, emit_json, table
from modelmill.control import (
    analyze_experiment,
    create_experiment,
    experiment_status,
    list_experiments,
    stop_experiment,
)
from modelmill.errors import InputError
from modelmill.experiments import SERVED_METRICS, analyze_frame, parse_arms
from modelmill.experiments.stats import CORRECTIONS
from modelmill.project import open_project

app = typer.Typer(help="A/B tests: create, watch, analyse and stop experiments.", no_args_is_help=True)

_DIRECTION_HELP = ("Which way the metric is better: higher or lower (default: lower for names ending in loss, "
                   "error or latency and for log_loss, brier, latency_ms; higher otherwise).")


_CORRECTION_HELP = ("Multiple-testing correction across treatments and metrics: holm (family-wise error rate, "
                    "the default), bh (Benjamini-Hochberg false discovery rate) or none.")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="experiment")


@app.command()
def create(
    name: str = typer.Argument(..., help="Experiment name (letters, digits, '_', '.', '-')."),
    variant: list[str] = typer.Option(..., "--variant", "-v",
                                      help="NAME:WEIGHT, or NAME=VERSION:WEIGHT on a served model; control first."),
    metric: str = typer.Option(..., "--metric", help="Primary metric the decision is made on; on a served model "
                               f"one of {', '.join(SERVED_METRICS)} (see the README)."),
    direction: str | None = typer.Option(None, "--direction", help=_DIRECTION_HELP),
    model: str | None = typer.Option(None, "--model", help="Served model whose traffic route is split."),
    unit: str = typer.Option("user_id", "--unit", help="Assignment unit (the routing key)."),
    salt: str = typer.Option("", "--salt", help="Hash salt (default: the experiment name)."),
    guardrail: list[str] = typer.Option([], "--guardrail", help="Guardrail metric (repeatable)."),
    min_sample_size: int = typer.Option(0, "--min-sample-size", help="Units per variant before a decision."),
    alpha: float = typer.Option(0.05, "--alpha", help="Significance level."),
    correction: str = typer.Option("holm", "--correction", help=_CORRECTION_HELP),
    as_json: bool = JsonOption,
) -> None:
    """Define an experiment; on a served model, its traffic split takes effect at once."""
    arms = parse_arms(variant)
    with open_project() as project:
        created = create_experiment(project, name=name, variants=arms, metric=metric, direction=direction,
                                    model=model, unit=unit, salt=salt, guardrails=guardrail,
                                    min_sample_size=min_sample_size, alpha=alpha, correction=correction,
                                    actor="cli")
    if as_json:
        emit_json(created)
    else:
        split = ", ".join(f"{v['name']} {v['weight']:g}" for v in created["variants"])
        console.print(f"experiment [bold]{escape(created['name'])}[/] running: {escape(split)}; salt "
                      f"{escape(repr(created['salt']))}; {escape(created['primary_metric'])}, "
                      f"{created['direction']} is better")


@app.command()
def status(
    name: str | None = typer.Argument(None, help="One experiment (default: all)."),
    sync: bool = typer.Option(True, help="First read new exposures from the prediction log."),
    as_json: bool = JsonOption,
) -> None:
    """Exposures per variant and the sample-ratio check of one experiment, or a list of all."""
    with open_project() as project:
        if name is None:
            items = list_experiments(project)["experiments"]
            if as_json:
                emit_json({"experiments": items})
            else:
                table("experiments", ["name", "status", "model", "variants", "metric"],
                      [[e["name"], e["status"], e["model"] or "", ", ".join(v["name"] for v in e["variants"]),
                        e["primary_metric"]] for e in items])
            return
        info = experiment_status(project, name, sync=sync)
    if as_json:
        emit_json(info)
    else:
        table(f"experiment {name} ({info['status']})", ["variant", "weight", "exposed units"],
              [[v["name"], v["weight"], info["exposures"][v["name"]]] for v in info["variants"]])
        console.print(f"SRM p-value {info['srm_p_value']:.3g}; minimum sample "
                      f"{'reached' if info['min_sample_reached'] else 'not reached'} ({info['min_sample_size']})")


def _weights(spec: str | None) -> dict[str, float] | None:
    if not spec:
        return None
    out: dict[str, float] = {}
    for part in spec.split(","):
        k, sep, v = part.partition("=")
        try:
            out[k.strip()] = float(v)
        except ValueError:
            raise InputError("--weights", "use NAME=WEIGHT,NAME=WEIGHT", spec) from None
        if not sep:
            raise InputError("--weights", "use NAME=WEIGHT,NAME=WEIGHT", spec)
    return out


def _read(path: Path) -> Any:
    import pandas as pd

    if not path.is_file():
        raise InputError("--input", "is not a readable file", str(path))
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path)
    except (ValueError, OSError) as exc:
        raise InputError("--input", f"could not be read as CSV or Parquet: {exc}", str(path)) from None


def _show(result: dict[str, Any]) -> None:
    comparisons = result.get("comparisons", [result])
    shown = ""
    if len(comparisons) > 1:
        console.print(f"{len(comparisons)} comparisons, p-values adjusted by {result['correction']}")
    for c in comparisons:
        if c["metric"] != shown:
            shown = c["metric"]
            console.print(f"metric {escape(shown)}: {c['direction']} is better")
        control_, treatment = c["control"], c["treatment"]
        rows = [[s["name"], s["n"], f"{s['mean']:.6g}"] for s in (control_, treatment)]
        table(f"{treatment['name']} vs {control_['name']} ({c['test']})", ["variant", "n", "mean"], rows)
        low, high = (_signed(x, "+.6g") for x in c["ci_abs"])
        adjusted = f" ({c['correction']}-adjusted {c['p_adjusted']:.4g})" if len(comparisons) > 1 else ""
        console.print(f"lift {c['lift_abs']:+.6g} ({1 - c['alpha']:.0%} CI {low} … {high}), "
                      f"relative {_signed(c['lift_rel'], '+.2%')}; statistic {_signed(c['statistic'], '.4f')}, "
                      f"p-value {c['p_value']:.4g}{adjusted}; SRM p-value {c['srm_p_value']:.3g}")
        console.print(f"[bold]{c['decision']}[/]: {escape(c['reason'])}")
    for t in result.get("treatments", []):
        console.print(f"{escape(t['treatment'])} across the metrics: [bold]{t['decision']}[/]: {escape(t['reason'])}")


def _signed(value: float | None, spec: str) -> str:
    # as_dict() writes an infinite statistic or interval end as null (JSON has no infinity)
    return "n/a" if value is None else format(value, spec)


@app.command()
def analyze(
    name: str | None = typer.Argument(None, help="A stored experiment on a served model (read from the logs)."),
    input: Path | None = typer.Option(None, "--input", help="CSV or Parquet log, one row per unit or event."),
    variant_column: str = typer.Option("variant", "--variant-column", help="Column naming the variant."),
    metric: list[str] = typer.Option([], "--metric", help="Metric column (0/1 → pooled z-test, else Welch); "
                                     "repeat it to decide on several metrics at once."),
    control: str | None = typer.Option(None, "--control", help="Control variant (default: control/A/first)."),
    unit_column: str | None = typer.Option(None, "--unit-column",
                                           help="Unit column: rows pooled per unit, delta-method ratio metric."),
    test: str | None = typer.Option(None, "--test", help="ztest, welch or sequential (default by metric)."),
    direction: str | None = typer.Option(None, "--direction",
                                         help=_DIRECTION_HELP + " With NAME: overrides the stored direction."),
    alpha: float = typer.Option(0.05, "--alpha", help="Significance level."),
    weights: str | None = typer.Option(None, "--weights", help="Planned split for the SRM check: A=50,B=50."),
    min_sample_size: int | None = typer.Option(None, "--min-sample-size",
                                               help="Units per variant planned (default: for a 10% lift)."),
    correction: str | None = typer.Option(None, "--correction", help=_CORRECTION_HELP
                                          + " With NAME: overrides the stored correction."),
    as_json: bool = JsonOption,
) -> None:
    """Compare every treatment with the control and decide: keep control, switch, or continue.

    With several treatments or metrics, the p-values are adjusted across all the comparisons
    (``--correction``), and each decision reads its adjusted p-value.
    """
    if test is not None and test not in ("ztest", "welch", "sequential"):
        raise InputError("--test", "must be ztest, welch or sequential", test)
    if correction is not None and correction not in CORRECTIONS:
        raise InputError("--correction", f"must be one of {', '.join(CORRECTIONS)}", correction)
    if input is not None:
        if not metric:
            raise InputError("--metric", "name the metric column to compare")
        result = analyze_frame(_read(input), variant_column=variant_column,
                               metric=metric[0] if len(metric) == 1 else metric, control=control,
                               unit_column=unit_column, test=test, alpha=alpha, weights=_weights(weights),
                               min_sample_size=min_sample_size, direction=direction,
                               correction=correction).as_dict()
    elif name is not None:
        if metric:
            raise InputError("--metric", "a stored experiment is analysed on its own metric; leave --metric out",
                             metric)
        with open_project() as project:
            result = analyze_experiment(project, name, test=test, direction=direction, correction=correction)
    else:
        raise InputError("--input", "give a log file with --input FILE, or the name of a stored experiment")
    if as_json:
        emit_json(result)
    else:
        _show(result)


@app.command()
def stop(
    name: str = typer.Argument(..., help="Experiment to stop."),
    winner: str | None = typer.Option(None, "--winner", help="Variant that keeps all traffic (default: control)."),
    as_json: bool = JsonOption,
) -> None:
    """Stop an experiment; on a served model, all traffic goes to the winner."""
    with open_project() as project:
        exp = stop_experiment(project, name, winner=winner, actor="cli")
    if as_json:
        emit_json(exp)
    else:
        console.print(f"experiment [bold]{escape(name)}[/] stopped; winner "
                      f"{escape(str((exp['result'] or {}).get('winner')))}")
