"""``modelmill rollout start|run|status|promote|rollback``: ship a model version safely."""

from __future__ import annotations

from typing import Any

import typer

from modelmill import control
from modelmill.cli.output import JsonOption, console, emit_json, err_console, table
from modelmill.control.rollouts import guardrails as make_guardrails
from modelmill.errors import InputError
from modelmill.project import open_project
from modelmill.rollout import Step

app = typer.Typer(help="Safe rollout: shadow, canary, gradual, full, with automatic rollback.",
                  no_args_is_help=True)

MetricsOption = typer.Option(None, "--metrics-url",
                             help="The server's /metrics URL, for request and error counts per variant.")
IntervalOption = typer.Option(5.0, "--interval", help="Seconds between guardrail evaluations.")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="rollout")


def _parse_ref(ref: str) -> tuple[str, int]:
    name, sep, version = ref.rpartition("@")
    if not sep or not name or not version.isdigit():
        raise InputError("model", "give NAME@VERSION with a version number, e.g. flights@4", ref)
    return name, int(version)


def _drive(project: Any, model: str, interval: float, max_seconds: float | None, metrics_url: str | None,
           as_json: bool) -> dict[str, Any]:
    def show(step: Step) -> None:
        if not as_json:
            err_console.print(f"[{step.state.current}] {step.action}: {step.reason}", highlight=False)

    return control.drive_rollout(project, model, actor="cli", interval_s=interval, max_seconds=max_seconds,
                                 metrics_url=metrics_url, on_step=show)


def _report(payload: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit_json(payload)
        return
    r = payload["rollout"]
    console.print(f"rollout {r['model']}@{r['candidate']} (baseline {r['baseline']}): [bold]{r['status']}[/] at "
                  f"stage {r['stage']} of {','.join(map(str, r['plan']))}; {r['reason']}")
    if payload.get("events"):
        table("events", ["action", "from", "to", "actor", "reason"],
              [[e["action"], e["from"], e["to"], e["actor"], e["detail"].get("reason", e["detail"].get("note", ""))]
               for e in payload["events"]])


@app.command()
def start(
    ref: str = typer.Argument(..., help="The candidate, NAME@VERSION."),
    plan: str = typer.Option("shadow,5,10,50,100", "--plan", help="Stages: shadow and increasing percentages."),
    min_requests: int = typer.Option(100, "--min-requests", help="Candidate requests a stage needs to pass."),
    stage_seconds: float = typer.Option(60.0, "--stage-seconds", help="Seconds a stage runs at least."),
    baseline: str = typer.Option("production", "--baseline", help="What serves today: an alias or a version."),
    max_error_rate_increase: float = typer.Option(0.01, "--max-error-rate-increase",
                                                  help="Allowed error-rate increase over the baseline."),
    max_latency_ratio: float = typer.Option(1.5, "--max-latency-ratio", help="Allowed p95 latency ratio."),
    latency_slack_ms: float = typer.Option(5.0, "--latency-slack-ms", help="Latency allowed on top of the ratio."),
    max_output_shift: float = typer.Option(0.2, "--max-output-shift", help="Allowed KS distance of outputs."),
    max_label_loss_increase: float = typer.Option(0.02, "--max-label-loss-increase",
                                                  help="Allowed increase of the loss on delayed labels."),
    max_estimated_loss_increase: float | None = typer.Option(
        None, "--max-estimated-loss-increase",
        help="Turn on the estimated_loss guardrail (calibrated binary classifiers): allowed increase of the "
             "expected log loss of the outputs, judged before labels arrive (default: off)."),
    min_samples: int = typer.Option(50, "--min-samples",
                                    help="Observations each guardrail needs before it can pass (until then the "
                                         "stage holds)."),
    off: list[str] = typer.Option([], "--off", help="Turn a guardrail off: error_rate, latency_p95, "
                                  "output_shift or label_loss (repeat for several). Without delayed labels, "
                                  "label_loss has no data and holds every stage."),
    max_stage_seconds: float | None = typer.Option(None, "--max-stage-seconds",
                                                   help="How long a stage may hold for lack of data "
                                                        "(default: 10 x --stage-seconds, at least 600)."),
    on_timeout: str = typer.Option("rollback", "--on-timeout",
                                   help="What a stage past --max-stage-seconds without data does: rollback or hold."),
    detach: bool = typer.Option(False, "--detach", help="Start and return; run `modelmill rollout run` later."),
    interval: float = IntervalOption,
    metrics_url: str | None = MetricsOption,
    as_json: bool = JsonOption,
) -> None:
    """Start a rollout and, unless --detach, drive it to completion or rollback."""
    model, version = _parse_ref(ref)
    base: int | str = int(baseline) if baseline.isdigit() else baseline
    guardrails = make_guardrails({"max_error_rate_increase": max_error_rate_increase,
                                  "max_latency_ratio": max_latency_ratio, "latency_slack_ms": latency_slack_ms,
                                  "max_output_shift": max_output_shift,
                                  "max_label_loss_increase": max_label_loss_increase,
                                  "max_estimated_loss_increase": max_estimated_loss_increase, "min_samples": min_samples},
                                 off=off)
    with open_project() as project:
        started = control.start_rollout(project, model, version, actor="cli", metrics_url=metrics_url, baseline=base,
                                        plan=plan, min_requests=min_requests, stage_seconds=stage_seconds,
                                        guardrails=guardrails, max_stage_seconds=max_stage_seconds,
                                        on_timeout=on_timeout)
        if detach:
            _report(started, as_json)
            return
        payload = _drive(project, model, interval, None, metrics_url, as_json)
        _report(payload, as_json)
    _exit_for(payload)


def _exit_for(payload: dict[str, Any]) -> None:
    """A rolled-back rollout fails the command (exit 1), so a CI/CD pipeline stops there."""
    if payload["rollout"]["status"] == "rolled_back":
        raise typer.Exit(1)


@app.command()
def run(
    model: str = typer.Argument(..., help="Model whose active rollout to drive."),
    interval: float = IntervalOption,
    max_seconds: float | None = typer.Option(None, "--max-seconds", help="Stop driving after this long."),
    metrics_url: str | None = MetricsOption,
    as_json: bool = JsonOption,
) -> None:
    """Resume the controller of an active rollout (after a restart, a detached start, or a start over HTTP)."""
    with open_project() as project:
        payload = _drive(project, model, interval, max_seconds, metrics_url, as_json)
    _report(payload, as_json)
    _exit_for(payload)


@app.command()
def status(
    model: str | None = typer.Argument(None, help="One model (default: every active rollout)."),
    as_json: bool = JsonOption,
) -> None:
    """The rollout of a model with its events, or the list of active rollouts."""
    with open_project() as project:
        if model is None:
            items = control.list_rollouts(project)["rollouts"]
            if as_json:
                emit_json({"rollouts": items})
            else:
                table("active rollouts", ["model", "candidate", "baseline", "stage", "since"],
                      [[r["model"], r["candidate"], r["baseline"], r["stage"], r["stage_started_at"]] for r in items])
            return
        payload = control.rollout_status(project, model)
    _report(payload, as_json)


@app.command()
def promote(
    model: str = typer.Argument(..., help="Model whose rollout moves to its next stage now."),
    reason: str = typer.Option("promoted by hand", "--reason", help="Why (kept in the audit trail)."),
    as_json: bool = JsonOption,
) -> None:
    """Skip the rest of the current stage and move to the next one."""
    with open_project() as project:
        payload = control.promote_rollout(project, model, actor="cli", reason=reason)
    _report(payload, as_json)


@app.command()
def rollback(
    model: str = typer.Argument(..., help="Model whose rollout is abandoned."),
    reason: str = typer.Option("rolled back by hand", "--reason", help="Why (kept in the audit trail)."),
    as_json: bool = JsonOption,
) -> None:
    """Send all traffic back to the baseline and end the rollout."""
    with open_project() as project:
        payload = control.rollback_rollout(project, model, actor="cli", reason=reason)
    _report(payload, as_json)
