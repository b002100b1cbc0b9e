"""Drift tests per column, chosen the way Evidently chooses them, vectorised with numpy.

Each column is first reduced to a :class:`ColumnSummary` — sorted finite values
for a numeric column (a quantile sketch when it came from a stored reference),
category counts for a categorical one — and every test then works on two
summaries: KS and Wasserstein on sorted arrays with ``searchsorted``, histograms
by ``searchsorted`` on bin edges, categories by aligned counts. Nothing loops
over rows in Python.

Defaults, as in Evidently's data drift preset:

==============  ===========================  ==========================================
column          reference has <= 1,000 rows  more rows
==============  ===========================  ==========================================
numeric         ``ks`` (p-value <= 0.05)     ``wasserstein`` (distance / std >= 0.1)
  <= 5 values   ``chisquare`` / ``ztest``    ``jensenshannon`` (>= 0.1)
categorical     ``chisquare`` (p < 0.05)     ``jensenshannon`` (>= 0.1)
binary          ``ztest`` (p < 0.05)         ``jensenshannon`` (>= 0.1)
==============  ===========================  ==========================================

PSI is reported for every column; the dataset drifts when the share of drifted
columns reaches ``drift_share`` (0.5).

Calibrated thresholds (``DriftOptions(calibrated=True)``, ``[monitoring.drift]
calibrated = true``): a fixed threshold means a different false-alarm rate at every
window size (Wasserstein 0.1 flags most columns of a 100-row window drawn from the
reference itself, and misses a 0.05-std shift at 14,000 rows). Calibrated, each
column's threshold is the ``quantile`` (0.99) of the same statistic over
``calibration_windows`` (200) null windows resampled from the reference, sized so
that they vary as much as an independent current window of the current's size
would (:func:`calibrate`); the column drifts when its statistic (``|z|`` for the
z-test; p-value tests are calibrated on their statistic) is above that threshold.
An A/A window then flags a column about ``1 - quantile`` of the time, whatever the
sample size (``benchmarks/drift_calibration.py``). A column with its own
``threshold`` keeps it. Cost: per column, ``calibration_windows`` runs of its test
on a window and a pool of at most 10,000 reference values (0.1-0.2 s on 2 cores,
about 4x a fixed-threshold column);
:class:`~modelmill.monitoring.reference.ReferenceProfile`
stores the null statistics per window size, so a monitor pays it once per size.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> ref = {"x": rng.normal(0, 1, 5000), "c": rng.choice(["a", "b", "c"], 5000)}
    >>> cur = {"x": rng.normal(0.5, 1, 5000), "c": rng.choice(["a", "b", "c"], 5000)}
    >>> report = detect_drift(ref, cur)
    >>> report.columns["x"].test, report.columns["x"].drift, report.columns["c"].drift
    ('wasserstein', True, False)
    >>> report.drift_share
    0.5
"""

from __future__ import annotations

import dataclasses
import math
import os
import zlib
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy import special, stats

from modelmill.errors import InputError

__all__ = [
    "REFERENCE_KINDS",
    "ColumnDrift",
    "ColumnOptions",
    "ColumnSummary",
    "DriftOptions",
    "DriftReport",
    "StatTest",
    "calibrate",
    "calibration_key",
    "calibration_size",
    "compare",
    "detect_drift",
    "infer_kind",
    "register_test",
    "select_columns",
    "summarize",
    "summarize_column",
]

ColumnType = Literal["numeric", "categorical", "binary"]
Kind = Literal["numeric", "categorical"]
DataLike = Any  # pandas.DataFrame, pyarrow.Table or Mapping[str, array-like]

# Evidently 0.7 reads an integer column with at most this many distinct values as categorical.
INTEGER_CARDINALITY_LIMIT = 10
# Evidently bins a numeric column by value (not by histogram) when the reference has at most this many values.
_VALUE_BINNING_LIMIT = 20
# scipy's ks_2samp computes the exact p-value up to this sample size.
_KS_EXACT_N = 10_000


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class ColumnSummary:
    """What the tests need of one column.

    ``values`` holds the sorted finite values of a numeric column; it is a
    quantile sketch (the minimum, the maximum and evenly spaced order
    statistics between) when ``len(values) < n``. ``keys``/``counts`` hold the
    categories of a categorical column, keys sorted.
    """

    kind: Kind
    n: int
    values: np.ndarray | None = None
    std: float = 0.0
    n_unique: int = 0
    keys: np.ndarray | None = None
    counts: np.ndarray | None = None

    @property
    def exact(self) -> bool:
        return self.kind == "categorical" or (self.values is not None and len(self.values) == self.n)

    def unique(self) -> tuple[np.ndarray, np.ndarray]:
        """Distinct values and their counts (scaled to ``n`` when ``values`` is a sketch)."""
        if self.kind == "categorical":
            assert self.keys is not None and self.counts is not None
            return self.keys, self.counts.astype(np.float64)
        v = self._values()
        if len(v) == 0:
            return v, np.zeros(0)
        starts = np.flatnonzero(np.concatenate(([True], v[1:] != v[:-1])))
        counts = np.diff(np.append(starts, len(v))).astype(np.float64)
        return v[starts], counts * (self.n / len(v))

    def _values(self) -> np.ndarray:
        assert self.values is not None
        return self.values


def summarize_column(data: Any, kind: Kind, *, max_points: int | None = None) -> ColumnSummary:
    """Reduce one column (numpy, pandas or Arrow) to a :class:`ColumnSummary`.

    NaN, infinities and nulls are dropped first, as Evidently does.
    ``max_points`` keeps a sketch of at most that many sorted values.
    """
    arr = _as_arrow(data)
    if kind == "numeric":
        if pa.types.is_boolean(arr.type) or pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type) \
                or pa.types.is_decimal(arr.type):
            x = np.asarray(pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
        else:
            raise InputError("column", f"numeric drift tests need numbers, got Arrow type {arr.type}")
        finite = np.isfinite(x)
        if not finite.all():
            x = x[finite]
        elif not (x.flags.owndata and x.flags.writeable):
            x = x.copy()  # sorting in place below must leave the caller's data alone
        x.sort()
        n = len(x)
        std = 0.0
        if n:
            d = x - x.mean()
            std = math.sqrt(float(np.dot(d, d)) / n)  # np.std, without its extra temporaries
            del d
        n_unique = int(np.count_nonzero(x[1:] != x[:-1]) + 1) if n else 0
        if max_points is not None and n > max_points:
            x = x[np.round(np.linspace(0, n - 1, max_points)).astype(np.int64)]
        return ColumnSummary(kind="numeric", n=n, values=x, std=std, n_unique=n_unique)
    if pa.types.is_dictionary(arr.type):
        keys_np, counts_np = _dictionary_counts(arr)
    else:
        vc = pc.value_counts(arr if pa.types.is_string(arr.type) else pc.cast(arr, pa.string()))
        keys, counts = vc.field("values"), vc.field("counts")
        valid = pc.is_valid(keys)
        keys_np = np.asarray(pc.filter(keys, valid).to_numpy(zero_copy_only=False), dtype=str)
        counts_np = np.asarray(pc.filter(counts, valid).to_numpy(), dtype=np.int64)
    keys_np, inverse = np.unique(keys_np, return_inverse=True)  # sorted, and equal labels merged
    counts_np = np.bincount(inverse, weights=counts_np, minlength=len(keys_np)).astype(np.int64)
    return ColumnSummary(kind="categorical", n=int(counts_np.sum()), keys=keys_np, counts=counts_np,
                         n_unique=len(keys_np))


def _dictionary_counts(arr: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Category labels and counts of a dictionary-encoded column by ``bincount`` over its codes."""
    chunks = arr.chunks if isinstance(arr, pa.ChunkedArray) else [arr]
    keys: list[np.ndarray] = []
    counts: list[np.ndarray] = []
    for chunk in chunks:
        codes = chunk.indices
        if codes.null_count:
            codes = pc.drop_null(codes)
        labels = chunk.dictionary
        keys.append(np.asarray(pc.cast(labels, pa.string()).to_numpy(zero_copy_only=False), dtype=str))
        counts.append(np.bincount(np.asarray(codes.to_numpy(zero_copy_only=False), dtype=np.int64),
                                  minlength=len(labels)))
    if not keys:
        return np.zeros(0, dtype=str), np.zeros(0, dtype=np.int64)
    return np.concatenate(keys), np.concatenate(counts)


# ---- statistical tests ------------------------------------------------------------------------

TestFn = Callable[[ColumnSummary, ColumnSummary], tuple[float, float | None]]


@dataclasses.dataclass(frozen=True, kw_only=True)
class StatTest:
    """A drift test: ``fn(reference, current) -> (statistic, p_value or None)``.

    ``kind`` is ``"p_value"`` (drift when the p-value is below the threshold,
    or at it when ``inclusive``) or ``"distance"`` (drift when the statistic
    reaches the threshold).
    """

    name: str
    kind: Literal["p_value", "distance"]
    fn: TestFn
    inclusive: bool = False

    def verdict(self, statistic: float, p_value: float | None, threshold: float) -> bool:
        if self.kind == "distance":
            return bool(statistic >= threshold)
        if p_value is None or math.isnan(p_value):
            return False
        return bool(p_value <= threshold) if self.inclusive else bool(p_value < threshold)


_TESTS: dict[str, StatTest] = {}


def register_test(test: StatTest) -> StatTest:
    """Add (or replace) a test under ``test.name``, usable as ``test = "<name>"`` per column."""
    _TESTS[test.name] = test
    return test


def _need_numeric(s: ColumnSummary, test: str) -> np.ndarray:
    if s.kind != "numeric" or s.values is None:
        raise InputError("test", f"{test!r} needs a numeric column")
    return s.values


def _ks(ref: ColumnSummary, cur: ColumnSummary) -> tuple[float, float | None]:
    u, v = _need_numeric(ref, "ks"), _need_numeric(cur, "ks")
    if ref.exact and cur.exact and max(ref.n, cur.n) <= _KS_EXACT_N:
        res = stats.ks_2samp(u, v)  # small samples: scipy's exact p-value, to agree with it to the last digit
        return float(res.statistic), float(res.pvalue)
    both = np.concatenate((u, v))
    d = float(np.max(np.abs(np.searchsorted(u, both, "right") / len(u) - np.searchsorted(v, both, "right") / len(v))))
    n1, n2 = sorted((float(ref.n), float(cur.n)), reverse=True)
    p = float(np.clip(stats.kstwo.sf(d, np.round(n1 * n2 / (n1 + n2))), 0.0, 1.0))
    return d, p


def wasserstein_sorted(u: np.ndarray, v: np.ndarray) -> float:
    """First Wasserstein distance of two sorted samples, as ∫|F⁻¹ᵤ − F⁻¹ᵥ| over the merged quantile grid.

    >>> wasserstein_sorted(np.array([0.0, 1.0, 3.0]), np.array([5.0, 6.0, 8.0]))
    5.0
    """
    n, m = len(u), len(v)
    if n == m:
        return float(np.mean(np.abs(u - v)))
    g = math.gcd(n, m)
    a, b = m // g, n // g  # quantile breakpoints i/n and j/m as integers over the common denominator n*a
    t = np.concatenate((np.arange(1, n + 1, dtype=np.int64) * a, np.arange(1, m + 1, dtype=np.int64) * b))
    t.sort(kind="stable")  # two sorted runs: a linear merge
    t = t[np.concatenate(([True], t[1:] != t[:-1]))]
    dt = np.diff(t, prepend=0)
    return float(np.dot(dt, np.abs(u[(t - 1) // a] - v[(t - 1) // b]))) / (n * a)


def _wasserstein(ref: ColumnSummary, cur: ColumnSummary) -> tuple[float, float | None]:
    u, v = _need_numeric(ref, "wasserstein"), _need_numeric(cur, "wasserstein")
    return wasserstein_sorted(u, v) / max(ref.std, 0.001), None


def _aligned_counts(ref: ColumnSummary, cur: ColumnSummary) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Union of distinct values with each side's counts (keys sorted)."""
    rk, rc = ref.unique()
    ck, cc = cur.unique()
    if ref.kind != cur.kind:
        rk, ck = rk.astype(str), ck.astype(str)
    keys = np.union1d(rk, ck)
    r = np.zeros(len(keys))
    c = np.zeros(len(keys))
    r[np.searchsorted(keys, rk)] = rc
    c[np.searchsorted(keys, ck)] = cc
    return keys, r, c


def sturges_edges(lo: float, hi: float, size: int) -> np.ndarray:
    """``np.histogram_bin_edges(x, "sturges")`` from the range and size of ``x`` alone."""
    width = (hi - lo) / (np.log2(size) + 1.0)
    first, last = (lo - 0.5, hi + 0.5) if lo == hi else (lo, hi)
    bins = int(np.ceil((last - first) / width)) if width else 1
    return np.linspace(first, last, bins + 1, endpoint=True)


def _hist_percents(s: ColumnSummary, edges: np.ndarray) -> np.ndarray:
    """Share of the column in each bin, bins closed on the left and the last also on the right.

    Exact from sorted values; from a sketch, the CDF is interpolated between its order statistics.
    """
    values = _need_numeric(s, "binning")
    if not s.exact:
        cdf = np.interp(edges, values, np.linspace(0.0, 1.0, len(values)))
        return np.diff(cdf)
    left = np.searchsorted(values, edges, "left")
    counts = np.diff(left)
    counts[-1] += np.searchsorted(values, edges[-1], "right") - left[-1]
    return counts / len(values)


def binned_percents(ref: ColumnSummary, cur: ColumnSummary) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Reference and current shares per bin, binned as Evidently bins them.

    A numeric column with more than 20 distinct reference values gets Sturges
    bins over the range of both samples; anything else is binned by value.
    Returns the shares and the bin edges (None when binned by value).
    """
    if ref.kind == "numeric" and cur.kind == "numeric" and ref.n_unique > _VALUE_BINNING_LIMIT:
        u, v = _need_numeric(ref, "binning"), _need_numeric(cur, "binning")
        edges = sturges_edges(float(min(u[0], v[0])), float(max(u[-1], v[-1])), ref.n + cur.n)
        return _hist_percents(ref, edges), _hist_percents(cur, edges), edges
    _, r, c = _aligned_counts(ref, cur)
    return r / ref.n, c / cur.n, None


def _fill_zeroes(p: np.ndarray) -> np.ndarray:
    nonzero = p[p != 0]
    if len(nonzero) == 0:
        return p
    low = nonzero.min()
    return np.where(p == 0, low / 10**6 if low <= 0.0001 else 0.0001, p)


def psi(ref: ColumnSummary, cur: ColumnSummary) -> float:
    """Population stability index over Evidently's bins, empty bins filled with a small share."""
    r, c, _ = binned_percents(ref, cur)
    r, c = _fill_zeroes(r), _fill_zeroes(c)
    return float(np.sum((r - c) * np.log(r / c)))


def _psi(ref: ColumnSummary, cur: ColumnSummary) -> tuple[float, float | None]:
    return psi(ref, cur), None


def _jensenshannon(ref: ColumnSummary, cur: ColumnSummary) -> tuple[float, float | None]:
    r, c, _ = binned_percents(ref, cur)
    r, c = r / r.sum(), c / c.sum()
    m = (r + c) / 2.0
    js = float(np.sum(special.rel_entr(r, m)) + np.sum(special.rel_entr(c, m)))
    return math.sqrt(max(js, 0.0) / 2.0), None


def _chisquare(ref: ColumnSummary, cur: ColumnSummary) -> tuple[float, float | None]:
    _, r, c = _aligned_counts(ref, cur)
    if len(r) < 2:
        return 0.0, 1.0
    expected = r * (cur.n / ref.n)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = (c - expected) ** 2 / expected
    stat = float(np.sum(terms))
    return stat, float(stats.chi2.sf(stat, len(r) - 1))


def _ztest(ref: ColumnSummary, cur: ColumnSummary) -> tuple[float, float | None]:
    _, r, c = _aligned_counts(ref, cur)
    if len(r) < 2:
        return 0.0, 1.0
    p1, p2 = 1.0 - r[0] / ref.n, 1.0 - c[0] / cur.n
    pooled = (p1 * ref.n + p2 * cur.n) / (ref.n + cur.n)
    denom = math.sqrt(pooled * (1 - pooled) * (1.0 / ref.n + 1.0 / cur.n))
    if denom == 0:
        return 0.0, 1.0
    z = (p1 - p2) / denom
    return float(z), float(2 * stats.norm.sf(abs(z)))


register_test(StatTest(name="ks", kind="p_value", fn=_ks, inclusive=True))
register_test(StatTest(name="wasserstein", kind="distance", fn=_wasserstein))
register_test(StatTest(name="jensenshannon", kind="distance", fn=_jensenshannon))
register_test(StatTest(name="chisquare", kind="p_value", fn=_chisquare))
register_test(StatTest(name="ztest", kind="p_value", fn=_ztest))
register_test(StatTest(name="psi", kind="distance", fn=_psi))


# ---- options ----------------------------------------------------------------------------------

_TYPES = ("numeric", "categorical", "binary")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ColumnOptions:
    """Per-column overrides: the column's type, its test and the test's threshold."""

    type: ColumnType | None = None
    test: str | None = None
    threshold: float | None = None

    def __post_init__(self) -> None:
        if self.type is not None and self.type not in _TYPES:
            raise InputError("type", f"must be one of {', '.join(_TYPES)}", self.type)
        if self.test is not None and self.test not in _TESTS:
            raise InputError("test", f"must be one of {', '.join(sorted(_TESTS))}", self.test)
        if self.threshold is not None and not (isinstance(self.threshold, int | float) and self.threshold >= 0):
            raise InputError("threshold", "must be a number >= 0", self.threshold)


#: What a window is compared with (``reference`` in ``[monitoring.drift]``).
REFERENCE_KINDS: tuple[str, ...] = ("training", "rolling", "seasonal")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DriftOptions:
    """Thresholds and per-column overrides; the defaults are Evidently's.

    ``reference`` is what a monitoring window is compared with: ``"training"`` (the version's stored
    profile of its training data, the default), ``"rolling"`` (the model's prediction log over the
    ``reference_windows`` windows just before it) or ``"seasonal"`` (its log over the same window one
    ``season`` earlier; see :mod:`~modelmill.monitoring.baselines`). ``reference_windows`` is how many windows a rolling reference spans (4).
    ``season`` is the period of a seasonal reference, a duration (``"7d"``, ``"365d"``; seconds in Python),
    required with ``reference = "seasonal"``. ``models`` holds per-model overrides of any of these keys
    (``[monitoring.drift.models.flights] reference = "seasonal"``), each read over the table's own keys.
    A rolling or seasonal reference with no logged rows in its span is no data, never a pass.

    >>> DriftOptions.from_mapping({"drift_share": 0.3, "columns": {"x": {"test": "psi", "threshold": 0.2}}}).columns
    {'x': ColumnOptions(type=None, test='psi', threshold=0.2)}
    >>> opts = DriftOptions.from_mapping({"models": {"flights": {"reference": "seasonal", "season": "7d"}}})
    >>> opts.for_model("flights").reference, opts.for_model("flights").season, opts.for_model("other").reference
    ('seasonal', 604800.0, 'training')
    """

    p_value: float = 0.05
    distance: float = 0.1
    drift_share: float = 0.5
    small_sample: int = 1000
    calibrated: bool = False
    quantile: float = 0.99
    calibration_windows: int = 200
    seed: int = 0
    reference: str = "training"
    reference_windows: int = 4
    season: float | None = None
    columns: Mapping[str, ColumnOptions] = dataclasses.field(default_factory=dict)
    models: Mapping[str, DriftOptions] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("p_value", "distance", "drift_share"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0 <= value <= (1 if name != "distance" else math.inf):
                raise InputError(name, "must be a number in range", value)
        if not isinstance(self.calibrated, bool):
            raise InputError("calibrated", "must be true or false", self.calibrated)
        if isinstance(self.quantile, bool) or not isinstance(self.quantile, int | float) or not 0 < self.quantile < 1:
            raise InputError("quantile", "must be a number between 0 and 1 (exclusive), e.g. 0.99", self.quantile)
        windows = self.calibration_windows
        if isinstance(windows, bool) or not isinstance(windows, int) or not 20 <= windows <= 100_000:
            raise InputError("calibration_windows", "must be a whole number from 20 to 100000 (200 is usual)",
                             windows)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise InputError("seed", "must be a whole number >= 0", self.seed)
        if self.reference not in REFERENCE_KINDS:
            raise InputError("reference", f"must be one of {', '.join(REFERENCE_KINDS)}", self.reference)
        windows = self.reference_windows
        if isinstance(windows, bool) or not isinstance(windows, int) or not 1 <= windows <= 10_000:
            raise InputError("reference_windows", "must be a whole number from 1 to 10000 (windows before the "
                             "current one that a rolling reference spans)", windows)
        season = self.season
        if season is not None and (isinstance(season, bool) or not isinstance(season, int | float)
                                   or not math.isfinite(season) or season <= 0):
            raise InputError("season", "must be a positive duration (seconds, or \"7d\" in modelmill.toml)", season)
        if self.reference == "seasonal" and season is None:
            raise InputError("season", "is required with reference = \"seasonal\": the period to look back, "
                             "e.g. \"7d\" or \"365d\"")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> DriftOptions:
        """Read the ``[monitoring.drift]`` table of ``modelmill.toml``."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise InputError("monitoring.drift", f"unknown keys {sorted(unknown)}; use {sorted(known)}")
        base = {k: v for k, v in data.items() if k != "models"}
        models = data.get("models", {})
        if not isinstance(models, Mapping):
            raise InputError("monitoring.drift.models", "must be a table of per-model tables", models)
        per_model = {}
        for name, override in models.items():
            if not isinstance(override, Mapping) or "models" in override:
                raise InputError(f"monitoring.drift.models.{name}", "must be a table of drift keys (no models)",
                                 override)
            per_model[str(name)] = cls.from_mapping({**base, **override})
        cols = {str(k): ColumnOptions(**dict(v)) for k, v in dict(base.get("columns", {})).items()}
        season = base.get("season")
        if season is not None and not isinstance(season, bool):
            from modelmill.monitoring.performance import parse_duration  # late: performance reads the store

            season = parse_duration(season, field="monitoring.drift.season")
        return cls(**{k: v for k, v in base.items() if k not in ("columns", "season")}, season=season,
                   columns=cols, models=per_model)

    def for_column(self, name: str) -> ColumnOptions:
        return self.columns.get(name, ColumnOptions())

    def for_model(self, name: str) -> DriftOptions:
        """The options of model ``name``: its ``models`` override, else these."""
        return self.models.get(name, self)


# ---- results ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class ColumnDrift:
    """One column's verdict."""

    type: ColumnType
    test: str
    statistic: float
    p_value: float | None
    threshold: float
    drift: bool
    psi: float
    #: With a calibrated threshold: ``quantile``, ``windows``, ``window_size`` (the size calibrated at),
    #: and the verdict the fixed threshold gives (``fixed_threshold``, ``fixed_drift``).
    calibration: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"type": self.type, "test": self.test, "statistic": _finite(self.statistic),
               "p_value": None if self.p_value is None else _finite(self.p_value),
               "threshold": _finite(self.threshold), "drift": self.drift, "psi": _finite(self.psi)}
        if self.calibration is not None:
            out["calibration"] = dict(self.calibration)
        return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class DriftReport:
    """Every column's verdict and the dataset's."""

    columns: dict[str, ColumnDrift]
    share_threshold: float = 0.5
    #: Columns that could not be tested, with why (no values in the window or the reference): no data,
    #: counted neither as drifted nor as passed, and left out of the share.
    no_data: dict[str, str] = dataclasses.field(default_factory=dict)
    #: What the window was compared with (set by the monitor): ``kind`` (training, rolling, seasonal),
    #: for a logged reference its ``start``/``end`` (epoch seconds) and ``n_rows``, and ``reason`` when it
    #: had no rows (then ``columns`` is empty: no data).
    reference: Mapping[str, Any] | None = None
    #: Each feature's importance to the model (stored with its reference profile), or None when none is.
    importance: Mapping[str, float] | None = None
    #: How ``importance`` was measured, or why there is none.
    importance_note: str = ""

    @property
    def drift_share(self) -> float:
        """Share of the compared columns that drifted."""
        return sum(c.drift for c in self.columns.values()) / len(self.columns) if self.columns else 0.0

    @property
    def dataset_drift(self) -> bool:
        return bool(self.columns) and self.drift_share >= self.share_threshold

    @property
    def drifted(self) -> list[str]:
        return [name for name, c in self.columns.items() if c.drift]

    @property
    def importance_score(self) -> float | None:
        """Importance of the drifted features over the importance of every compared feature (0 to 1).

        None when no importance is known, or the compared features have none in total (a score of
        nothing is not 0): the caller falls back to :attr:`drift_share` and says so (:meth:`score`).

        >>> col = lambda d: ColumnDrift(type="numeric", test="ks", statistic=0.0, p_value=1.0, threshold=0.05,
        ...                             drift=d, psi=0.0)
        >>> report = DriftReport(columns={"a": col(True), "b": col(False), "c": col(False)},
        ...                      importance={"a": 0.1, "b": 0.3, "c": 0.6})
        >>> round(report.drift_share, 3), report.importance_score
        (0.333, 0.1)
        """
        if not self.importance:
            return None
        weights = {name: max(float(self.importance.get(name, 0.0)), 0.0) for name in self.columns}
        total = sum(weights.values())
        if not total > 0:
            return None
        return sum(w for name, w in weights.items() if self.columns[name].drift) / total

    def score(self, kind: str = "share") -> dict[str, Any]:
        """The score a drift rule reads: ``{"kind", "value"}``, and when ``importance`` was asked for and
        cannot be had, ``kind`` ``"share"`` with ``requested`` and ``fallback`` (why)."""
        if kind == "importance":
            value = self.importance_score
            if value is not None:
                return {"kind": "importance", "value": value}
            why = self.importance_note or "no feature importance is stored with the reference profile"
            if self.importance:
                why = "the compared features have no importance in total"
            return {"kind": "share", "value": self.drift_share, "requested": "importance",
                    "fallback": f"{why}; the raw drifted share is used instead"}
        return {"kind": "share", "value": self.drift_share}

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"dataset_drift": self.dataset_drift, "drift_share": self.drift_share,
                               "columns": {name: c.to_dict() for name, c in self.columns.items()}}
        if self.no_data:
            out["no_data"] = dict(self.no_data)
        if self.reference is not None:
            out["reference"] = dict(self.reference)
        if self.importance or self.importance_note:
            out["importance"] = {"score": self.importance_score,
                                 "weights": dict(self.importance) if self.importance else None,
                                 "note": self.importance_note or None}
        return out


def _finite(x: float) -> float:
    # JSON has no infinity; a chi-square over a category the reference never saw is "as far as it gets".
    if math.isnan(x):
        return 0.0
    return x if math.isfinite(x) else 1.7976931348623157e308


# ---- choosing and running tests ---------------------------------------------------------------


def column_type(ref: ColumnSummary, cur: ColumnSummary, forced: ColumnType | None = None) -> ColumnType:
    if forced is not None:
        return forced
    if _union_unique(ref, cur, limit=2) <= 2:
        return "binary"
    return ref.kind


def _union_unique(ref: ColumnSummary, cur: ColumnSummary, *, limit: int) -> int:
    """Distinct values in both samples together, exactly when at most ``limit`` (else ``limit + 1``)."""
    if ref.n_unique > limit or cur.n_unique > limit:
        return limit + 1
    keys, _, _ = _aligned_counts(ref, cur)
    return len(keys)


def default_test(ref: ColumnSummary, cur: ColumnSummary, small_sample: int = 1000) -> str:
    """The test Evidently picks for this pair of samples."""
    few = _union_unique(ref, cur, limit=5)
    if ref.n <= small_sample:
        if ref.kind == "numeric" and few > 5:
            return "ks"
        n_values = few if ref.kind == "numeric" else _union_unique(ref, cur, limit=2)
        return "chisquare" if n_values > 2 else "ztest"
    if ref.kind == "numeric" and few > 5:
        return "wasserstein"
    return "jensenshannon"


# ---- calibrated thresholds --------------------------------------------------------------------

#: The pool a calibration resamples: a reference with more values is reduced to this many order statistics.
CALIBRATION_POOL = 10_000


def calibration_size(n: int) -> int:
    """``n`` rounded down to a grid of steps of 2^(1/4), so that windows of about one size share a calibration.

    Rounding down is the safe side: a smaller window varies more, so its threshold is higher.

    >>> [calibration_size(n) for n in (1, 7, 100, 28_000)]
    [1, 7, 90, 27554]
    """
    if n < 8:
        return max(int(n), 1)
    return math.floor(2 ** (math.floor(4 * math.log2(n) + 1e-9) / 4))


def calibration_key(column: str, test: str, n_current: int, windows: int, seed: int) -> str:
    """The key of one calibration in a cache (:attr:`ReferenceProfile.calibrations`)."""
    return f"{column}|{test}|{int(n_current)}|{int(windows)}|{int(seed)}"


def calibrate(ref: ColumnSummary, test: str, n_current: int, *, windows: int = 200, seed: int = 0,
              column: str = "column") -> np.ndarray:
    """Null statistics of ``test`` for current windows of ``n_current`` values drawn from the reference itself.

    A window is drawn from the reference without replacement and compared with the
    whole reference by the same test. Drawn at ``n_current`` values it would vary too
    little (it shares its values with the reference, and an independent current
    window adds the reference's own sampling noise), so it is drawn at ``k`` values,
    ``1/k = 1/n_current + 1/n_ref + 1/pool``, which gives its shares the variance of an
    independent window of ``n_current`` against a reference of ``n_ref``; it is then
    stated at ``n_current`` values (counts scaled), so the tests whose statistic
    grows with the sample (chi-square, z) and the binning see the current's size.
    A categorical window also draws values the reference never saw, at Good-Turing's
    estimate of their share (the reference's singletons over its size): a chi-square
    over a category the reference lacks is infinite, so where that happens by chance
    more often than ``1 - quantile`` the threshold is infinite too (the test cannot
    tell at that size) rather than a false alarm. Returns ``windows`` statistics
    (``|z|`` for the z-test), in draw order; the threshold is their quantile (the
    next value up, not interpolated). Deterministic for a ``seed`` and ``column``.

    >>> rng = np.random.default_rng(0)
    >>> ref = summarize_column(rng.normal(size=5000), "numeric")
    >>> small, large = calibrate(ref, "wasserstein", 200), calibrate(ref, "wasserstein", 5000)
    >>> round(float(np.quantile(small, 0.99)), 2), round(float(np.quantile(large, 0.99)), 2)
    (0.2, 0.05)
    """
    fn = _TESTS[test].fn
    rng = np.random.default_rng([int(seed), zlib.crc32(column.encode()), int(n_current)])
    m = int(n_current)
    if ref.kind == "categorical":
        assert ref.keys is not None and ref.counts is not None
        pool = np.asarray(ref.counts, dtype=np.int64)
        k = _draw_size(m, ref.n, ref.n)
        keys = ref.keys
        # A current window can hold categories the reference never saw (chi-square: infinite). Their share
        # is Good-Turing's missing mass, the reference's singletons over its size: a window draws that share
        # of "unseen" values, so that the threshold allows for them as often as they happen by chance.
        unseen = np.zeros(windows, dtype=np.int64)
        missing_mass = np.count_nonzero(pool == 1) / max(ref.n, 1)
        if missing_mass > 0 and test != "ztest":
            unseen = rng.binomial(k, min(missing_mass, 1.0), size=windows)
            keys = np.concatenate((keys, np.array([_UNSEEN], dtype=keys.dtype if keys.dtype.kind == "U" else str)))
        seen = np.stack([rng.multivariate_hypergeometric(pool, int(k - u)) for u in unseen]) if unseen.any() else \
            rng.multivariate_hypergeometric(pool, k, size=windows)
        drawn = seen.astype(np.float64)
        if len(keys) > len(pool):
            drawn = np.column_stack((drawn, unseen.astype(np.float64)))
        drawn *= m / k
        summaries = (ColumnSummary(kind="categorical", n=m, keys=keys if u else ref.keys,
                                   counts=row if u else row[:len(pool)], n_unique=ref.n_unique)
                     for row, u in zip(drawn, unseen, strict=True))
    else:
        values = _need_numeric(ref, test)
        if len(values) > CALIBRATION_POOL:
            values = values[np.round(np.linspace(0, len(values) - 1, CALIBRATION_POOL)).astype(np.int64)]
        k = _draw_size(m, ref.n, len(values))
        drawn = np.empty((windows, k))
        for i in range(windows):
            drawn[i] = values[rng.choice(len(values), k, replace=False)]
        drawn.sort(axis=1)
        if test == "wasserstein":
            return _wasserstein_rows(_need_numeric(ref, test), drawn) / max(ref.std, 0.001)
        summaries = (ColumnSummary(kind="numeric", n=m, values=row, std=ref.std, n_unique=ref.n_unique)
                     for row in drawn)
    try:
        out = np.array([fn(ref, s)[0] for s in summaries], dtype=np.float64)
    except InputError as exc:
        raise InputError(column, f"cannot calibrate {test!r}: {exc.message}") from exc
    return np.abs(out) if test == "ztest" else out


def _wasserstein_rows(u: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """:func:`wasserstein_sorted` of ``u`` against each sorted row: rows of one length share one quantile grid."""
    n, m = len(u), rows.shape[1]
    g = math.gcd(n, m)
    a, b = m // g, n // g
    t = np.union1d(np.arange(1, n + 1, dtype=np.int64) * a, np.arange(1, m + 1, dtype=np.int64) * b)
    dt = np.diff(t, prepend=0).astype(np.float64)
    uq, iv = u[(t - 1) // a], (t - 1) // b
    out = np.empty(len(rows))
    step = max(1, (1 << 22) // len(t))  # rows per chunk: a few tens of MB at most
    for i in range(0, len(rows), step):
        out[i:i + step] = np.abs(rows[i:i + step, iv] - uq) @ dt
    return out / (n * a)


#: The label of the values a null window draws from outside the reference (never a real category: a NUL byte).
_UNSEEN = "\x00unseen"


def _draw_size(n_current: int, n_ref: int, pool: int) -> int:
    return max(1, min(pool, round(1.0 / (1.0 / n_current + 1.0 / max(n_ref, 1) + 1.0 / max(pool, 1)))))


def compare_column(ref: ColumnSummary, cur: ColumnSummary, options: ColumnOptions | None = None, *,
                   defaults: DriftOptions | None = None, name: str = "column",
                   calibrations: MutableMapping[str, np.ndarray] | None = None) -> ColumnDrift:
    """Test one column: the test, threshold and type from ``options``, else the defaults.

    With ``defaults.calibrated`` (and no threshold of the column's own), the threshold
    is calibrated (:func:`calibrate`) at the current's size; given ``calibrations``
    (a cache), at that size rounded down by :func:`calibration_size`, looked up there
    first and stored there when computed."""
    opts = options or ColumnOptions()
    base = defaults or DriftOptions()
    if ref.n == 0 or cur.n == 0:
        side = "reference" if ref.n == 0 else "current"
        raise InputError(name, f"has no values in the {side} data (all null or not finite)")
    if opts.type in ("categorical", "binary") and ref.kind == "numeric":
        raise InputError(name, "is summarised as numeric; summarise it as categorical to test it so")
    kind = column_type(ref, cur, opts.type)
    test_name = opts.test or default_test(ref, cur, base.small_sample)
    test = _TESTS[test_name]
    threshold = opts.threshold if opts.threshold is not None else (
        base.p_value if test.kind == "p_value" else base.distance)
    statistic, p_value = test.fn(ref, cur)
    fixed = test.verdict(statistic, p_value, threshold)
    if not base.calibrated or opts.threshold is not None:
        return ColumnDrift(type=kind, test=test_name, statistic=statistic, p_value=p_value,
                           threshold=float(threshold), drift=fixed, psi=psi(ref, cur))
    size = calibration_size(cur.n) if calibrations is not None else cur.n
    key = calibration_key(name, test_name, size, base.calibration_windows, base.seed)
    null = calibrations.get(key) if calibrations is not None else None
    if null is None:
        null = calibrate(ref, test_name, size, windows=base.calibration_windows, seed=base.seed, column=name)
        if calibrations is not None:
            calibrations[key] = null
    calibrated = float(np.quantile(null, base.quantile, method="higher"))  # no interpolation: inf stays inf
    observed = abs(statistic) if test_name == "ztest" else statistic
    return ColumnDrift(type=kind, test=test_name, statistic=statistic, p_value=p_value, threshold=calibrated,
                       drift=bool(observed > calibrated), psi=psi(ref, cur),
                       calibration={"quantile": base.quantile, "windows": base.calibration_windows,
                                    "window_size": size, "fixed_threshold": float(threshold),
                                    "fixed_drift": fixed})


def compare(reference: Mapping[str, ColumnSummary], current: Mapping[str, ColumnSummary],
            options: DriftOptions | None = None, *,
            calibrations: MutableMapping[str, np.ndarray] | None = None) -> DriftReport:
    """Test every column present in both mappings of summaries (reference order).

    A column with no values on either side (all null in the window, say) is not tested: it is in the
    report's ``no_data``, never a pass.

    ``calibrations`` is the cache of calibrated thresholds (see :func:`compare_column`)."""
    opts = options or DriftOptions()
    out: dict[str, ColumnDrift] = {}
    empty: dict[str, str] = {}
    for name, ref in reference.items():
        if name not in current:
            continue
        cur = current[name]
        if ref.n == 0 or cur.n == 0:
            side = "reference" if ref.n == 0 else "current"
            empty[name] = f"has no values in the {side} data (all null or not finite)"
            continue
        out[name] = compare_column(ref, cur, opts.for_column(name), defaults=opts, name=name,
                                   calibrations=calibrations)
    return DriftReport(columns=out, share_threshold=opts.drift_share, no_data=empty)


def infer_kind(arr: pa.ChunkedArray | pa.Array) -> Kind | None:
    """Numeric or categorical as Evidently 0.7 reads a column; None for a column not tested (text, time).

    Floats are numeric; integers numeric above 10 distinct values; booleans,
    dictionaries and strings categorical, except strings that are mostly
    distinct (free text, identifiers).
    """
    t = arr.type
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "numeric"
    if pa.types.is_integer(t):
        distinct = pc.count_distinct(arr).as_py()
        return "categorical" if distinct <= INTEGER_CARDINALITY_LIMIT else "numeric"
    if pa.types.is_boolean(t) or pa.types.is_dictionary(t):
        return "categorical"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        distinct = pc.count_distinct(arr).as_py()
        return None if distinct > 0.5 * (len(arr) - arr.null_count) else "categorical"
    return None


def _kind_of(arr: pa.ChunkedArray | pa.Array, name: str, opts: DriftOptions, explicit: bool) -> Kind | None:
    forced = opts.for_column(name).type
    if forced:
        return "numeric" if forced == "numeric" else "categorical"
    kind = infer_kind(arr)
    return "categorical" if kind is None and explicit else kind


def summarize(data: DataLike, *, columns: Sequence[str] | None = None, kinds: Mapping[str, Kind] | None = None,
              options: DriftOptions | None = None, max_points: int | None = None) -> dict[str, ColumnSummary]:
    """Summaries of ``columns`` (default: every testable column), one column at a time.

    ``kinds`` fixes a column's kind (a stored reference's kinds, applied to a
    current window); otherwise it comes from the options' ``type`` or is
    inferred from the data.
    """
    opts = options or DriftOptions()
    names = column_names(data)
    wanted = list(columns) if columns is not None else names
    out: dict[str, ColumnSummary] = {}
    for name in wanted:
        if name not in names:
            raise InputError("columns", f"no column {name!r}; the data has {', '.join(names)}", name)
        arr = _get_column(data, name)
        kind = kinds[name] if kinds is not None and name in kinds else _kind_of(arr, name, opts, columns is not None)
        if kind is not None:
            out[name] = summarize_column(arr, kind, max_points=max_points)
    return out


def select_columns(reference: DataLike, current: DataLike, *, columns: Sequence[str] | None = None,
                   exclude: Sequence[str] = (), target: str | None = None) -> list[str]:
    """The columns two datasets are compared on, the one choice every drift command makes.

    ``columns`` (each in both datasets), else every column in both, in the reference's order;
    less ``exclude`` (identifiers, timestamps) and ``target`` (the label: its drift is target
    drift, not a feature's). A name in ``exclude`` or ``target`` that neither dataset has is
    refused, so a misspelt exclusion cannot silently leave the column in.

    >>> ref = {"id": [1, 2], "x": [0.1, 0.2], "y": [0, 1], "only_ref": [1, 1]}
    >>> select_columns(ref, {"id": [3, 4], "x": [0.3, 0.1], "y": [1, 1]}, exclude=["id"], target="y")
    ['x']
    """
    ref_names, cur_names = column_names(reference), column_names(current)
    in_both = [c for c in ref_names if c in set(cur_names)]
    for field, names in (("exclude", list(exclude)), ("target", [target] if target else [])):
        unknown = [c for c in names if c not in ref_names and c not in cur_names]
        if unknown:
            raise InputError(field, f"names no column of either dataset (they have {', '.join(in_both)})",
                             ", ".join(unknown))
    if columns is not None:
        missing = [c for c in columns if c not in ref_names or c not in cur_names]
        if missing:
            raise InputError("columns", "not in both the reference and the current data", ", ".join(missing))
        chosen = list(columns)
    else:
        chosen = in_both
    dropped = {*exclude, *([target] if target else [])}
    out = [c for c in chosen if c not in dropped]
    if columns is not None and not out:
        raise InputError("columns", "every named column is excluded (by exclude or target)", ", ".join(columns))
    return out


def detect_drift(reference: DataLike, current: DataLike, *, columns: Sequence[str] | None = None,
                 exclude: Sequence[str] = (), target: str | None = None, options: DriftOptions | None = None,
                 workers: int | None = None) -> DriftReport:
    """Compare two datasets column by column, on the columns :func:`select_columns` chooses.

    Named ``columns`` are all tested (a text column as categorical); otherwise a column
    that cannot be tested (free text, identifiers as strings, times) is left out.
    Each column is summarised, tested and dropped in turn (``workers`` columns at a
    time, default one per core), so the memory needed beyond the data is a few
    sorted columns.
    """
    opts = options or DriftOptions()
    common = select_columns(reference, current, columns=columns, exclude=exclude, target=target)

    def one(name: str) -> tuple[str, ColumnDrift | None]:
        arr = _get_column(reference, name)
        kind = _kind_of(arr, name, opts, columns is not None)
        if kind is None:
            return name, None
        ref = summarize_column(arr, kind)
        cur = summarize_column(_get_column(current, name), kind)
        return name, compare_column(ref, cur, opts.for_column(name), defaults=opts, name=name)

    # numpy's sort and reductions release the GIL: a few threads overlap columns on several cores
    threads = max(1, min(workers if workers is not None else (os.cpu_count() or 1), 8, len(common) or 1))
    if threads == 1:
        results = [one(name) for name in common]
    else:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            results = list(pool.map(one, common))
    out = {name: col for name, col in results if col is not None}
    return DriftReport(columns=out, share_threshold=opts.drift_share)


# ---- data adapters ----------------------------------------------------------------------------


def column_names(data: DataLike) -> list[str]:
    if isinstance(data, pa.Table):
        return list(data.column_names)
    if hasattr(data, "columns") and not isinstance(data, Mapping):
        return [str(c) for c in data.columns]
    if isinstance(data, Mapping):
        return [str(c) for c in data]
    raise InputError("data", "must be a pandas DataFrame, a pyarrow Table or a mapping of columns",
                     type(data).__name__)


def _get_column(data: DataLike, name: str) -> Any:
    if isinstance(data, pa.Table):
        return data.column(name)
    return _as_arrow(data[name])


def _as_arrow(data: Any) -> pa.ChunkedArray | pa.Array:
    if isinstance(data, pa.ChunkedArray | pa.Array):
        return data
    if isinstance(data, np.ndarray):
        if data.dtype.kind in "fiub":
            return pa.array(data)
        return pa.array(data.astype(str) if data.dtype.kind == "U" else data, from_pandas=True)
    if hasattr(data, "to_numpy") and hasattr(data, "dtype"):  # a pandas Series
        return pa.array(data, from_pandas=True)
    if isinstance(data, Iterable):
        return pa.array(list(data), from_pandas=True)
    raise InputError("column", "must be an array, a pandas Series or an Arrow array", type(data).__name__)
