"""The feedback path's one owner: label semantics through the real OfflineStore, and a guard that no other
module queries the prediction log or the labels itself."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest
from tests.prediction_log import prediction_log

from modelmill.errors import ConflictError, InputError, NotFoundError
from modelmill.store import Feedback, OfflineStore, write_labels
from modelmill.store.feedback import LabelTask, check_label, label_task, model_task

SRC = Path(__file__).resolve().parents[2] / "src" / "modelmill"
T0 = dt.datetime(2026, 12, 1, 10, tzinfo=dt.UTC)

# SQL over the two tables (also through a table-name variable), and the store calls that open them by name.
_QUERIES = [
    re.compile(r"(?i)\b(from|join|describe|into)\s+(predictions|labels)\b"),
    re.compile(r"(?i)\b(from|join|describe)\s+\{[^}]*(predictions|labels)"),
    re.compile(r"\.(exists|connect|read|write|glob|table_path)\(\s*\[?\s*[\"'](predictions|labels)[\"']"),
]
_OWNERS = ("store/feedback.py", "store/migrations/")


def table_queries(root: Path) -> list[str]:
    """``file:line: text`` of every place under ``root`` outside the owner that queries the tables."""
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(_OWNERS):
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if any(p.search(line) for p in _QUERIES):
                found.append(f"{rel}:{n}: {line.strip()}")
    return found


def test_only_the_feedback_module_queries_the_prediction_log_and_the_labels() -> None:
    assert table_queries(SRC) == [], "read the prediction log and the labels through modelmill.store.Feedback"


def test_the_guard_sees_each_kind_of_query(tmp_path: Path) -> None:
    (tmp_path / "reader.py").write_text(
        'a = con.execute("SELECT * FROM predictions p JOIN labels l USING (request_id)")\n'
        'b = f"SELECT label FROM {self.labels_table}"\n'
        'c = offline.exists("labels")\n'
        'd = offline.connect(["predictions"])\n'
        'e = "predictions"  # a name alone is not a query\n')
    assert [line.split(":")[1] for line in table_queries(tmp_path)] == ["1", "2", "3", "4"]


def _log(store: OfflineStore, ids: list[str], *, model: str = "m", outputs: list[float] | None = None,
         failed: tuple[str, ...] = ()) -> None:
    outs = outputs or [0.1 * (i + 1) for i in range(len(ids))]
    with prediction_log(store, at={r: T0 - dt.timedelta(hours=1) for r in ids}) as log:
        for rid, out in zip(ids, outs, strict=True):
            if rid in failed:
                log.append_failure(rid, model, 1, "main", None, 503, "Unavailable", 2.0)
            else:
                log.append(rid, model, 1, "main", None, ("x",), np.array([[out]]), np.array([out]), 2.0)


def test_the_label_with_the_newest_ts_wins_whatever_order_they_arrive_in(tmp_path: Path) -> None:
    store = OfflineStore(str(tmp_path))
    _log(store, ["a", "b"])
    at = lambda h: (T0 + dt.timedelta(hours=h)).isoformat()  # noqa: E731
    assert write_labels(store, "m", [{"id": "a", "label": 0, "ts": at(2)}]).as_dict() == {
        "accepted": 1, "duplicates": 0, "unknown": 0}
    write_labels(store, "m", [{"id": "a", "label": 1, "ts": at(1)}])  # late, but older: loses
    write_labels(store, "m", [{"id": "b", "label": 1, "ts": at(1)}, {"id": "b", "label": 0, "ts": at(3)}])
    assert Feedback(store).labelled(model="m").to_pydict()["label"] == [0.0, 0.0]
    write_labels(store, "m", [{"request_id": "a", "label": 1, "ts": at(5)}])  # a correction: newer, wins
    got = Feedback(store).labelled(model="m").to_pydict()
    assert dict(zip(got["output"], got["label"], strict=True)) == {0.1: 1.0, 0.2: 0.0}


def test_of_two_labels_with_the_same_ts_the_one_received_last_wins(tmp_path: Path) -> None:
    store = OfflineStore(str(tmp_path))
    _log(store, ["a"])
    write_labels(store, "m", [{"id": "a", "label": 1, "ts": T0}], now=T0.timestamp() + 10)
    write_labels(store, "m", [{"id": "a", "label": 0, "ts": T0}], now=T0.timestamp() + 20)
    assert Feedback(store).labelled(model="m").column("label").to_pylist() == [0.0]


def test_a_repeated_label_is_counted_as_a_duplicate_and_stored_once(tmp_path: Path) -> None:
    store = OfflineStore(str(tmp_path))
    _log(store, ["a", "b"])
    batch = [{"id": "a", "label": 1, "ts": T0}, {"id": "b", "label": 0, "ts": T0}, {"id": "a", "label": 1, "ts": T0}]
    assert write_labels(store, "m", batch).as_dict() == {"accepted": 2, "duplicates": 1, "unknown": 0}
    assert write_labels(store, "m", batch).as_dict() == {"accepted": 0, "duplicates": 3, "unknown": 0}
    assert store.read("labels").num_rows == 2
    # The same id and ts with another label is no duplicate: it is a correction.
    assert write_labels(store, "m", [{"id": "a", "label": 0, "ts": T0}]).duplicates == 0


def test_a_label_without_a_prediction_is_unknown_and_joins_once_the_prediction_is_logged(tmp_path: Path) -> None:
    store = OfflineStore(str(tmp_path))
    assert write_labels(store, "m", [{"id": "early", "label": 1}]).as_dict() == {
        "accepted": 0, "duplicates": 0, "unknown": 1}
    _log(store, ["other"], model="n")
    assert write_labels(store, "m", [{"id": "other", "label": 1}]).unknown == 1  # a prediction of another model
    _log(store, ["early"])
    assert Feedback(store).labelled(model="m").column("label").to_pylist() == [1.0]


def test_labels_are_per_model_and_old_labels_without_a_model_still_join(tmp_path: Path) -> None:
    store = OfflineStore(str(tmp_path))
    _log(store, ["same", "old"], model="m", outputs=[0.3, 0.4])
    _log(store, ["same"], model="n", outputs=[0.9])
    write_labels(store, "m", [{"id": "same", "label": 1, "ts": T0}])
    # Written as the demo and the fixtures did before labels named their model (an int label, no model).
    store.write("labels", pa.table({"request_id": ["old"], "ts": pa.array([T0], pa.timestamp("us", tz="UTC")),
                                    "label": pa.array([1], pa.int64())}), time_column="ts")
    assert Feedback(store).labelled(model="n").num_rows == 0  # model m's label is not n's
    got = Feedback(store).labelled(model="m").to_pydict()
    assert sorted(zip(got["output"], got["label"], strict=True)) == [(0.3, 1.0), (0.4, 1.0)]
    # An old untagged label and a newer tagged one: the newer wins either way round.
    write_labels(store, "m", [{"id": "old", "label": 0, "ts": T0 + dt.timedelta(minutes=1)}])
    got = Feedback(store).labelled(model="m").to_pydict()
    assert sorted(zip(got["output"], got["label"], strict=True)) == [(0.3, 1.0), (0.4, 0.0)]


def test_an_old_labels_table_without_a_model_column_joins_on_the_id(tmp_path: Path) -> None:
    store = OfflineStore(str(tmp_path))
    _log(store, ["a"])
    store.write("labels", pa.table({"request_id": ["a", "a"], "ts": pa.array([T0, T0 - dt.timedelta(days=1)],
                                                                           pa.timestamp("us", tz="UTC")),
                                    "label": pa.array([1, 0], pa.int64())}), time_column="ts")
    assert Feedback(store).labelled(model="m").column("label").to_pylist() == [1.0]
    assert write_labels(store, "m", [{"id": "a", "label": 1, "ts": T0}]).duplicates == 1


def test_failed_requests_are_outcomes_but_not_labelled_predictions(tmp_path: Path) -> None:
    store = OfflineStore(str(tmp_path))
    _log(store, ["ok", "bad", "unlabelled"], failed=("bad",))
    write_labels(store, "m", [{"id": "ok", "label": 1}, {"id": "bad", "label": 0}])
    assert Feedback(store).labelled(model="m").column("output").to_pylist() == [0.1]
    out = Feedback(store).outcomes("m", since=0).set_index("request_id")
    assert out.loc["ok", "label"] == 1.0 and out.loc["bad", "label"] == 0.0 and np.isnan(out.loc["unlabelled", "label"])
    assert out.loc["bad", "status"] == 503


@pytest.mark.parametrize(("row", "field"), [
    ({"id": "a", "label": "yes"}, "labels[1].label"),
    ({"id": "a", "label": float("nan")}, "labels[1].label"),
    ({"id": "a"}, "labels[1].label"),
    ({"label": 1}, "labels[1].id"),
    ({"id": "", "label": 1}, "labels[1].id"),
    ({"id": "a", "label": 1, "ts": "yesterday"}, "labels[1].ts"),
])
def test_a_bad_label_names_its_field_and_nothing_is_stored(tmp_path: Path, row: dict[str, object], field: str) -> None:
    store = OfflineStore(str(tmp_path))
    _log(store, ["a"])
    with pytest.raises(InputError) as err:
        write_labels(store, "m", [{"id": "a", "label": 1}, row])
    assert err.value.field == field
    assert not store.exists("labels")


def test_a_label_sent_again_without_ts_is_a_duplicate_and_a_changed_one_wins(tmp_path: Path) -> None:
    store = OfflineStore(str(tmp_path))
    _log(store, ["a"])
    assert write_labels(store, "m", [{"id": "a", "label": 1}], now=T0.timestamp()).accepted == 1
    again = write_labels(store, "m", [{"id": "a", "label": 1}, {"id": "a", "label": 1}], now=T0.timestamp() + 60)
    assert again.as_dict() == {"accepted": 0, "duplicates": 2, "unknown": 0}
    assert write_labels(store, "m", [{"id": "a", "label": 0}], now=T0.timestamp() + 120).accepted == 1
    assert Feedback(store).labelled(model="m").column("label").to_pylist() == [0.0]
    assert store.read("labels").num_rows == 2


BINARY, REGRESSION, UNKNOWN = LabelTask(kind="binary"), LabelTask(kind="regression"), LabelTask()
CLASSES, WHOLE = LabelTask(kind="multiclass", classes=(0, 1, 5)), LabelTask(kind="multiclass")


@pytest.mark.parametrize(("task", "good", "bad"), [
    (BINARY, [0, 1, 0.0, 1.0, True, False, np.int64(1), np.bool_(False)], [2, -1, 0.5, "1", "true", None]),
    (CLASSES, [0, 1, 5, 5.0, np.int32(5)], [2, 0.5, True, "5", None]),
    (WHOLE, [0, 3, -2, 12.0], [1.5, True, "3", None]),
    (REGRESSION, [0, -3.25, 1e300, np.float32(2.5)], [True, "3.2", None, [1.0]]),
    (UNKNOWN, [0, 0.75, -3, True], ["0.75", None, {"v": 1}]),
])
def test_each_task_takes_its_labels_and_refuses_others(task: LabelTask, good: list[object], bad: list[object]) -> None:
    for value in good:
        assert task.check(value, "label") == float(value), value  # type: ignore[arg-type]
    for value in [*bad, float("nan"), float("inf"), -float("inf"), np.float64("nan")]:
        with pytest.raises(InputError) as err:
            task.check(value, "labels[3].label")
        assert err.value.field == "labels[3].label" and task.expects in err.value.problem, value
        assert json.dumps(err.value.to_dict(), allow_nan=False)  # NaN is shown as text: the CLI's --json holds it


def version(tags: dict[str, str] | None = None, lineage: dict[str, object] | None = None,
            outputs: tuple[str, ...] = ("probability",)) -> SimpleNamespace:
    """What label_task reads of a registry version (the registry's ModelVersion has these attributes)."""
    return SimpleNamespace(name="clf", version=3, tags=tags or {}, lineage=lineage or {},
                           signature=SimpleNamespace(output_names=list(outputs)))


@pytest.mark.parametrize(("mv", "want"), [
    (version(), LabelTask(kind="binary", source="clf@3 (signature output 'probability')")),
    (version(outputs=("value",)), LabelTask(source="clf@3")),
    (version(outputs=("probability", "class"),), LabelTask(source="clf@3")),
    (SimpleNamespace(name="clf", version=3), LabelTask(source="clf@3")),  # a static source's version: nothing recorded
    (version(tags={"task": "Regression"}), LabelTask(kind="regression", source="clf@3 (tags.task)")),
    (version(tags={"task": "multiclass", "classes": "0, 1,5"}),
     LabelTask(kind="multiclass", classes=(0, 1, 5), source="clf@3 (tags.task)")),
    (version(lineage={"task": "multiclass", "classes": [2, 4]}),
     LabelTask(kind="multiclass", classes=(2, 4), source="clf@3 (lineage.task)")),
    (version(tags={"task": "multiclass"}, lineage={"classes": [2, 4]}),
     LabelTask(kind="multiclass", classes=(2, 4), source="clf@3 (tags.task)")),
    (version(tags={"task": "binary"}, lineage={"task": "regression"}), LabelTask(kind="binary", source="clf@3 (tags.task)")),
    (version(tags={"task": "binary", "classes": "0,1,2"}), LabelTask(kind="binary", source="clf@3 (tags.task)")),
    (version(lineage={"task": "regression"}, outputs=("probability",)),
     LabelTask(kind="regression", source="clf@3 (lineage.task)")),
])
def test_the_task_is_read_from_tags_then_lineage_then_the_signature(mv: SimpleNamespace, want: LabelTask) -> None:
    assert label_task(mv) == want


@pytest.mark.parametrize("mv", [version(tags={"task": "ranking"}),
                                version(lineage={"task": "multiclass", "classes": ["a", "b"]}),
                                version(lineage={"task": "multiclass", "classes": [0, float("nan")]}),
                                version(lineage={"task": "multiclass", "classes": 3})])
def test_a_task_record_modelmill_cannot_read_is_a_conflict_not_a_guess(mv: SimpleNamespace) -> None:
    with pytest.raises(ConflictError) as err:
        label_task(mv)
    assert "clf@3" in err.value.message


def test_the_task_comes_from_the_models_newest_version_of_the_registry(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    from modelmill.config import Settings
    from modelmill.project import Project
    from modelmill.registry import Field, Registry, Signature

    with Project(Settings.defaults(home=tmp_path / "home")) as project:
        registry = Registry(project)
        lr = LogisticRegression().fit(np.array([[0.0], [1.0]]), np.array([0, 1]))
        registry.register("m", lr, flavor="sklearn", signature=Signature(inputs=[Field("x")]))
        assert model_task(registry, "m").kind == "binary"
        registry.register("m", lr, flavor="sklearn", signature=Signature(inputs=[Field("x")]),
                          tags={"task": "regression"})
        assert model_task(registry, "m") == LabelTask(kind="regression", source="m@2 (tags.task)")
        with pytest.raises(NotFoundError):
            model_task(registry, "nope")
        with pytest.raises(InputError) as err:
            model_task(registry, "m@1")
        assert err.value.field == "model"


def test_write_labels_checks_every_row_against_the_task_before_storing_any(tmp_path: Path) -> None:
    store = OfflineStore(str(tmp_path))
    _log(store, ["a", "b"])
    rows = [{"id": "a", "label": True}, {"id": "b", "label": 0.5}]
    with pytest.raises(InputError) as err:
        write_labels(store, "m", rows, task=BINARY, where=lambda i: f"row {i + 1}")
    assert err.value.field == "row 2.label" and not store.exists("labels")
    assert write_labels(store, "m", rows, task=UNKNOWN).accepted == 2
    assert sorted(Feedback(store).labelled(model="m").column("label").to_pylist()) == [0.5, 1.0]
    assert check_label({"request_id": 7, "label": 1, "ts": "2026-12-01T10:00:00Z"}, BINARY) == (
        "7", int(T0.timestamp() * 1e6), 1.0)
