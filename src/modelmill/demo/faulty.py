"""A deliberately broken candidate: it fails on about one flight in ten (the demo's rollback drill)."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["FaultyModel"]


class FaultyModel:
    """Wraps a classifier and raises on any batch holding a row whose ``column`` exceeds ``limit``."""

    def __init__(self, inner: Any, *, column: int, limit: float) -> None:
        self.inner = inner
        self.column = column
        self.limit = limit

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        if (np.asarray(X)[:, self.column] > self.limit).any():
            raise ValueError("this candidate cannot handle long flights (the demo's planted fault)")
        return np.asarray(self.inner.predict_proba(X))
