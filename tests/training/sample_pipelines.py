"""Pipelines the training tests run, importable as ``tests.training.sample_pipelines:NAME`` from a subprocess.

Each step appends its name to the file named by ``MM_TEST_COUNTER`` (so a test can count executions
across processes), and ``train`` fails while the file named by ``MM_TEST_FAIL`` exists.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from modelmill.training import Pipeline, StepContext, step


def _count(name: str, extra: str = "") -> None:
    path = os.environ.get("MM_TEST_COUNTER")
    if path:
        with open(path, "a") as fh:
            fh.write(f"{name}{extra}\n")


@step(inputs=["n", "seed"], outputs=["X", "y"])
def load(n: int, seed: int, ctx: StepContext) -> tuple[np.ndarray, np.ndarray]:
    _count("load")
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    y = (X[:, 0] - X[:, 1] > 0).astype(np.int64)
    ctx.record(data_snapshot=f"synthetic:n={n}:seed={seed}", training_set=f"ts-{n}-{seed}", feature_version="fv1")
    return X, y


@step(inputs=["X", "y"], outputs=["model", "metrics"])
def train(X: np.ndarray, y: np.ndarray, ctx: StepContext) -> tuple[object, dict[str, float]]:
    _count("train")
    fail = os.environ.get("MM_TEST_FAIL")
    if fail and Path(fail).exists():
        raise RuntimeError("planted failure in train")
    from modelmill.training.trainers import fit_arrays

    result = fit_arrays("sklearn-hgb", X, y, run=ctx.run, max_iter=15)
    return result.model, result.metrics


@step(inputs=["metrics"], outputs=["report"])
def report(metrics: dict[str, float]) -> str:
    _count("report")
    return f"auc={metrics['auc']:.3f}"


flaky = Pipeline("flaky", [load, train, report])


_met: list[bool] = []


def _meet() -> None:
    """With ``MM_TEST_MEET=DIR:N``, a process's first step waits until N processes have reached theirs.

    A barrier across processes (a file each in DIR) so that concurrent schedulers are concurrent: the first
    to start holds its first trigger until the others have claimed one of their own. Bounded: after 60 s it
    goes on, and the test that counts who ran what fails instead of hanging.
    """
    spec = os.environ.get("MM_TEST_MEET")
    if not spec or _met:
        return
    _met.append(True)
    folder, parties = spec.rsplit(":", 1)
    Path(folder, str(os.getpid())).touch()
    deadline = time.monotonic() + 60
    while len(os.listdir(folder)) < int(parties) and time.monotonic() < deadline:
        time.sleep(0.01)


@step(inputs=["tag"], outputs=["done"])
def slow_mark(tag: str) -> str:
    _meet()
    time.sleep(0.2)  # long enough for two schedulers to overlap
    _count("slow_mark", f":{tag}")
    return tag


marker = Pipeline("marker", [slow_mark])
