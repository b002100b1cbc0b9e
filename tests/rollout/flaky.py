"""A candidate that fails on about 10% of inputs (importable by the server process)."""

from __future__ import annotations

from typing import Any

import numpy as np


class FlakyModel:
    """Wraps a classifier; raises on rows whose first feature is above the 90th percentile of N(0, 1)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        if (X[:, 0] > 1.2816).any():
            raise ValueError("this candidate cannot handle a large f0")
        return self.inner.predict_proba(X)
