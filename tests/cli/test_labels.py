"""``modelmill labels ingest`` as a user runs it: the real console entry point, the real offline store."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from tests.prediction_log import prediction_log

from modelmill.project import Project, load_settings
from modelmill.registry import Field, Registry, Signature
from modelmill.store import Feedback

# Each test runs the console entry point several times (about 100 s in all on a quiet 2-core machine):
# .ci/run runs them; make test keeps its 10 minutes with the labels route's and stream's tests.
pytestmark = pytest.mark.slow


def mm(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "modelmill", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def register(project: Project, name: str, **record: Any) -> None:
    """A version of ``name``: a binary classifier unless ``record`` (tags, lineage, signature) says otherwise."""
    X, y = np.array([[0.0], [1.0], [2.0], [3.0]]), np.array([0, 0, 1, 1])
    record.setdefault("signature", Signature(inputs=[Field("x")]))  # output 'probability': binary
    Registry(project).register(name, LogisticRegression().fit(X, y), flavor="sklearn", **record)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A project with model ``m`` (a binary classifier) and three logged predictions of it (ids r1, r2, r3)."""
    (tmp_path / "modelmill.toml").write_text('home = ".modelmill"\n')
    with Project(load_settings(cwd=tmp_path)) as project:
        register(project, "m")
        with prediction_log(project.offline) as log:
            for i, rid in enumerate(("r1", "r2", "r3")):
                log.append(rid, "m", 1, "main", None, ("x",), np.array([[float(i)]]), np.array([0.2 + 0.3 * i]),
                           1.0)
    return tmp_path


def _labelled(home: Path) -> dict[float, float]:
    with Project(load_settings(cwd=home)) as project:
        got = Feedback(project.offline).labelled(model="m").to_pydict()
    return dict(zip(got["output"], got["label"], strict=True))


@pytest.mark.parametrize("kind", [pytest.param("csv", marks=pytest.mark.slow), "parquet",
                                  pytest.param("jsonl", marks=pytest.mark.slow)])  # .ci/run: all three
def test_ingest_counts_accepted_duplicates_and_unknown_labels(home: Path, kind: str) -> None:
    frame = pd.DataFrame({"id": ["r1", "r2", "nope"], "label": [1, 0, 1],
                          "ts": ["2026-12-01T10:00:00Z", "2026-12-01T10:00:00Z", "2026-12-01T10:00:00Z"]})
    path = home / f"labels.{kind}"
    if kind == "csv":
        frame.to_csv(path, index=False)
    elif kind == "parquet":
        frame.to_parquet(path)
    else:
        frame.to_json(path, orient="records", lines=True)
    first = mm(home, "labels", "ingest", str(path), "--model", "m", "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == {"model": "m", "file": str(path), "rows": 3, "accepted": 2, "duplicates": 0,
                                        "unknown": 1}
    again = mm(home, "labels", "ingest", str(path), "--model", "m", "--json")
    assert json.loads(again.stdout)["duplicates"] == 3
    assert _labelled(home) == {0.2: 1.0, 0.5: 0.0}


def test_a_later_file_with_older_labels_does_not_win(home: Path) -> None:
    (home / "new.csv").write_text("request_id,label,ts\nr3,1,2026-12-02T00:00:00Z\n")
    (home / "old.csv").write_text("request_id,label,ts\nr3,0,2026-12-01T00:00:00Z\n")
    assert mm(home, "labels", "ingest", "new.csv", "--model", "m").returncode == 0
    text = mm(home, "labels", "ingest", "old.csv", "--model", "m")
    assert text.returncode == 0 and "1 labels for m: 1 accepted, 0 duplicates, 0 unknown" in text.stdout
    assert list(_labelled(home).values()) == [1.0]


def test_labels_without_ts_are_stamped_when_they_arrive(home: Path) -> None:
    (home / "l.jsonl").write_text('{"id": "r1", "label": 1}\n\n{"id": "r2", "label": false}\n')
    before = dt.datetime.now(dt.UTC)
    out = mm(home, "labels", "ingest", "l.jsonl", "--model", "m", "--json")
    assert json.loads(out.stdout)["accepted"] == 2
    with Project(load_settings(cwd=home)) as project:
        stamps = project.offline.read("labels").column("ts").to_pylist()
    assert all(t >= before.replace(microsecond=0) - dt.timedelta(seconds=1) for t in stamps)


@pytest.mark.parametrize(("content", "field", "says"), [
    ("rid,label\nr1,1\n", "id", "no id (or request_id) column"),
    ("id,y\nr1,1\n", "label", "no label column"),
    ("id,label\nr1,1\nr2,yes\n", "row 2.label", "must be 0 or 1"),
    ("id,label\nr1,1\nr2,\n", "row 2.label", "must be 0 or 1"),
    ("id,label\nr1,1\nr2,0\nr3,0.5\n", "row 3.label", "m@1 (signature output 'probability') is binary"),
    ("id,label,ts\nr1,1,someday\n", "row 1.ts", "ISO 8601"),
    ("id,label\n,1\n", "row 1.id", "non-empty string"),
])
def test_a_bad_file_is_a_clear_error_naming_the_row(home: Path, content: str, field: str, says: str) -> None:
    (home / "bad.csv").write_text(content)
    out = mm(home, "labels", "ingest", "bad.csv", "--model", "m", "--json")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    error = json.loads(out.stdout)
    assert error["field"] == field and says in error["error"], error
    if field == "row 2.label" and "yes" in content:  # the text form once: the message on stderr, no traceback
        text = mm(home, "labels", "ingest", "bad.csv", "--model", "m")
        assert text.returncode == 2 and "error: row 2.label: must be 0 or 1" in text.stderr, text.stderr
        assert "Traceback" not in text.stderr
    with Project(load_settings(cwd=home)) as project:
        assert not project.offline.exists("labels")


@pytest.mark.parametrize(("record", "content", "want"), [
    # a recorded task wins over the signature; a binary file of true/false reads as 1 and 0
    ({"tags": {"task": "binary"}}, "id,label\nr1,true\nr2,False\n", {0.2: 1.0, 0.5: 0.0}),
    ({"lineage": {"task": "multiclass", "classes": [0, 1, 5]}}, "id,label\nr1,5\nr2,0\n", {0.2: 5.0, 0.5: 0.0}),
    # no task recorded (an output that is not 'probability'): any finite number (each task's rules in full:
    # tests/store/test_feedback.py)
    ({"signature": Signature(inputs=[Field("x")], outputs=[Field("value")])}, "id,label\nr1,0.75\n", {0.2: 0.75}),
])
def test_labels_are_checked_against_the_task_the_model_records(tmp_path: Path, record: dict[str, Any],
                                                                content: str, want: dict[float, float]) -> None:
    (tmp_path / "modelmill.toml").write_text('home = ".modelmill"\n')
    with Project(load_settings(cwd=tmp_path)) as project:
        register(project, "m", **record)
        with prediction_log(project.offline) as log:
            for i, rid in enumerate(("r1", "r2")):
                log.append(rid, "m", 1, "main", None, ("x",), np.array([[float(i)]]), np.array([0.2 + 0.3 * i]),
                           1.0)
    (tmp_path / "ok.csv").write_text(content)
    out = mm(tmp_path, "labels", "ingest", "ok.csv", "--model", "m", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["accepted"] == len(want), out.stdout + out.stderr
    assert _labelled(tmp_path) == want


@pytest.mark.parametrize(("record", "content", "field", "says"), [
    ({"tags": {"task": "regression"}}, "id,label\nr1,1\nr2,true\n", "row 2.label", "must be a finite number"),
    ({"lineage": {"task": "multiclass", "classes": [0, 1, 5]}}, "id,label\nr1,5\nr2,2\n", "row 2.label",
     "one of the classes 0, 1, 5"),
    ({"signature": Signature(inputs=[Field("x")], outputs=[Field("value")])}, "id,label\nr1,nan\n", "row 1.label",
     "m@1 records no task"),
])
def test_a_label_that_does_not_fit_the_recorded_task_names_its_row(tmp_path: Path, record: dict[str, Any],
                                                                   content: str, field: str, says: str) -> None:
    (tmp_path / "modelmill.toml").write_text('home = ".modelmill"\n')
    with Project(load_settings(cwd=tmp_path)) as project:
        register(project, "m", **record)
    (tmp_path / "bad.csv").write_text(content)
    out = mm(tmp_path, "labels", "ingest", "bad.csv", "--model", "m", "--json")
    error = json.loads(out.stdout)
    assert out.returncode == 2 and error["field"] == field and says in error["error"], error
    with Project(load_settings(cwd=tmp_path)) as project:
        assert not project.offline.exists("labels")


def test_a_model_nobody_registered_or_an_unknown_task_is_refused(home: Path) -> None:
    (home / "l.csv").write_text("id,label\nr1,1\n")
    out = mm(home, "labels", "ingest", "l.csv", "--model", "nope", "--json")
    assert out.returncode == 1 and "'nope' not found" in json.loads(out.stdout)["error"], out.stdout
    with Project(load_settings(cwd=home)) as project:
        register(project, "odd", tags={"task": "ranking"})
    out = mm(home, "labels", "ingest", "l.csv", "--model", "odd", "--json")
    assert out.returncode == 1 and "records task 'ranking'" in json.loads(out.stdout)["error"], out.stdout
    with Project(load_settings(cwd=home)) as project:
        assert not project.offline.exists("labels")


def test_a_file_of_another_kind_or_missing_is_refused(home: Path) -> None:
    (home / "labels.txt").write_text("id,label\n")
    for name in ("labels.txt", "missing.csv"):
        out = mm(home, "labels", "ingest", name, "--model", "m", "--json")
        assert out.returncode == 2 and json.loads(out.stdout)["field"] == "FILE"
