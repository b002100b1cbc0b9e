"""``modelmill models list|show|alias|load`` and ``modelmill gate``."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import typer

from modelmill import control
from modelmill.cli.output import JsonOption, console, emit_json, table
from modelmill.errors import InputError
from modelmill.project import open_project
from modelmill.registry import Registry, parse_ref, read_labelled
from modelmill.registry import gate as run_gate

models_app = typer.Typer(help="The model registry: versions, aliases, lineage, verified loading.",
                         no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
    app.command("gate")(gate)


def _when(ts: float | None) -> str:
    return "" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


@models_app.command("list")
def list_models(
    name: str = typer.Argument(None, help="A model name: list its versions instead of the models."),
    as_json: bool = JsonOption,
) -> None:
    """List registered models, or the versions of one model."""
    with open_project() as project:
        out = control.list_models(project) if name is None else control.list_versions(project, name)
    if as_json:
        emit_json(out)
        return
    if name is None:
        table("models", ["name", "latest", "aliases", "updated"],
              [[m["name"], m["latest_version"], ", ".join(f"{a}->{v}" for a, v in m["aliases"].items()),
                _when(m["updated_at"])] for m in out["models"]])
        return
    table(f"versions of {name}", ["version", "flavor", "aliases", "run", "metrics", "gate", "created"],
          [[v["version"], v["flavor"], ", ".join(v["aliases"]), v["run_id"] or "",
            ", ".join(f"{k}={x:.4g}" for k, x in v["metrics"].items()), _gate_word(v["gate"]),
            _when(v["created_at"])] for v in out["versions"]])


@models_app.command("show")
def show(
    ref: str = typer.Argument(..., help="NAME, NAME@VERSION or NAME@ALIAS."),
    as_json: bool = JsonOption,
) -> None:
    """Everything about one version: signature, metrics, gate decisions, alias moves and its lineage (run,
    data, features)."""
    with open_project() as project:
        out = control.version_detail(project, ref)
    if as_json:
        emit_json(out)
        return
    signature = out["signature"]
    rows: list[list[Any]] = [
        ["version", out["ref"]], ["flavor", out["flavor"]], ["aliases", ", ".join(out["aliases"])],
        ["artifact", f"{out['artifact_path']} ({out['size']} bytes)"], ["sha256", out["sha256"]],
        ["inputs", ", ".join(f"{f['name']}:{f['dtype']}" for f in signature.get("inputs", []))],
        ["outputs", ", ".join(f"{f['name']}:{f['dtype']}" for f in signature.get("outputs", []))],
        ["run", out["run_id"] or ""], ["created", _when(out["created_at"])], ["gate", _gate_word(out["gate"])],
    ]
    rows += [[f"metric {k}", f"{v:.6g}"] for k, v in out["metrics"].items()]
    rows += [[f"lineage {k}", v] for k, v in out["lineage"].items()]
    rows += [[f"tag {k}", v] for k, v in out["tags"].items()]
    rows += [[f"gate at {_when(g['at'])}", f"{_gate_word(g['decision'])} by {g['actor']}"]
             for g in out["gate_history"]]
    table(f"model {out['ref']}", ["field", "value"], rows)


@models_app.command("alias")
def alias(
    name: str = typer.Argument(..., help="Model name."),
    alias_name: str = typer.Argument(..., metavar="ALIAS", help="production, challenger, shadow, canary or your own."),
    version: int = typer.Argument(None, help="Version to point the alias at; omit to show the alias and its history."),
    reason: str = typer.Option("", "--reason", help="Why; kept in the audit trail."),
    actor: str = typer.Option("cli", "--actor", help="Who; kept in the audit trail."),
    delete: bool = typer.Option(False, "--delete", help="Remove the alias."),
    as_json: bool = JsonOption,
) -> None:
    """Set, delete or show an alias; every change is audited (who, when, why)."""
    with open_project() as project:
        registry = Registry(project)
        if delete:
            registry.delete_alias(name, alias_name, actor=actor, reason=reason)
        elif version is not None:
            registry.set_alias(name, alias_name, version, actor=actor, reason=reason)
        current = registry.aliases(name).get(alias_name)
        history = registry.alias_history(name, alias_name)
    if as_json:
        emit_json({"name": name, "alias": alias_name, "version": current,
                   "history": [c.to_dict() for c in history]})
        return
    console.print(f"{name}@{alias_name} -> {current if current is not None else '(not set)'}")
    table("history", ["when", "who", "version", "previous", "why"],
          [[_when(c.at), c.actor, c.version if c.version is not None else "(deleted)", c.previous, c.reason]
           for c in history])


@models_app.command("load")
def load(
    ref: str = typer.Argument(..., help="NAME, NAME@VERSION or NAME@ALIAS."),
    data: Path = typer.Option(None, "--data", help="A .parquet/.csv with the input columns: predict its first rows."),
    rows: int = typer.Option(5, "--rows", min=1, max=10_000, help="How many rows of --data to predict."),
    threads: int = typer.Option(None, "--threads", min=1, help="onnxruntime intra-op threads."),
    as_json: bool = JsonOption,
) -> None:
    """Load a version (verifying its sha256) and optionally predict a few rows."""
    with open_project() as project:
        registry = Registry(project)
        mv = registry.resolve(ref)
        t0 = time.perf_counter()
        model = registry.load(mv, threads=threads, cache=False)
        load_ms = (time.perf_counter() - t0) * 1000
        predictions = None
        if data is not None:
            frame = read_labelled(data, None)
            missing = [n for n in mv.signature.input_names if n not in frame.columns]
            if missing:
                raise InputError("--data", f"lacks the input columns of {mv.ref}: {', '.join(missing)}", str(data))
            X = frame[mv.signature.input_names].head(rows).to_numpy(dtype="float64")
            predictions = model.predict(X).tolist()
    out = {"name": mv.name, "version": mv.version, "flavor": mv.flavor, "sha256": mv.sha256, "verified": True,
           "load_ms": round(load_ms, 3), "signature": mv.signature.to_dict(), "predictions": predictions}
    if as_json:
        emit_json(out)
        return
    console.print(f"loaded {mv.ref} ({mv.flavor}) in {load_ms:.1f} ms; sha256 verified")
    if predictions is not None:
        console.print("predictions: " + ", ".join(f"{p:.6g}" for p in predictions))


def gate(
    candidate: str = typer.Option(..., "--candidate", help="NAME@VERSION of the model to judge."),
    against: str = typer.Option(None, "--against", help="NAME@production (or any reference) to compare with."),
    data: Path = typer.Option(..., "--data", help="Labelled rows: .parquet or .csv."),
    label: str = typer.Option("label", "--label", help="The label column of --data."),
    minimum: list[str] = typer.Option(None, "--min", help="METRIC=VALUE the candidate must reach, e.g. auc=0.70. "
                                      "The metrics are the candidate's task's: binary auc, accuracy, logloss, brier, "
                                      "calibration_error…; multiclass logloss, macro_f1, accuracy; regression rmse, "
                                      "mae, r2."),
    maximum: list[str] = typer.Option(None, "--max", help="METRIC=VALUE the candidate must not exceed, e.g. logloss=0.5."),
    max_regression: list[str] = typer.Option(None, "--max-regression",
                                             help="METRIC=VALUE: how much worse than --against it may be."),
    actor: str = typer.Option("gate", "--actor", help="Who runs the gate; kept in the audit trail."),
    as_json: bool = JsonOption,
) -> None:
    """The validation gate: exit 0 to accept, 1 to reject; the decision is recorded on the version. The
    metrics are the candidate's task's (binary, multiclass or regression); a threshold on a metric its task
    does not have is refused (exit 2)."""
    parse_ref(candidate)
    frame = read_labelled(data, label)
    with open_project() as project:
        result = run_gate(Registry(project), candidate, data=frame, against=against, label=label,
                          minimum=minimum or None, maximum=maximum or None, max_regression=max_regression or None,
                          actor=actor)
    if as_json:
        emit_json(result.to_dict())
    else:
        colour = "green" if result.accepted else "red"
        console.print(f"[bold {colour}]{'ACCEPT' if result.accepted else 'REJECT'}[/] {result.reason}",
                      highlight=False)
    if not result.accepted:
        raise typer.Exit(1)


def _gate_word(decision: Mapping[str, Any] | None) -> str:
    if not decision:
        return ""
    return "accepted" if decision.get("accepted") else "rejected"
