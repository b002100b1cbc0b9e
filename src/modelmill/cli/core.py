"""``modelmill init``, ``modelmill doctor`` and ``modelmill db``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.text import Text

from modelmill.cli.output import JsonOption, console, emit_json, table
from modelmill.config import CONFIG_FILE, load_settings
from modelmill.doctor import check_all
from modelmill.errors import ConflictError
from modelmill.store import Database

TEMPLATE = '''\
# modelmill configuration. Environment variables MODELMILL_<KEY> override these
# (MODELMILL_HOME, MODELMILL_DB, MODELMILL_ONLINE, ...).

# Where the embedded backends keep their files; relative to this file.
home = ".modelmill"

[backends]
# Metadata (registry, runs, rollouts, experiments): SQLite file or PostgreSQL.
# db = "postgresql://postgres@127.0.0.1:5432/modelmill"
# Online feature store: SQLite file or Redis.
# online = "redis://127.0.0.1:6379/0"
# Prediction cache: "memory://" (in-process LRU), "none://" or Redis.
# cache = "redis://127.0.0.1:6379/1"
# Event broker: local append-only log, NATS JetStream, Redis Streams or Kafka.
# broker = "nats://127.0.0.1:4222"
# Model artifacts and the offline (Parquet) store: a folder or any fsspec URL.
# artifacts = "s3://my-bucket/modelmill/artifacts"
# offline = "s3://my-bucket/modelmill/offline"
'''

db_app = typer.Typer(help="The metadata database.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.command()(init)
    app.command()(doctor)
    app.add_typer(db_app, name="db")


def init(
    path: Path = typer.Argument(Path("."), help="Folder to initialise."),
    force: bool = typer.Option(False, help="Overwrite an existing modelmill.toml."),
    as_json: bool = JsonOption,
) -> None:
    """Write a commented modelmill.toml and create the metadata database."""
    target = path / CONFIG_FILE
    if target.exists() and not force:
        raise ConflictError(f"{target} exists; pass --force to overwrite it", path=str(target))
    path.mkdir(parents=True, exist_ok=True)
    target.write_text(TEMPLATE)
    settings = load_settings(cwd=path)
    db = Database(settings.db).open()
    try:
        db.upgrade()
        version = sorted(db.schema_version())
    finally:
        db.close()
    if as_json:
        emit_json({"config": str(target.absolute()), "home": str(settings.home), "schema_version": version})
    else:
        console.print(Text.assemble("wrote ", (str(target), "bold"),
                                    f"; metadata database at {settings.as_dict()['db']}"))


def doctor(as_json: bool = JsonOption) -> None:
    """Check every configured backend; exits 1 when one is unreachable or damaged."""
    settings = load_settings()
    results = check_all(settings)
    ok = all(r.ok for r in results)
    if as_json:
        emit_json({"ok": ok, "config": str(settings.source) if settings.source else None,
                   "backends": {r.name: r.as_dict() for r in results}})
    else:
        rows = []
        for r in results:
            if not r.reachable:
                status = Text.assemble(("unreachable", "red"), f": {r.reason}")
            elif r.problems:
                status = Text.assemble(("damaged", "red"), f": {'; '.join(r.problems)}")
            else:
                status = Text("ok", style="green")
            extra = ", ".join(str(v) for v in r.details.get("schema_version", []))
            rows.append([r.name, r.url, status, "" if r.latency_ms is None else f"{r.latency_ms:.2f}", extra])
        table("modelmill doctor", ["backend", "url", "status", "latency ms", "schema"], rows)
    if not ok:
        raise typer.Exit(1)


@db_app.command("upgrade")
def db_upgrade(as_json: bool = JsonOption) -> None:
    """Apply every pending migration (SQLite and PostgreSQL alike)."""
    settings = load_settings()
    db = Database(settings.db).open()
    try:
        before = sorted(db.schema_version())
        db.upgrade()
        after = sorted(db.schema_version())
    finally:
        db.close()
    if as_json:
        emit_json({"db": settings.as_dict()["db"], "before": before, "after": after})
    else:
        console.print(f"schema: {', '.join(before) or '(empty)'} -> {', '.join(after)}")


@db_app.command("status")
def db_status(as_json: bool = JsonOption) -> None:
    """Show the schema version of the database and of the code."""
    settings = load_settings()
    db = Database(settings.db).open()
    try:
        current, heads = sorted(db.schema_version()), sorted(db.code_heads())
    finally:
        db.close()
    if as_json:
        emit_json({"db": settings.as_dict()["db"], "current": current, "expected": heads, "up_to_date": current == heads})
    else:
        console.print(f"database: {', '.join(current) or '(empty)'}; code: {', '.join(heads)}")
