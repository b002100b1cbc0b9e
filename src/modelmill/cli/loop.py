"""``modelmill loop`` and ``modelmill loop status``: every ``[models.NAME]`` of modelmill.toml, run and shown."""

from __future__ import annotations

import logging
import signal
from typing import Any

import typer

from modelmill.cli.output import JsonOption, console, emit_json, err_console, table
from modelmill.loop import Lease, Loop, load_loop_config, loop_status
from modelmill.project import open_project

app = typer.Typer(help="Run every [models.NAME] loop of modelmill.toml: monitor, retrain, gate, roll out.",
                  invoke_without_command=True)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="loop")


@app.callback()
def loop(
    ctx: typer.Context,
    once: bool = typer.Option(False, "--once", help="Run one round and exit."),
    max_seconds: float = typer.Option(None, "--max-seconds", help="Stop after this many seconds."),
    interval: float = typer.Option(30.0, "--interval", help="Seconds between rounds (a follower's retry too)."),
    lease_ttl: float = typer.Option(30.0, "--lease-ttl", help="Seconds the leader's lease lasts unrenewed."),
    holder: str = typer.Option(None, "--holder", help="This process's name in the lease (default host:pid:random)."),
    as_json: bool = JsonOption,
) -> None:
    """Run the loop of every configured model; one leader at a time (a second `modelmill loop` follows).

    Without --once it runs until interrupted or --max-seconds. With --json it prints one JSON object at
    the end: the last round, and the errors of its phases. It exits 1 when a phase of the last round failed.
    """
    if ctx.invoked_subcommand is not None:
        return
    project = open_project()
    try:
        config = load_loop_config(project.settings)
        if not config.models:
            from modelmill.errors import ConfigError

            raise ConfigError("models", None, "at least one [models.NAME] table in modelmill.toml "
                              "(see `modelmill loop --help` and the README's section on the loop)")
        lease = Lease(project.db, holder=holder, ttl=lease_ttl)
        runner = Loop(project, config, lease=lease, interval=interval)
        runner.start()  # a wrong pipeline or gate output is an error now, before any round
        if not as_json:
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

        def stop(*_: Any) -> None:
            runner.stop()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        last = runner.run(once=once, max_seconds=max_seconds, on_round=None if as_json else _show)
    finally:
        project.close()
    errors = _errors(last)
    if as_json:
        emit_json({"rounds": runner.rounds, "last_round": last, "errors": errors})
    else:
        for e in errors:
            err_console.print(f"error: {e}", highlight=False, soft_wrap=True)
    if errors:
        raise typer.Exit(1)


def _errors(out: dict[str, Any]) -> list[str]:
    """Each phase of the last round that failed, as ``model: phase: message`` (the exit status is 1 then)."""
    found = []
    if isinstance(out.get("scheduler"), dict) and "error" in out["scheduler"]:
        found.append(f"scheduler: {out['scheduler']['error']}")
    if isinstance(out.get("webhooks"), dict) and "error" in out["webhooks"]:
        found.append(f"webhooks: {out['webhooks']['error']}")
    for name, phases in out.get("models", {}).items():
        for phase, result in phases.items():
            if isinstance(result, dict) and "error" in result:
                found.append(f"{name}: {phase}: {result['error']}")
    return found


def _show(out: dict[str, Any]) -> None:
    if not out.get("leader"):
        why = "lost the lease" if out.get("lost") else f"following {out.get('following')}"
        err_console.print(f"loop {out['holder']}: {why}", highlight=False)
        return
    for name, phases in out["models"].items():
        mon = phases.get("monitor") or {}
        roll = phases.get("rollout")
        parts = [f"monitor {mon.get('error') or mon.get('status')}"]
        parts += [f"alert {a['rule']} {a['status']}" for a in mon.get("alerts_changed", [])]
        parts += [f"trigger {d['trigger_id']} {d['status']}" for d in phases.get("decisions") or []
                  if isinstance(d, dict) and "trigger_id" in d]
        if roll:
            parts.append(f"rollout {roll.get('action') or roll.get('error')} at {roll.get('stage')}")
        err_console.print(f"{name}: " + "; ".join(parts), highlight=False)


@app.command("status")
def status(as_json: bool = JsonOption) -> None:
    """Each configured model's state: leader, last round, versions, rollout, alerts, last trigger."""
    project = open_project()
    try:
        config = load_loop_config(project.settings)
        payload = loop_status(project, config)
    finally:
        project.close()
    if as_json:
        emit_json(payload)
        return
    console.print(f"leader: {payload['leader'] or '(none)'}")
    rows = []
    for name, m in payload["models"].items():
        r = m["rollout"]
        rows.append([name, m["feature_service"], m["latest_version"], m["production"],
                     "" if r is None else f"{r['candidate']} {r['status']} at {r['stage']}",
                     ", ".join(f"{a['rule']} {a['state']}" for a in m["alerts"]),
                     "" if m["last_trigger"] is None else f"{m['last_trigger']['id']} {m['last_trigger']['status']}",
                     "" if m["last_decision"] is None else m["last_decision"]["status"]])
    table("modelmill loop", ["model", "feature service", "latest", "production", "rollout", "alerts",
                             "last trigger", "decision"], rows)
