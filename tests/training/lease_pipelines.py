"""A pipeline the lease test runs in a scheduler process it kills: ``hold`` waits while the file named by
``MM_TEST_HOLD`` exists (after writing ``MM_TEST_HOLD + ".started"``), at most 120 s."""

from __future__ import annotations

import os
import time
from pathlib import Path

from modelmill.training import Pipeline, step


def _count(name: str) -> None:
    path = os.environ.get("MM_TEST_COUNTER")
    if path:
        with open(path, "a") as fh:
            fh.write(f"{name}:{os.getpid()}\n")


@step(inputs=["n"], outputs=["prepared"])
def prepare(n: int) -> int:
    _count("prepare")
    return n * 2


@step(inputs=["prepared"], outputs=["held"])
def hold(prepared: int) -> int:
    _count("hold")
    flag = os.environ.get("MM_TEST_HOLD")
    if flag and Path(flag).exists():
        Path(flag + ".started").touch()
        deadline = time.monotonic() + 120
        while Path(flag).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    return prepared + 1


held = Pipeline("held", [prepare, hold])
