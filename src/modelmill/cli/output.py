"""How every command reports: a rich table for people, exactly one JSON object with ``--json``."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from modelmill.errors import ModelmillError

console = Console()
err_console = Console(stderr=True)

JsonOption = typer.Option(False, "--json", help="Print exactly one JSON object on stdout, nothing else.")


def _default(obj: Any) -> Any:
    if hasattr(obj, "isoformat"):
        return obj.isoformat()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, set | frozenset):
        return sorted(obj)
    return str(obj)


def emit_json(obj: dict[str, Any]) -> None:
    """Write one JSON object and a newline to stdout."""
    sys.stdout.write(json.dumps(obj, default=_default, allow_nan=False) + "\n")
    sys.stdout.flush()


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    t = Table(title=title, title_justify="left")
    for col in columns:
        t.add_column(col)
    for row in rows:
        t.add_row(*("" if v is None else str(v) for v in row))
    console.print(t)


def fail(exc: ModelmillError, *, as_json: bool, code: int = 1) -> None:
    """Report an error without a traceback and exit non-zero."""
    if as_json:
        emit_json(exc.to_dict())
    else:
        err_console.print(f"[bold red]error:[/] {exc.message}", highlight=False)
    raise SystemExit(code)
