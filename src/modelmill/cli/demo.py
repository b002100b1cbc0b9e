"""``modelmill demo``: the whole loop end to end on real data."""

from __future__ import annotations

import typer

from modelmill.cli.output import JsonOption, console, emit_json
from modelmill.doctor import check_all
from modelmill.project import open_project


def register(app: typer.Typer) -> None:
    app.command()(demo)


def demo(
    db: str = typer.Option(None, help="Metadata database URL (default: the embedded SQLite file)."),
    online: str = typer.Option(None, help="Online store URL, e.g. redis://127.0.0.1:6379/0."),
    broker: str = typer.Option(None, help="Broker URL, e.g. nats://127.0.0.1:4222."),
    as_json: bool = JsonOption,
) -> None:
    """Run the end-to-end demo (a short foundation flow until every stage has landed)."""
    with open_project(db=db, online=online, broker=broker) as project:
        health = check_all(project.settings)
        ref = project.artifacts.put_bytes("demo/hello.txt", b"modelmill")
        round_trip = project.artifacts.get_bytes("demo/hello.txt") == b"modelmill"
        project.online.set("demo:hello", b"world")
        online_ok = project.online.get("demo:hello") == b"world"
    result = {"backends": {h.name: h.reachable for h in health}, "artifact_sha256": ref.sha256,
              "artifact_round_trip": round_trip, "online_round_trip": online_ok}
    if as_json:
        emit_json(result)
    else:
        console.print(result)
    if not (round_trip and online_ok and all(h.reachable for h in health)):
        raise typer.Exit(1)
