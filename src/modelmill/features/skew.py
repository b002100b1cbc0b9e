"""Training/serving skew: recompute logged feature vectors offline and count mismatches.

Serving logs each answered prediction to the offline table ``predictions``:
the model's inputs under their signature names (``features``), and for the
feature route the request's ``entities``. Which input came from which
feature reference is read from the model version's lineage (its feature
service) the way serving filled it (:func:`~modelmill.features.definitions.match_columns`).
A log written elsewhere may instead carry ``"view:feature"`` keys and the
entity join keys inside ``features``; both forms are read. For every row the
same features are rebuilt point-in-time at the row's ``ts``; a feature
mismatches when exactly one side is null or the values differ by more than
``tolerance`` (relative to the larger magnitude, at least 1). A row whose
entities or feature references cannot be recovered is counted as skipped,
with the reason, never as a match.

    >>> report = SkewReport(rows=10, features=[FeatureSkew("w:temp", 10, 1, 0, 0)])
    >>> report.features[0].mismatch_rate
    0.1
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import orjson
import pandas as pd

from modelmill.errors import InputError, NotFoundError
from modelmill.features.definitions import match_columns
from modelmill.store.feedback import Feedback
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
    """``rows`` logged predictions read, ``compared`` of them rebuilt offline, ``skipped`` not (by reason)."""

    rows: int
    features: list[FeatureSkew]
    skipped: int = 0
    compared: int = 0
    reasons: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def mismatches(self) -> int:
        return sum(f.mismatches for f in self.features)

    @property
    def status(self) -> str:
        """``pass``, ``fail`` (some feature mismatched) or ``no_data`` (no row could be compared)."""
        if not self.compared:
            return "no_data"
        return "fail" if self.mismatches else "pass"

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "rows": self.rows, "compared": self.compared, "skipped": self.skipped,
                "skipped_because": dict(self.reasons), "mismatches": self.mismatches,
                "features": [f.as_dict() for f in self.features]}


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

    feedback = Feedback(store.project.offline, predictions=table)
    if not feedback.has_predictions():
        raise NotFoundError("offline table", table, "serving writes the prediction log there; serve some requests")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise InputError("limit", "must be a positive integer", limit)
    log = feedback.served_inputs(model=model, since_us=None if since is None else to_us(since, "since"),
                                 until_us=None if until is None else to_us(until, "until"))
    if limit is not None and log.num_rows > limit:
        log = log.slice(log.num_rows - limit)

    sources = _Sources(store)
    groups: dict[tuple[str, ...], list[tuple[Any, dict[str, Any], dict[str, Any]]]] = defaultdict(list)
    reasons: dict[str, int] = defaultdict(int)
    entities_col = (log.column("entities").to_pylist() if "entities" in log.column_names
                    else [None] * log.num_rows)
    # Features are recomputed as of the time serving judged its online reads (under the event clock the
    # watermark, not the wall-clock time of the request), or the request's time in logs without it.
    at = log.column("features_at").to_pylist() if "features_at" in log.column_names else [None] * log.num_rows
    times = [a if a is not None else t for a, t in zip(at, log.column("ts").to_pylist(), strict=True)]
    for ts, name, version, vec, ents in zip(times, log.column("model").to_pylist(),
                                            log.column("version").to_pylist(), map_records(log.column("features")),
                                            entities_col, strict=True):
        if vec is None:
            reasons["no features logged"] += 1
            continue
        served, entities, why = sources.row(name, version, vec, ents)
        if why:
            reasons[why] += 1
            continue
        groups[tuple(sorted(served))].append((ts, served, entities))

    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    compared = 0
    for refs, rows in groups.items():
        keys = sorted({k for d in store._resolve(refs) for k in d[0].join_keys})
        usable = [(ts, v, e) for ts, v, e in rows if all(k in e for k in keys)]
        reasons["entity keys not logged"] += len(rows) - len(usable)
        if not usable:
            continue
        compared += len(usable)
        frame = pd.DataFrame({"event_timestamp": [ts for ts, _, _ in usable],
                              **{k: [e[k] for _, _, e in usable] for k in keys}})
        offline_values = store.get_training_set(frame, list(refs), full_feature_names=True)
        for ref in refs:
            view, feature = ref.split(":")
            recomputed = offline_values[f"{view}__{feature}"].tolist()
            c = counts[ref]
            for (_, served, _), again in zip(usable, recomputed, strict=True):
                c[0] += 1
                c[1] += not same(served[ref], again, tolerance)
                c[2] += served[ref] is None or (isinstance(served[ref], float) and math.isnan(served[ref]))
                c[3] += again is None or (isinstance(again, float) and math.isnan(again))
    features = [FeatureSkew(ref, *c) for ref, c in sorted(counts.items())]
    reasons = {k: v for k, v in reasons.items() if v}
    return SkewReport(rows=log.num_rows, features=features, skipped=sum(reasons.values()), compared=compared,
                      reasons=dict(reasons))


class _Sources:
    """Per logged (model, version): which input column holds which feature reference (from its lineage)."""

    def __init__(self, store: FeatureStore) -> None:
        self.store = store
        self._plans: dict[tuple[str, int], dict[str, str] | str] = {}

    def _plan(self, model: str, version: int) -> dict[str, str] | str:
        key = (model, version)
        if key not in self._plans:
            from modelmill.registry import Registry

            try:
                mv = Registry(self.store.project).get(model, int(version))
            except (NotFoundError, InputError):
                self._plans[key] = "model version not in the registry"
                return self._plans[key]
            service = (mv.lineage or {}).get("feature_service")
            if not service:
                self._plans[key] = "model has no feature service"
                return self._plans[key]
            refs = list(self.store.feature_service(service).features)
            columns = [f.name for f in mv.signature.inputs]
            self._plans[key] = {c: r for c, r in zip(columns, match_columns(columns, refs), strict=True) if r}
        return self._plans[key]

    def row(self, model: str, version: int, vec: dict[str, Any], entities: dict[str, str] | list[Any] | None
            ) -> tuple[dict[str, Any], dict[str, Any], str | None]:
        """The served ``{ref: value}``, the entity keys and, when the row cannot be compared, why not."""
        if any(":" in k for k in vec):  # a log that names features by reference, with its entity keys inside
            return ({k: v for k, v in vec.items() if ":" in k}, {k: v for k, v in vec.items() if ":" not in k},
                    None)
        if entities is None:
            return {}, {}, "no entities logged (not the feature route)"
        plan = self._plan(model, version)
        if isinstance(plan, str):
            return {}, {}, plan
        pairs = entities.items() if isinstance(entities, dict) else entities
        keys = {str(k): orjson.loads(v) for k, v in pairs}
        return {ref: vec.get(col) for col, ref in plan.items()}, keys, None
