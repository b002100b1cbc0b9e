"""``modelmill labels ingest FILE --model NAME``: ground truth for logged predictions, from a file.

The file (CSV, Parquet or JSONL) has a column ``id`` (or ``request_id``): the prediction's id, a ``label``
(a number) and optionally ``ts``, when the outcome was observed (default: now). The label with the newest
``ts`` wins; see :mod:`modelmill.store.feedback`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import typer
from rich.markup import escape

from modelmill.cli.output import JsonOption, console, emit_json
from modelmill.errors import InputError
from modelmill.project import open_project
from modelmill.store import write_labels

app = typer.Typer(help="Ground truth: send the labels of logged predictions.", no_args_is_help=True)

_SUFFIXES = (".csv", ".parquet", ".pq", ".jsonl", ".ndjson")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="labels")


def read_labels(path: Path) -> list[dict[str, Any]]:
    """The rows of a label file as ``{"id", "label", "ts"}``, or an InputError naming the column or the row."""
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
    labels = pd.to_numeric(frame["label"], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(labels)
    if bad.any():
        row = int(bad.argmax())
        raise InputError("label", f"must be a number in every row; row {row + 1} of {path.name} has "
                                  f"{frame['label'].iloc[row]!r}")
    ts = frame["ts"] if "ts" in frame.columns else pd.Series([None] * len(frame), dtype=object)
    return [{"id": None if _missing(i) else str(i), "label": float(y), "ts": None if _missing(t) else t}
            for i, y, t in zip(frame[key].tolist(), labels.tolist(), ts.tolist(), strict=True)]


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


@app.command("ingest")
def ingest_cmd(
    file: Path = typer.Argument(..., help="A .csv, .parquet or .jsonl file: id (or request_id), label, optional ts."),
    model: str = typer.Option(..., "--model", "-m", help="The model whose predictions the labels are for."),
    as_json: bool = JsonOption,
) -> None:
    """Store the labels of FILE; counts how many were accepted, duplicates, or for no logged prediction."""
    rows = read_labels(file)
    with open_project() as project:
        counts = write_labels(project.offline, model, rows)
    out = {"model": model, "file": str(file), "rows": len(rows), **counts.as_dict()}
    if as_json:
        emit_json(out)
        return
    console.print(f"{len(rows):,} labels for {escape(model)}: {counts.accepted:,} accepted, "
                  f"{counts.duplicates:,} duplicates, {counts.unknown:,} unknown"
                  + (" (no logged prediction has that id yet; they join once one does)" if counts.unknown else ""))
