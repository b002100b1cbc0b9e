"""An experiment's analysis over time: the experiments stage's own analysis, run once per cutoff.

The statistics have one owner, :class:`~modelmill.experiments.Experiments`: this module reads the log
its ``analyze`` reads (:meth:`~modelmill.experiments.Experiments.log`) once, slices it by the time
each request was answered, and hands every slice to
:meth:`~modelmill.experiments.Experiments.analyze_log`. A look is either *cumulative* (everything from
the experiment's start to the cutoff: what ``modelmill experiment analyze`` would have said then) or
one *window* (only the requests answered in it). A slice the analysis cannot answer (no unit yet, a
variant with nobody in it) is a look with no data and its reason, drawn as a gap, never as a decision.

    >>> cutoffs(0.0, 100.0, None, points=4)
    [25.0, 50.0, 75.0, 100.0]
    >>> cutoffs(0.0, 100.0, 30.0)
    [30.0, 60.0, 90.0, 120.0]
    >>> len(cutoffs(0.0, 86400.0, 60.0)), cutoffs(0.0, 86400.0, 60.0)[-1]
    (60, 86400.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from modelmill.errors import InputError
from modelmill.experiments import Analysis, Experiment, Experiments, metrics
from modelmill.experiments.analysis import TESTS, analyze_samples
from modelmill.experiments.stats import Sample

__all__ = ["MAX_LOOKS", "VIEWS", "Look", "cutoffs", "looks"]

#: The most cutoffs one page analyses.
MAX_LOOKS = 60
VIEWS = ("cumulative", "window")


@dataclass(frozen=True)
class Look:
    """The analysis of the requests answered from ``start`` to ``end`` (included): ``analysis``, or None with ``no_data``."""

    start: float
    end: float
    analysis: Analysis | None
    no_data: str | None = None


def cutoffs(first: float, last: float, window_s: float | None, *, points: int = 20) -> list[float]:
    """The ends of the looks from ``first`` to ``last``: every ``window_s`` seconds, or ``points`` even steps;
    at most :data:`MAX_LOOKS`, so a window too short for the span is widened."""
    span = max(last - first, 0.0)
    step = float(window_s) if window_s else max(span / points, 1.0)
    step = max(step, span / MAX_LOOKS)  # a window too short for the span is widened: the looks still reach last
    count = max(math.ceil(span / step - 1e-9), 1)
    return [first + step * (i + 1) for i in range(count)]


def _epochs(ts: pd.Series) -> np.ndarray:
    stamps = pd.to_datetime(ts, utc=True)
    return ((stamps - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)).to_numpy(dtype=np.float64)


def looks(project: Any, name: str, *, view: str = "cumulative", window_s: float | None = None,
          test: str | None = None, points: int = 20,
          log: tuple[Experiment, pd.DataFrame] | None = None) -> tuple[Experiment, list[Look]]:
    """The experiment ``name`` and its analysis at each cutoff from its start to its last logged request
    (the log ``analyze`` reads, so the last cumulative look is its answer): every ``window_s`` seconds, or ``points`` even steps; ``test`` as
    ``modelmill experiment analyze NAME --test`` (default: by metric). Raises
    :class:`~modelmill.errors.InputError` for an experiment that has no served model to read a log of.
    ``log``: that log, already read by the caller (the page reads it once for its analysis and its looks)."""
    if view not in VIEWS:
        raise InputError("view", f"must be one of {', '.join(VIEWS)}", view)
    if test is not None and test not in TESTS:
        raise InputError("test", f"must be one of {', '.join(TESTS)}", test)
    store = Experiments(project)
    exp, frame = store.log(name) if log is None else log
    if frame.empty:
        return exp, []
    at = _epochs(frame["ts"])
    first = float(exp.created_at) if exp.created_at else float(at.min())
    slices = []
    previous = first
    for end in cutoffs(first, float(at.max()), window_s, points=points):
        start = first if view == "cumulative" else previous
        # Each look ends at its cutoff, included, so the last request is in the last look.
        lower = at >= start if start == first else at > start
        slices.append((start, end, lower & (at <= end)))
        previous = end
    summaries = _Summaries.of(frame, exp.primary_metric, test)
    out = []
    for start, end, mask in slices:
        try:
            if summaries is None:  # the analysis's own path: it raises what it raises for this log
                analysis = store.analyze_log(exp, frame[mask], test=test)
            else:
                analysis = summaries.analyze(store, exp, frame, mask, test)
        except InputError as exc:  # this slice cannot be analysed: no data, not a decision
            out.append(Look(start, end, None, exc.message))
        else:
            out.append(Look(start, end, analysis))
    return exp, out


@dataclass(frozen=True)
class _Summaries:
    """The log reduced once to what :func:`~modelmill.experiments.metrics.summarize` computes per look: each
    row's metric value and its unit as an integer code in the order the analysis sorts units (their text), each
    unit's variant. A look is then one grouped sum and count of its rows per unit and one
    :func:`~modelmill.experiments.metrics.ratio` per variant: the numbers
    :meth:`~modelmill.experiments.Experiments.analyze_log` computes from the slice, in the same order
    (the per-unit sums in row order, so the same floating-point sums), without turning text into
    categories again on every look, which cost more than the statistics."""

    values: np.ndarray
    units: np.ndarray  # per row, the unit's rank among the log's units by text
    unit_variant: np.ndarray  # per unit rank, the rank of its variant
    variants: tuple[str, ...]  # sorted

    @classmethod
    def of(cls, frame: pd.DataFrame, metric: str, test: str | None) -> _Summaries | None:
        """The reduction, or None where the analysis would refuse some slice for a reason other than its data
        being short (a metric that is not numeric, a unit in two variants, a pooled z-test on a ratio metric):
        those looks take the analysis's own path, so they say what it says."""
        if test == "ztest" or metric not in frame.columns:
            return None
        values = pd.to_numeric(frame[metric], errors="coerce")
        if values.isna().any():
            return None
        variant_names, variant_codes = np.unique(frame["variant"].astype(str).to_numpy(dtype=object),
                                                 return_inverse=True)
        _, units = np.unique(frame["routing_key"].astype(str).to_numpy(dtype=object), return_inverse=True)
        unit_variant = np.full(int(units.max()) + 1 if units.size else 0, -1, dtype=np.int64)
        unit_variant[units] = variant_codes
        if not np.array_equal(unit_variant[units], variant_codes):  # a unit in two variants: not sticky
            return None
        return cls(values.to_numpy(dtype=np.float64), units.astype(np.int64), unit_variant,
                   tuple(str(v) for v in variant_names))

    def samples(self, mask: np.ndarray) -> list[Sample]:
        """:func:`~modelmill.experiments.metrics.summarize` of the rows in ``mask`` with the unit column."""
        grouped = pd.Series(self.values[mask]).groupby(self.units[mask], sort=True).agg(["sum", "count"])
        unit = grouped.index.to_numpy()
        sums, counts = grouped["sum"].to_numpy(), grouped["count"].to_numpy()
        of = self.unit_variant[unit]
        out = []
        for code, variant in enumerate(self.variants):
            keep = of == code
            if keep.any():
                out.append(metrics.ratio(variant, sums[keep], counts[keep]))
        return out

    def analyze(self, store: Experiments, exp: Experiment, frame: pd.DataFrame, mask: np.ndarray,
                test: str | None) -> Analysis:
        """:meth:`~modelmill.experiments.Experiments.analyze_log` of ``frame[mask]``, from the reduction."""
        if not mask.any():
            return store.analyze_log(exp, frame.iloc[:0], test=test)  # its own words for an empty slice
        # analyze_log → analyze_frame with the unit column, after summarize: the same settings, test "delta"
        # by default (the pooled z-test never comes here).
        return analyze_samples({exp.primary_metric: self.samples(mask)}, control=exp.control,
                               test="delta" if test is None else test, alpha=exp.alpha, weights=exp.weights,
                               min_sample_size=exp.min_sample_size, direction=exp.direction,
                               correction=exp.correction, variant_field="variant")
