"""Training/serving skew: recompute logged feature vectors offline and count mismatches.

Serving logs each prediction to the offline table ``predictions`` with the
feature vector as a JSON object. Keys of the form ``"view:feature"`` are
feature values; the other keys are entity join-key values. For every logged
row the same features are rebuilt point-in-time at the row's ``ts``; a
feature mismatches when exactly one side is null or the values differ by
more than ``tolerance`` (relative to the larger magnitude, at least 1).

    >>> report = SkewReport(rows=10, features=[FeatureSkew("w:temp", 10, 1, 0, 0)])
    >>> report.features[0].mismatch_rate
    0.1
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import pandas as pd

from modelmill.errors import InputError, NotFoundError
from modelmill.features.definitions import parse_ref
from modelmill.store.maps import map_records

if TYPE_CHECKING:
    from modelmill.features.store import FeatureStore

__all__ = ["FeatureSkew", "SkewReport", "skew_report"]


@dataclasses.dataclass(frozen=True)
class FeatureSkew:
    """How often one feature's served value differed from its offline recomputation."""

    feature: str
    compared: int
    mismatches: int
    null_online: int
    null_offline: int

    @property
    def mismatch_rate(self) -> float:
        return self.mismatches / self.compared if self.compared else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "mismatch_rate": self.mismatch_rate}


@dataclasses.dataclass(frozen=True)
class SkewReport:
    rows: int
    features: list[FeatureSkew]
    skipped: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "skipped": self.skipped, "features": [f.as_dict() for f in self.features]}


def same(a: Any, b: Any, tolerance: float) -> bool:
    """Whether a served and a recomputed value agree (nulls and NaN count as null)."""
    a_null = a is None or (isinstance(a, float) and math.isnan(a))
    b_null = b is None or (isinstance(b, float) and math.isnan(b))
    if a_null or b_null:
        return a_null and b_null
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return abs(float(a) - float(b)) <= tolerance * max(1.0, abs(float(a)), abs(float(b)))
    return bool(a == b)


def skew_report(
    store: FeatureStore,
    *,
    model: str | None = None,
    since: Any = None,
    until: Any = None,
    limit: int | None = 100_000,
    tolerance: float = 1e-9,
    table: str = "predictions",
) -> SkewReport:
    """Per feature, the rate at which the served value differs from the training-set value at the same time."""
    from modelmill.features.store import to_us

    offline = store.project.offline
    if not offline.exists(table):
        raise NotFoundError("offline table", table, "serving writes the prediction log there; serve some requests")
    where = ["features IS NOT NULL"]
    if model is not None:
        where.append(f"model = '{model.replace(chr(39), chr(39) * 2)}'")
    if since is not None:
        where.append(f"epoch_us(ts) >= {to_us(since, 'since')}")
    if until is not None:
        where.append(f"epoch_us(ts) <= {to_us(until, 'until')}")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise InputError("limit", "must be a positive integer", limit)
    log = offline.read(table, columns=["request_id", "ts", "features"], where=" AND ".join(where))
    if limit is not None and log.num_rows > limit:
        log = log.slice(log.num_rows - limit)

    # Group rows by the set of features they logged: one point-in-time join per group.
    groups: dict[tuple[str, ...], list[tuple[Any, dict[str, Any]]]] = defaultdict(list)
    skipped = 0
    for ts, vec in zip(log.column("ts").to_pylist(), map_records(log.column("features")), strict=True):
        if vec is None:
            skipped += 1
            continue
        refs = tuple(sorted(k for k in vec if ":" in k))
        if not refs:
            skipped += 1
            continue
        groups[refs].append((ts, vec))

    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for refs, rows in groups.items():
        for ref in refs:
            parse_ref(ref)
        keys = sorted({k for d in (store._resolve(refs)) for k in d[0].join_keys})
        usable = [(ts, v) for ts, v in rows if all(k in v for k in keys)]
        skipped += len(rows) - len(usable)
        if not usable:
            continue
        frame = pd.DataFrame({"event_timestamp": [ts for ts, _ in usable],
                              **{k: [v[k] for _, v in usable] for k in keys}})
        offline_values = store.get_training_set(frame, list(refs), full_feature_names=True)
        for ref in refs:
            view, feature = ref.split(":")
            recomputed = offline_values[f"{view}__{feature}"].tolist()
            c = counts[ref]
            for (_, served), again in zip(usable, recomputed, strict=True):
                c[0] += 1
                c[1] += not same(served[ref], again, tolerance)
                c[2] += served[ref] is None
                c[3] += again is None or (isinstance(again, float) and math.isnan(again))
    features = [FeatureSkew(ref, *c) for ref, c in sorted(counts.items())]
    return SkewReport(rows=log.num_rows, features=features, skipped=skipped)
