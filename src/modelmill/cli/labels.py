"""``modelmill labels ingest FILE --model NAME`` and ``modelmill labels consume``: ground truth for logged
predictions, from a file or from a broker's stream.

The file (CSV, Parquet or JSONL) has a column ``id`` (or ``request_id``): the prediction's id, a ``label``
and optionally ``ts``, when the outcome was observed (default: now). Each label must fit the task of the
model's newest version (:func:`modelmill.store.feedback.label_task`: 0/1 for a binary classifier), checked
by the same function as ``POST /v1/models/{name}/labels``; a bad one is an error naming its row, and nothing
is stored. The label with the newest ``ts`` wins; see :mod:`modelmill.store.feedback`. ``consume`` reads
events ``{"model", "id", "label", "ts"?}`` from a stream (:mod:`modelmill.ingest.labels`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import typer
from rich.markup import escape

from modelmill.cli.output import JsonOption, console, emit_json
from modelmill.errors import InputError
from modelmill.project import open_project
from modelmill.store import write_labels
from modelmill.store.feedback import model_task

app = typer.Typer(help="Ground truth: send the labels of logged predictions.", no_args_is_help=True)

_SUFFIXES = (".csv", ".parquet", ".pq", ".jsonl", ".ndjson")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="labels")


def read_labels(path: Path) -> list[dict[str, Any]]:
    """The rows of a label file as ``{"id", "label", "ts"}``, or an InputError naming a missing column.

    The labels are checked later, against the model's task, by :func:`modelmill.store.write_labels`.
    """
    suffix = path.suffix.lower()
    if suffix not in _SUFFIXES:
        raise InputError("FILE", f"must end in {', '.join(_SUFFIXES)}", str(path))
    if not path.is_file():
        raise InputError("FILE", "does not exist or is not a file", str(path))
    ids = {"id": str, "request_id": str}
    try:
        if suffix == ".csv":
            frame = pd.read_csv(path, dtype=ids, keep_default_na=True)
        elif suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        else:
            frame = pd.DataFrame(_jsonl(path))
    except (ValueError, OSError, UnicodeDecodeError) as exc:  # pandas' parse errors are ValueErrors
        raise InputError("FILE", f"could not be read as {suffix[1:]}: {exc}", str(path)) from None
    key = "id" if "id" in frame.columns else "request_id" if "request_id" in frame.columns else None
    columns = ", ".join(map(str, frame.columns)) or "none"
    if key is None:
        raise InputError("id", f"{path.name} has no id (or request_id) column, the prediction's id; "
                               f"its columns: {columns}")
    if "label" not in frame.columns:
        raise InputError("label", f"{path.name} has no label column; its columns: {columns}")
    ts = frame["ts"] if "ts" in frame.columns else pd.Series([None] * len(frame), dtype=object)
    labels = frame["label"].tolist()
    if suffix == ".csv":  # text has no types: "1", "0.5", "true" are what they read as
        labels = [_cell(y) for y in labels]
    return [{"id": None if _missing(i) else str(i), "label": y, "ts": None if _missing(t) else t}
            for i, y, t in zip(frame[key].tolist(), labels, ts.tolist(), strict=True)]


def _cell(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return float(text)
    except ValueError:
        return value  # refused by the label check, which names the row


def _missing(value: Any) -> bool:
    return value is None or value is pd.NaT or (isinstance(value, float) and math.isnan(value))


def _jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open("rb") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError:
                raise InputError("FILE", f"line {n} of {path.name} is not JSON", line[:80].decode(errors="replace")) \
                    from None
            if not isinstance(row, dict):
                raise InputError("FILE", f"line {n} of {path.name} must be a JSON object", row)
            rows.append(row)
    return rows


def _row(i: int) -> str:
    return f"row {i + 1}"


@app.command("ingest")
def ingest_cmd(
    file: Path = typer.Argument(..., help="A .csv, .parquet or .jsonl file: id (or request_id), label, optional ts."),
    model: str = typer.Option(..., "--model", "-m", help="The model whose predictions the labels are for."),
    as_json: bool = JsonOption,
) -> None:
    """Store the labels of FILE; counts how many were accepted, duplicates, or for no logged prediction.

    Each label must fit the task of the model's newest version (0 or 1 for a binary classifier); a bad
    one is an error naming its row (``row 4.label``, rows counted from 1 below the header), exit 2, and
    nothing is stored. A model nobody registered is an error too.
    """
    from modelmill.registry import Registry

    rows = read_labels(file)
    with open_project() as project:
        task = model_task(Registry(project), model)
        counts = write_labels(project.offline, model, rows, task=task, where=_row)
    out = {"model": model, "file": str(file), "rows": len(rows), **counts.as_dict()}
    if as_json:
        emit_json(out)
        return
    console.print(f"{len(rows):,} labels for {escape(model)}: {counts.accepted:,} accepted, "
                  f"{counts.duplicates:,} duplicates, {counts.unknown:,} unknown"
                  + (" (no logged prediction has that id yet; they join once one does)" if counts.unknown else ""))


@app.command("consume")
def consume_cmd(
    stream: str = typer.Option("labels", help="The stream of label events {\"model\", \"id\", \"label\", \"ts\"?}."),
    broker: str = typer.Option("", help="kafka://, nats://, redis:// or local:// URL (default: the project's)."),
    group: str = typer.Option("modelmill-labels", help="Consumer group: consumers of one group split the stream."),
    consumer: str = typer.Option("", help="Consumer name within the group (default: host-pid)."),
    batch_size: int = typer.Option(10_000, help="Events per micro-batch, at most."),
    max_seconds: float = typer.Option(0.0, help="Stop after this many seconds (0: run until interrupted)."),
    once: bool = typer.Option(False, "--once", help="Stop once the stream has had nothing new for 2 seconds."),
    as_json: bool = JsonOption,
) -> None:
    """Store the label events of a broker's stream: each checked against its model's task, the ones that do
    not fit sent to the dead letters (`ingest dead-letters --schema labels`), offsets committed after the write."""
    import signal

    from modelmill.ingest.labels import LabelConsumer
    from modelmill.ingest.source import open_source

    if max_seconds < 0:
        raise InputError("--max-seconds", "must be 0 (no limit) or more", max_seconds)
    with open_project() as project:
        url = broker or project.settings.broker
        source = open_source(url, stream=stream, group=group, consumer=consumer or None)
        worker = LabelConsumer(project, source, batch_size=batch_size)
        previous = {sig: signal.signal(sig, lambda *_: worker.stop()) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            stats = worker.run(max_seconds=max_seconds or None, once=once)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    if as_json:
        emit_json({"stream": source.stream, "broker": source.url, **stats.as_dict()})
        return
    console.print(f"{stats.polled:,} label events from {escape(source.stream)} in {stats.seconds:.1f}s: "
                  f"{stats.accepted:,} accepted, {stats.duplicates:,} duplicates, {stats.unknown:,} unknown, "
                  f"{stats.dead_letters:,} dead letters")


@app.command("replay-dead-letters")
def replay_cmd(
    stream: str = typer.Option("", help="Only this stream's dead letters (default: every label stream's)."),
    as_json: bool = JsonOption,
) -> None:
    """Check the dead-lettered label events again (after registering their model or recording its task) and
    store those that pass now; the others stay, with their new reason."""
    from modelmill.ingest.labels import replay_label_dead_letters

    with open_project() as project:
        result = replay_label_dead_letters(project, stream=stream or None)
    if as_json:
        emit_json(result.as_dict())
        return
    console.print(f"{result.accepted:,} accepted, {result.duplicates:,} duplicates, {result.unknown:,} unknown, "
                  f"{result.still_failing:,} still failing")
