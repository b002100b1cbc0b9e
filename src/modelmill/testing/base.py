"""What every check of the kit shares: named sub-checks, failures that name the broken promise, scratch projects."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from modelmill.config import Settings
from modelmill.project import Project

__all__ = ["expect", "run_checks", "scratch_project"]


def expect(condition: object, message: str) -> None:
    """Raise :class:`AssertionError` with ``message`` unless ``condition`` holds (kept under ``python -O``)."""
    if not condition:
        raise AssertionError(message)


def run_checks(contract: str, table: Mapping[str, Callable[..., None]], checks: Iterable[str] | None,
               *args: Any, **kwargs: Any) -> None:
    """Run the sub-checks named in ``checks`` (all of ``table`` when None), in order.

    A failure is re-raised as one :class:`AssertionError` that names the contract, the sub-check and the
    promise it broke (the sub-check's first docstring line), then what was seen.
    """
    names = list(table) if checks is None else list(checks)
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ValueError(f"{contract}: unknown checks {unknown}; the checks are {', '.join(table)}")
    for name in names:
        fn = table[name]
        try:
            fn(*args, **kwargs)
        except AssertionError as exc:
            promise = (fn.__doc__ or name).strip().splitlines()[0]
            raise AssertionError(f"{contract}[{name}] broke its promise: {promise}\n  {exc}") from exc


@contextlib.contextmanager
def scratch_project(project: Project | None = None) -> Iterator[Project]:
    """``project`` when given, else a fresh project on the embedded defaults in a temporary folder."""
    if project is not None:
        yield project
        return
    with tempfile.TemporaryDirectory(prefix="modelmill-check-") as tmp:
        scratch = Project(Settings.defaults(home=Path(tmp) / ".modelmill"))
        try:
            yield scratch
        finally:
            scratch.close()
