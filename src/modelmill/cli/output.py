"""How every command reports: a rich table for people, exactly one JSON object with ``--json``.

Text that comes from data (names, reasons, error messages) is printed literally: rich would read
``[training] pipelines`` as a style tag and swallow it. So ``table`` escapes every plain string cell and
``fail`` escapes the message; a cell that is meant to be styled is passed as a ``rich.text.Text``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import typer
from rich.console import Console, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

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
    """Print a table; strings are shown as they are, ``Text`` cells keep their style."""
    t = Table(title=Text(title), title_justify="left")
    for col in columns:
        t.add_column(Text(col))
    for row in rows:
        t.add_row(*(_cell(v) for v in row))
    console.print(t)


def _cell(value: Any) -> RenderableType:
    if value is None:
        return ""
    if isinstance(value, Text):
        return value
    return Text(str(value))


def fail(exc: ModelmillError, *, as_json: bool, code: int = 1) -> None:
    """Report an error without a traceback and exit non-zero."""
    if as_json:
        emit_json(exc.to_dict())
    else:
        # Not wrapped at the console's width, so a path or a URL in it can be copied whole.
        err_console.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False, soft_wrap=True)
    raise SystemExit(code)
