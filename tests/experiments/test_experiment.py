"""Experiments in the metadata database (SQLite and PostgreSQL), sticky assignment and exposures."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest

from modelmill.config import Settings
from modelmill.errors import ConflictError, InputError, NotFoundError
from modelmill.experiments import Arm, Assigner, Experiment, Experiments, parse_arms
from modelmill.project import Project
from modelmill.serving import RouteTable, bucket


def test_assignment_is_sticky_weighted_and_matches_the_router() -> None:
    a = Assigner(variants=[("control", 90), ("treatment", 10)], salt="exp-7")
    units = [f"u{i}" for i in range(20_000)]
    first = a.assign_many(units)
    assert first == Assigner(variants=[("treatment", 10), ("control", 90)], salt="exp-7").assign_many(units)
    share = first.count("treatment") / len(units)
    assert 0.09 < share < 0.11
    other = Assigner(variants=[("control", 90), ("treatment", 10)], salt="exp-8").assign_many(units)
    assert sum(x != y for x, y in zip(first, other, strict=True)) > 1000  # a new salt reshuffles
    # The same split as serving's route: the position from bucket() and the edges in name order.
    assert all((bucket(u, "exp-7") < 0.9) == (v == "control") for u, v in zip(units, first, strict=True))
    with pytest.raises(InputError):
        Assigner(variants=[("a", 1)], salt="")


def test_parse_arms() -> None:
    assert parse_arms(["control=production:90", "treatment=4:10"]) == (
        Arm("control", 90.0, "production"), Arm("treatment", 10.0, 4))
    assert parse_arms(["A:50", "B:50"]) == (Arm("A", 50.0), Arm("B", 50.0))
    with pytest.raises(InputError):
        parse_arms(["A"])


def _lifecycle(project: Project) -> None:
    store = Experiments(project)
    exp = store.create(Experiment(name="ranker", model="ranker", primary_metric="label", min_sample_size=2,
                                  variants=(Arm("control", 50, "production"), Arm("treatment", 50, 2))))
    assert store.get("ranker").salt == "ranker" and [e.name for e in store.list()] == ["ranker"]
    with pytest.raises(ConflictError):
        store.create(exp)
    route = RouteTable(project).get("ranker")
    assert {v.name: (v.version, v.weight) for v in route.variants} == {"control": ("production", 50.0),
                                                                       "treatment": (2, 50.0)}
    assert route.salt == "ranker"
    assigner = exp.assigner()
    units = [f"user-{i}" for i in range(400)]
    rows = [(u, assigner.assign(u), float(i)) for i, u in enumerate(units)]
    assert store.log_exposures("ranker", rows) == 400
    assert store.log_exposures("ranker", rows) == 0  # replayed: nothing doubled
    counts = store.exposure_counts("ranker")
    assert sum(counts.values()) == 400 and min(counts.values()) > 150
    status = store.status("ranker")
    assert status["srm_p_value"] > 0.001 and status["min_sample_reached"]
    with pytest.raises(InputError):
        store.log_exposures("ranker", [("x", "nope", 1.0)])
    stopped = store.stop("ranker", winner="treatment")
    assert stopped.status == "stopped" and stopped.result == {"winner": "treatment"}
    assert [(v.name, v.version) for v in RouteTable(project).get("ranker").variants] == [("treatment", 2)]
    with pytest.raises(ConflictError):
        store.stop("ranker")
    with pytest.raises(NotFoundError):
        store.get("nope")


def test_lifecycle_sqlite(project: Project) -> None:
    _lifecycle(project)


def test_lifecycle_postgres(pg_url: str, settings: Settings) -> None:
    p = Project(settings.replace(db=pg_url))
    try:
        _lifecycle(p)
    finally:
        p.close()


def test_exposures_and_analysis_from_the_prediction_log(project: Project) -> None:
    store = Experiments(project)
    exp = store.create(Experiment(name="ab", model="m", primary_metric="label", min_sample_size=100,
                                  variants=(Arm("control", 50, 1), Arm("treatment", 50, 2))))
    assigner = exp.assigner()
    ts = dt.datetime.now(dt.UTC)
    rids, variants, keys, labels = [], [], [], []
    for i in range(3000):
        user = f"user-{i % 1000}"
        v = assigner.assign(user)
        rids.append(f"r{i}")
        variants.append(v)
        keys.append(user)
        # The treatment's users convert more: 30% against 20% (deterministic pattern).
        labels.append(1.0 if (i * 7919) % 100 < (30 if v == "treatment" else 20) else 0.0)
    n = len(rids)
    preds = pa.table({"request_id": rids, "ts": pa.array([ts] * n, pa.timestamp("us", tz="UTC")),
                      "model": ["m"] * n, "version": [1 if v == "control" else 2 for v in variants],
                      "variant": variants, "routing_key": keys, "features": ["{}"] * n, "output": [0.5] * n,
                      "latency_ms": [1.0] * n})
    project.offline.write("predictions", preds, time_column="ts")
    project.offline.write("labels", pa.table({"request_id": rids, "ts": preds.column("ts"), "label": labels}),
                          time_column="ts")
    assert store.sync_exposures("ab") == 1000
    assert store.sync_exposures("ab") == 0
    out = store.analyze("ab").as_dict()
    assert out["test"] == "delta" and out["control"]["n"] + out["treatment"]["n"] == 1000
    assert out["decision"] == "switch_to_treatment", out["reason"]
    assert out["lift_abs"] == pytest.approx(0.10, abs=0.03)
