"""Tracking: buffered logging is read back point for point, on SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import sqlalchemy as sa

import modelmill
from modelmill.config import Settings
from modelmill.errors import InputError, NotFoundError
from modelmill.project import Project
from modelmill.training import Runs, start_run


def _log_and_read_back(project: Project) -> None:
    params = {f"p{i:02d}": i * 0.5 for i in range(50)}
    with start_run("readback", project=project, tags={"team": "ml"}, flush_size=1_000) as run:
        run.log_params(params)
        for i in range(5_000):
            run.log_metric("loss", 1.0 / (i + 1), step=i)
        run.log_metrics({"auc": 0.8, "acc": 0.7}, step=1)
        run.log_metrics({"auc": 0.85, "acc": float("nan")}, step=2)
        run.log_batch([("lr", 0.1, 0), ("lr", 0.05, 1)])
        run.set_data(data_snapshot="flights@2013-06-30", feature_version="fv-3")
        run.log_artifact("notes.txt", b"hello")
    runs = Runs(project)
    info = runs.get(run.run_id)
    assert info.status == "finished" and info.end_time is not None and info.end_time >= info.start_time
    assert info.params == {k: str(v) for k, v in params.items()}
    assert info.tags == {"team": "ml"}
    assert info.data_snapshot == "flights@2013-06-30" and info.feature_version == "fv-3"
    assert "numpy" in info.environment["packages"] and info.environment["python"]
    assert info.artifacts["notes.txt"]["size"] == 5
    assert project.artifacts.get_bytes(info.artifacts["notes.txt"]["path"]) == b"hello"
    loss = runs.history(run.run_id, "loss")
    assert [p.step for p in loss] == list(range(5_000))
    assert [p.value for p in loss] == [1.0 / (i + 1) for i in range(5_000)]
    assert all(a.timestamp <= b.timestamp for a, b in itertools.pairwise(loss))
    acc = runs.history(run.run_id, "acc")
    assert acc[0].value == 0.7 and math.isnan(acc[1].value)
    assert len(runs.history(run.run_id)) == 5_000 + 4 + 2
    assert info.metrics["loss"]["count"] == 5_000 and info.metrics["loss"]["last"] == 1.0 / 5_000
    assert info.metrics["auc"]["last"] == 0.85 and info.metrics["auc"]["last_step"] == 2
    assert info.metrics["lr"] == {"last": 0.05, "last_step": 1, "min": 0.05, "max": 0.1, "count": 2}


def test_every_point_param_and_tag_reads_back_on_sqlite(project: Project) -> None:
    _log_and_read_back(project)


def test_every_point_param_and_tag_reads_back_on_postgres(tmp_path: Path, pg_url: str) -> None:
    with Project(Settings.defaults(home=tmp_path / "pg").replace(db=pg_url)) as project:
        _log_and_read_back(project)


def test_code_version_is_recorded_inside_a_git_checkout(project: Project) -> None:
    with start_run("git", project=project) as run:
        pass
    info = Runs(project).get(run.run_id)
    # The test suite runs from the repository root, a git checkout.
    assert info.git_commit is not None and len(info.git_commit) == 40
    assert isinstance(info.git_dirty, bool)


def test_a_failing_block_marks_the_run_failed_and_keeps_its_points(project: Project) -> None:
    with pytest.raises(ZeroDivisionError), start_run("fails", project=project) as run:
        run.log_metric("loss", 0.5, step=0)
        _ = 1 / 0
    info = Runs(project).get(run.run_id)
    assert info.status == "failed" and "ZeroDivisionError" in (info.error or "")
    assert [p.value for p in Runs(project).history(run.run_id, "loss")] == [0.5]
    assert [r.run_id for r in Runs(project).find(status="failed")] == [run.run_id]


def test_interval_flush_makes_points_visible_while_the_run_is_live(project: Project) -> None:
    with start_run("live", project=project, flush_interval=0.0) as run:
        run.log_metric("x", 1.0, step=0)
        with project.db.engine.connect() as conn:
            n = conn.execute(sa.text("SELECT count(*) FROM run_metrics WHERE run_id = :r"),
                             {"r": run.run_id}).scalar_one()
        assert n == 1
        assert Runs(project).get(run.run_id[:8]).status == "running"


def test_top_level_start_run_opens_the_working_directorys_project(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MODELMILL_HOME", str(tmp_path / "home"))
    with modelmill.start_run(experiment="cwd") as run:
        run.log_metric("m", 1.0)
    with Project(Settings.defaults(home=tmp_path / "home")) as project:
        assert Runs(project).get(run.run_id).metrics["m"]["last"] == 1.0


def test_bad_input_is_named(project: Project) -> None:
    with pytest.raises(InputError, match="experiment"):
        start_run("", project=project)
    with start_run("ok", project=project) as run:
        with pytest.raises(InputError, match="metric key"):
            run.log_metric("", 1.0)
        with pytest.raises(InputError, match="key"):
            run.log_params({"": 1})
    with pytest.raises(InputError, match="run"):
        run.log_artifact("late.txt", b"x")
    with pytest.raises(NotFoundError):
        Runs(project).get("ffffffff")
