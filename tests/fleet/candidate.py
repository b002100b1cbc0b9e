"""The rollout test's failing candidate, importable by the fleet's server processes (PYTHONPATH is the repo)."""

from __future__ import annotations

from typing import Any

import numpy as np

from tests.rollout.flaky import FlakyModel

__all__ = ["FlakyClassifier"]


class FlakyClassifier(FlakyModel):
    """:class:`~tests.rollout.flaky.FlakyModel` (fails on rows whose f0 > 1.2816, about 10%) that also says its
    classes and predicts labels, as a scikit-learn classifier does, so every flavor rule sees a binary one."""

    @property
    def classes_(self) -> Any:
        return self.inner.classes_

    def predict(self, X: np.ndarray) -> np.ndarray:
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(int)
