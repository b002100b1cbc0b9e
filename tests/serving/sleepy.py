"""Models for the serving tests that the server process imports (it runs with this repository on its path).

- :class:`SleepyModel`: right answers, ``delay_s`` late.
- :class:`GatedModel`: answers only once a gate file exists, so a test decides when (the shadow test).
- :class:`HeldLoad`: a real model whose loading waits while a hold file exists, so a test decides when a
  new worker may finish starting (the worker-kill test).

Each wait is bounded (``timeout_s``), so a test that fails before opening its gate leaves no process hung.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np


def _wait(check: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check() and time.monotonic() < deadline:
        time.sleep(0.01)


class SleepyModel:
    def __init__(self, delay_s: float = 0.2) -> None:
        self.delay_s = delay_s

    def predict(self, X: np.ndarray) -> np.ndarray:
        time.sleep(self.delay_s)
        return np.full(len(X), 0.5)


class GatedModel:
    """Answers 0.5 per row, but only once the file ``gate`` exists (or ``timeout_s`` passed)."""

    def __init__(self, gate: str, timeout_s: float = 60.0) -> None:
        self.gate = gate
        self.timeout_s = timeout_s

    def predict(self, X: np.ndarray) -> np.ndarray:
        _wait(lambda: os.path.exists(self.gate), self.timeout_s)
        return np.full(len(X), 0.5)


class HeldLoad:
    """``model``'s answers; unpickling it (a worker loading it) waits while the file ``hold`` exists."""

    def __init__(self, model: Any, hold: str, timeout_s: float = 60.0) -> None:
        self.model = model
        self.hold = hold
        self.timeout_s = timeout_s

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        _wait(lambda: not os.path.exists(self.hold), self.timeout_s)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict_proba(X))

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict(X))
