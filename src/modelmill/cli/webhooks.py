"""``modelmill webhooks``: the webhook outbox, listed with each delivery's status, delivered, retried."""

from __future__ import annotations

import datetime as dt
import logging
import signal
from typing import Any

import typer

from modelmill.cli.output import JsonOption, console, emit_json, table
from modelmill.events import Attempt, Deliverer, list_deliveries, load_webhooks, prune, retry_failed
from modelmill.project import open_project

app = typer.Typer(help="Webhooks: signed POSTs of registry and loop events, from an outbox table.",
                  no_args_is_help=True)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="webhooks")


def _when(ts: float | None) -> str:
    return "" if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


@app.command("list")
def list_(
    status: str = typer.Option(None, "--status", help="Only deliveries in this status: pending, delivering, "
                                                      "delivered or failed."),
    kind: str = typer.Option(None, "--kind", help="Only events of this kind (such as alias.set)."),
    limit: int = typer.Option(100, "--limit", help="At most this many, newest first."),
    as_json: bool = JsonOption,
) -> None:
    """The outbox, newest first: each event, its webhook, its status, attempts and last error."""
    with open_project() as project:
        out = list_deliveries(project, status=status, kind=kind, limit=limit)
    if as_json:
        emit_json(out)
        return
    table("webhook deliveries", ["id", "kind", "subject", "webhook", "status", "attempts", "next / done",
                                 "last error"],
          [[d["id"], d["kind"], d["subject"], d["webhook"], d["status"], d["attempts"],
            _when(d["delivered_at"] if d["status"] == "delivered" else
                  d["next_at"] if d["status"] == "pending" else d["updated_at"]), d["last_error"] or ""]
           for d in out["deliveries"]])
    console.print(", ".join(f"{n} {s}" for s, n in out["counts"].items()), highlight=False)


@app.command("deliver")
def deliver(
    once: bool = typer.Option(False, "--once", help="One pass over the due deliveries, then exit."),
    max_seconds: float = typer.Option(None, "--max-seconds", help="Stop after this many seconds."),
    interval: float = typer.Option(2.0, "--interval", help="Seconds between passes."),
    as_json: bool = JsonOption,
) -> None:
    """POST the due deliveries, signed; retry failures with backoff. Several may run at once.

    With --json it prints one JSON object at the end: the attempts made. It exits 1 when a delivery failed
    for good (its max_attempts spent) during this run.
    """
    made: list[Attempt] = []
    with open_project() as project:
        load_webhooks(project.settings)  # a bad [[webhooks]] table is an error now, before any pass
        deliverer = Deliverer(project)

        def stop(*_: Any) -> None:
            deliverer.stop()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        if not as_json:
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

        def show(attempts: list[Attempt]) -> None:
            made.extend(attempts)
            if not as_json:
                for a in attempts:
                    console.print(f"{a.id} {a.kind} -> {a.webhook}: {a.status} (attempt {a.attempt})"
                                  + (f": {a.error}" if a.error else ""), highlight=False, markup=False)
        try:
            deliverer.run(once=once, max_seconds=max_seconds, interval_s=interval, on_pass=show)
        finally:
            deliverer.close()
    failed = [a for a in made if a.status == "failed"]
    if as_json:
        emit_json({"attempts": [a.as_dict() for a in made], "failed": len(failed)})
    elif not made:
        console.print("nothing due", highlight=False)
    if failed:
        raise typer.Exit(1)


@app.command("retry")
def retry(
    ids: list[int] = typer.Argument(None, help="Delivery ids (default: every failed one)."),
    as_json: bool = JsonOption,
) -> None:
    """Put failed deliveries back to pending, due now, with their attempts counted from zero."""
    with open_project() as project:
        n = retry_failed(project, ids or None)
    if as_json:
        emit_json({"requeued": n})
    else:
        console.print(f"{n} failed deliver{'y' if n == 1 else 'ies'} pending again", highlight=False)


@app.command("prune")
def prune_(
    older_than: str = typer.Option("7d", "--older-than", help="Delivered more than this long ago: '12h', '7d'."),
    as_json: bool = JsonOption,
) -> None:
    """Delete delivered deliveries older than --older-than; pending and failed ones are always kept."""
    from modelmill.monitoring.performance import parse_duration

    seconds = parse_duration(older_than, field="--older-than")
    with open_project() as project:
        n = prune(project, older_than_s=seconds)
    if as_json:
        emit_json({"deleted": n})
    else:
        console.print(f"{n} delivered deliver{'y' if n == 1 else 'ies'} deleted", highlight=False)
