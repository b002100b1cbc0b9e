"""A model for the shadow test: right answers, 200 ms late (importable by the server process)."""

from __future__ import annotations

import time

import numpy as np


class SleepyModel:
    def __init__(self, delay_s: float = 0.2) -> None:
        self.delay_s = delay_s

    def predict(self, X: np.ndarray) -> np.ndarray:
        time.sleep(self.delay_s)
        return np.full(len(X), 0.5)
