"""Shared pieces of the loop's tests: a config, a project on SQLite or PostgreSQL, logged traffic."""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from modelmill.config import Settings
from modelmill.loop import LoopConfig, parse_models
from modelmill.project import Project
from tests.prediction_log import prediction_log

BODY: dict[str, Any] = {
    "feature_service": "clicks_features",
    "pipeline": {"function": "loop_test_retrain", "params": {"seed": 1, "flip": False}},
    "gate": {"label": "clicked", "min": {"auc": 0.6}, "max_regression": {"auc": 0.05}},
    "rules": {"error_rate": {"max_rate": 0.1, "min_requests": 10, "window": "1h"}},
    "rollout": {"plan": ["shadow", 100], "min_requests": 50, "stage_seconds": "1s"},
}


def body(**changes: Any) -> dict[str, Any]:
    """A copy of :data:`BODY` with top-level keys replaced (``None`` removes one)."""
    out = copy.deepcopy(BODY)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def config(**changes: Any) -> LoopConfig:
    return parse_models({"clicks": body(**changes)})


@contextmanager
def open_project(home: Path, db: str | None = None) -> Iterator[Project]:
    settings = Settings.defaults(home=home)
    if db is not None:
        settings = settings.replace(db=db)
    project = Project(settings)
    try:
        yield project
    finally:
        project.close()


def log_traffic(project: Project, *, version: int = 1, ok: int = 20, failed: int = 20, model: str = "clicks",
                prefix: str = "r", at: float | None = None) -> None:
    """``ok`` answered and ``failed`` 500-answered requests of ``model@version``, stamped now (or ``at``)."""
    rng = np.random.default_rng(version)
    stamps = None
    if at is not None:
        when = dt.datetime.fromtimestamp(at, tz=dt.UTC)
        stamps = {f"{prefix}{kind}{i}": when for kind, n in (("ok", ok), ("bad", failed)) for i in range(n)}
    with prediction_log(project.offline, at=stamps) as log:
        for i in range(ok):
            x = rng.normal(size=(1, 2))
            log.append(f"{prefix}ok{i}", model, version, "stable", None, ("x1", "x2"), x, np.array([0.5]), 2.0)
        for i in range(failed):
            log.append_failure(f"{prefix}bad{i}", model, version, "stable", None, 500, "RuntimeError", 1.0)


def log_stage(project: Project, *, live: tuple[str, int], mirror: tuple[str, int], start: float, n: int = 80,
              model: str = "clicks", prefix: str = "s") -> None:
    """``n`` answered requests of the live variant and their mirrored copies (same ids, same outputs),
    stamped from ``start + 10`` seconds on, as serving logs one rollout stage."""
    rng = np.random.default_rng(n)
    at = {f"{prefix}{i}": dt.datetime.fromtimestamp(start + 10 + 0.1 * i, tz=dt.UTC) for i in range(n)}
    with prediction_log(project.offline, at=at) as log:
        for i in range(n):
            x, p = rng.normal(size=(1, 2)), np.array([rng.uniform()])
            for variant, version in (live, mirror):
                log.append(f"{prefix}{i}", model, version, variant, None, ("x1", "x2"), x, p, 2.0)
