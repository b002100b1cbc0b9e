"""References made from the prediction log itself: the windows just before (rolling) or a season ago.

A model's training data is a fixed reference: seasonal data drifts away from it
month after month, and a monitor that fires every month is one people learn to
ignore. ``[monitoring.drift] reference`` chooses what a window is compared with:

    [monitoring.drift]
    reference = "rolling"       # training (default) | rolling | seasonal
    reference_windows = 4       # rolling: the 4 windows just before the current one
    [monitoring.drift.models.flights]
    reference = "seasonal"      # flights: the same window one season earlier
    season = "7d"

The reference's span of the log is read on the monitor's clock (``[monitoring]
clock``: wall or event time). Its features are the model's logged features there,
whatever version answered (the inputs do not depend on the model); its outputs are
only the same version's, so that a new version's outputs are not reported as
drift (with none of them in the span, the outputs are not compared, and the
reference says so). A span with no logged rows is no data, never a pass.

    >>> from modelmill.monitoring.drift import DriftOptions
    >>> reference_span(DriftOptions(reference="rolling", reference_windows=4), start=3600.0, end=7200.0)
    (-10800.0, 3600.0)
    >>> reference_span(DriftOptions(reference="seasonal", season=86400.0), start=90000.0, end=93600.0)
    (3600.0, 7200.0)
    >>> reference_span(DriftOptions(), start=0.0, end=1.0) is None
    True
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from modelmill.monitoring.drift import DriftOptions
from modelmill.monitoring.performance import stacked_probabilities
from modelmill.monitoring.reference import ReferenceProfile
from modelmill.store.feedback import Feedback
from modelmill.store.maps import map_frame

__all__ = ["LoggedReference", "logged_reference", "reference_span"]

#: The column the logged outputs come back under (the reference profiles them as the prediction column).
OUTPUT = "__output__"


def reference_span(options: DriftOptions, *, start: float, end: float) -> tuple[float, float] | None:
    """The span [a, b) of the log a rolling or seasonal reference covers for the window [start, end);
    None for the training reference."""
    if options.reference == "rolling":
        return start - options.reference_windows * (end - start), start
    if options.reference == "seasonal":
        assert options.season is not None  # DriftOptions refuses a seasonal reference without a season
        return start - options.season, end - options.season
    return None


class LoggedReference:
    """A reference profile made from the log, and what it covers (:meth:`describe`, for the report)."""

    def __init__(self, *, kind: str, start: float, end: float, profile: ReferenceProfile | None,
                 n_rows: int, n_outputs: int) -> None:
        self.kind = kind
        self.start = start
        self.end = end
        self.profile = profile
        self.n_rows = n_rows
        self.n_outputs = n_outputs

    def __repr__(self) -> str:
        return f"LoggedReference({self.kind!r}, rows={self.n_rows})"

    def describe(self, model: str, version: int) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "start": self.start, "end": self.end, "n_rows": self.n_rows,
                               "n_outputs": self.n_outputs}
        if self.profile is None:
            out["reason"] = (f"the {self.kind} reference of {model} ({_iso(self.start)} to {_iso(self.end)}) has "
                             "no logged rows, so its drift is not checked (no data)")
        elif not self.n_outputs:
            out["outputs"] = (f"not compared: {model}@{version} answered nothing in the reference's span (other "
                              "versions' outputs are not its own)")
        return out


def logged_reference(offline: Any, model: str, version: int, options: DriftOptions, *, start: float, end: float,
                     clock: str = "wall", kinds: Mapping[str, str] | None = None) -> LoggedReference | None:
    """The rolling or seasonal reference of ``model``'s window [start, end) from the log (None for training).

    ``kinds`` (the training profile's) fix each column's kind, so that a window and its reference are
    summarised alike."""
    span = reference_span(options, start=start, end=end)
    if span is None:
        return None
    feedback = Feedback(offline, clock=clock)
    a, b = _utc(span[0]), _utc(span[1])
    features: list[pd.DataFrame] = []
    outputs = np.empty(0)
    for m, v in feedback.served_versions(start=a, end=b):
        if m != model:
            continue
        tbl = feedback.served_features(m, v, start=a, end=b)
        if tbl is None or tbl.num_rows == 0:
            continue
        features.append(map_frame(tbl.column("features")))
        if v == version:  # a multiclass version's: its probability per class, as the window's are compared
            probs = stacked_probabilities(tbl.column("probabilities").to_pylist()) \
                if "probabilities" in tbl.column_names else None
            outputs = probs if probs is not None else \
                tbl.column("output").to_numpy(zero_copy_only=False).astype(np.float64)
    if not features:
        return LoggedReference(kind=options.reference, start=span[0], end=span[1], profile=None, n_rows=0,
                               n_outputs=0)
    frame = pd.concat(features, ignore_index=True)
    known = {c: k for c, k in (kinds or {}).items() if c in frame.columns}
    profile = ReferenceProfile.from_data(frame, predictions=outputs if len(outputs) else None,
                                         kinds=known or None)
    return LoggedReference(kind=options.reference, start=span[0], end=span[1], profile=profile,
                           n_rows=len(frame), n_outputs=len(outputs))


def _utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC)


def _iso(ts: float) -> str:
    return _utc(ts).isoformat().replace("+00:00", "Z")
