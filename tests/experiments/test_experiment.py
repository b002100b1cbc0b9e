"""Experiments in the metadata database (SQLite and PostgreSQL), sticky assignment and exposures."""

from __future__ import annotations

import pytest

from modelmill.config import Settings
from modelmill.errors import ConflictError, InputError, NotFoundError
from modelmill.experiments import Arm, Assigner, Experiment, Experiments, parse_arms
from modelmill.project import Project
from modelmill.serving import RouteTable, bucket

from .conftest import log_served


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
    rows = []
    for i in range(3000):
        user = f"user-{i % 1000}"
        v = assigner.assign(user)
        # The treatment's users convert more: 30% against 20% (deterministic pattern).
        label = 1.0 if (i * 7919) % 100 < (30 if v == "treatment" else 20) else 0.0
        rows.append((f"r{i}", v, 1 if v == "control" else 2, user, 0.5, label))
    log_served(project.offline, "m", rows)
    assert store.sync_exposures("ab") == 1000
    assert store.sync_exposures("ab") == 0
    out = store.analyze("ab").as_dict()
    assert out["test"] == "delta" and out["control"]["n"] + out["treatment"]["n"] == 1000
    assert out["decision"] == "switch_to_treatment", out["reason"]
    assert out["lift_abs"] == pytest.approx(0.10, abs=0.03)
    assert out["direction"] == "higher"


def _worse_treatment_rows(exp: Experiment, n: int = 4000) -> list[tuple[str, str, int, str, float, float | None]]:
    """Labels 30% positive; the control predicts 0.3 (log loss 0.61), the treatment 0.7 (log loss 0.95)."""
    assigner = exp.assigner()
    rows: list[tuple[str, str, int, str, float, float | None]] = []
    for i in range(n):
        user = f"user-{i % 1000}"
        v = assigner.assign(user)
        label = 1.0 if (i * 7919) % 10 < 3 else 0.0
        rows.append((f"r{i}", v, 1 if v == "control" else 2, user, 0.3 if v == "control" else 0.7, label))
    return rows


def test_a_lower_is_better_metric_keeps_the_control_when_the_treatment_is_worse(project: Project) -> None:
    store = Experiments(project)
    exp = store.create(Experiment(name="ll", model="m", primary_metric="log_loss", min_sample_size=100,
                                  variants=(Arm("control", 50, 1), Arm("treatment", 50, 2))))
    assert exp.direction == "lower" and store.get("ll").direction == "lower"
    log_served(project.offline, "m", _worse_treatment_rows(exp))
    out = store.analyze("ll").as_dict()
    assert out["metric"] == "log_loss" and out["direction"] == "lower"
    assert out["treatment"]["mean"] - out["control"]["mean"] == pytest.approx(0.34, abs=0.03)
    assert out["decision"] == "keep_control" and "treatment is worse" in out["reason"], out["reason"]
    # Told that higher is better, the same log switches: the direction alone decides.
    flipped = store.analyze("ll", direction="higher").as_dict()
    assert flipped["decision"] == "switch_to_treatment" and "treatment is better" in flipped["reason"]
    # The Brier score is lower-is-better too, by default (one experiment runs on a model at a time).
    store.stop("ll")
    brier = store.create(Experiment(name="br", model="m", primary_metric="brier", min_sample_size=100,
                                    variants=(Arm("control", 50, 1), Arm("treatment", 50, 2))))
    assert brier.direction == "lower"


def test_a_served_experiment_on_a_metric_the_log_cannot_give_is_refused_when_created(project: Project) -> None:
    store = Experiments(project)
    arms = (Arm("control", 50, 1), Arm("treatment", 50, 2))
    with pytest.raises(InputError, match="primary_metric") as info:
        store.create(Experiment(name="rev", model="m", primary_metric="revenue", variants=arms))
    assert "log_loss" in info.value.message
    with pytest.raises(InputError, match="guardrails"):
        store.create(Experiment(name="rev", model="m", primary_metric="label", guardrails=("p99",), variants=arms))
    assert store.list() == []
    with pytest.raises(NotFoundError):
        RouteTable(project).get("m")  # nothing was routed either
    with pytest.raises(InputError, match="direction"):
        Experiment(name="x", primary_metric="click", direction="sideways", variants=(Arm("a", 1), Arm("b", 1)))
    # Without a served model the metric is a column of the user's own log: anything goes.
    assert store.create(Experiment(name="rev", primary_metric="revenue", variants=(Arm("a", 1), Arm("b", 1)))
                        ).direction == "higher"


def test_accuracy_and_conversion_are_label_derived_served_metrics(project: Project) -> None:
    store = Experiments(project)
    arms = (Arm("control", 50, 1), Arm("treatment", 50, 2))
    acc = store.create(Experiment(name="acc", model="m", primary_metric="accuracy", min_sample_size=100,
                                  variants=arms))
    # one experiment runs on a model at a time; a stopped one is still analysed on the log since it began
    store.stop("acc")
    conv = store.create(Experiment(name="conv", model="m", primary_metric="conversion", min_sample_size=100,
                                   variants=arms))
    store.stop("conv")
    label = store.create(Experiment(name="lab", model="m", primary_metric="label", min_sample_size=100,
                                    variants=arms))
    assert acc.direction == "higher" and conv.direction == "higher"
    rows = _worse_treatment_rows(acc)
    # A log of requests answered but not labelled yet: no accuracy from them, only from the labelled ones.
    unlabelled = [(f"late-{i}", v, ver, key, out, None) for i, (_, v, ver, key, out, _) in enumerate(rows[:500])]
    log_served(project.offline, "m", rows + unlabelled)
    out = store.analyze("acc").as_dict()
    # The control predicts 0.3 (class 0, right on every 0 label), the treatment 0.7 (class 1, right on every 1).
    for arm, right in (("control", 0.0), ("treatment", 1.0)):
        labels = [y for _, v, _, _, _, y in rows if v == arm]
        assert out[arm]["mean"] == pytest.approx(sum(y == right for y in labels) / len(labels), abs=1e-12)
    assert out["metric"] == "accuracy" and out["direction"] == "higher"
    assert out["decision"] == "keep_control" and "treatment is worse" in out["reason"], out["reason"]
    # conversion: the mean of the 0/1 label, the same numbers as 'label', under the name A/B tests use.
    got, same = store.analyze(conv.name).as_dict(), store.analyze(label.name).as_dict()
    for arm in ("control", "treatment"):
        labels = [y for _, v, _, _, _, y in rows if v == arm]
        assert got[arm]["mean"] == pytest.approx(sum(labels) / len(labels), abs=1e-12) == same[arm]["mean"]


def test_a_label_derived_score_on_labels_that_are_not_0_or_1_is_refused(project: Project) -> None:
    store = Experiments(project)
    arms = (Arm("control", 50, 1), Arm("treatment", 50, 2))
    exp = store.create(Experiment(name="acc", model="m", primary_metric="accuracy", min_sample_size=1,
                                  variants=arms))
    store.stop("acc")  # one experiment runs on a model at a time
    store.create(Experiment(name="lab", model="m", primary_metric="label", min_sample_size=1, variants=arms))
    assigner = exp.assigner()
    log_served(project.offline, "m", [(f"r{i}", assigner.assign(f"u{i}"), 1 if assigner.assign(f"u{i}") ==
                                       "control" else 2, f"u{i}", 0.5, 3.5) for i in range(40)])
    with pytest.raises(InputError, match="0/1 labels") as info:
        store.analyze("acc")
    assert info.value.field == "label" and info.value.value == 3.5
    # 'label' itself takes any number: its mean is still defined.
    assert store.analyze("lab").as_dict()["control"]["mean"] == pytest.approx(3.5)


def test_an_unknown_served_metric_lists_every_accepted_one_with_its_direction(project: Project) -> None:
    from modelmill.experiments import SERVED_METRICS

    with pytest.raises(InputError, match="primary_metric") as info:
        Experiments(project).create(Experiment(name="x", model="m", primary_metric="auc",
                                               variants=(Arm("control", 50, 1), Arm("treatment", 50, 2))))
    message = info.value.message
    assert all(m in message for m in SERVED_METRICS), message
    assert "accuracy (higher is better)" in message and "brier (lower is better)" in message
