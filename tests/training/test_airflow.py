"""Export to Apache Airflow: a real Airflow (its own virtualenv, installed by scripts/install-airflow.sh,
standalone on SQLite, without modelmill) loads the exported DAG and runs it with ``airflow dags test``;
the run's steps, cache keys, lineage and outputs match a local run, and a second Airflow run hits the cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelmill.config import Settings
from modelmill.project import Project
from modelmill.training import Runs, pipeline_runs_of
from tests.conftest import need
from tests.training import airflow_pipelines

ROOT = Path(__file__).resolve().parents[2]
REF = "tests.training.airflow_pipelines:diamond"
VENV = Path(os.environ.get("MODELMILL_AIRFLOW_VENV", Path.home() / ".cache" / "modelmill" / "airflow-venv"))
DAG_ID = "modelmill__af-diamond"

STRUCTURE = """
import json, sys
from airflow.models import DagBag
bag = DagBag(sys.argv[1], include_examples=False)
dag = bag.get_dag(sys.argv[2])
print(json.dumps({"errors": {k: str(v) for k, v in bag.import_errors.items()},
                  "tasks": {t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks} if dag else None}))
"""


def _airflow_env(tmp_path: Path, dags: Path) -> dict[str, str]:
    """Airflow's own environment: its virtualenv, nothing of modelmill's."""
    return {"HOME": os.environ.get("HOME", str(tmp_path)), "PATH": f"{VENV / 'bin'}:/usr/bin:/bin",
            "LANG": "C.UTF-8", "AIRFLOW_HOME": str(tmp_path / "airflow"), "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__CORE__UNIT_TEST_MODE": "False"}


def _run(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 400) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow  # Airflow migrates its database and runs five tasks, twice
def test_an_exported_dag_runs_on_airflow_with_the_lineage_and_cache_of_a_local_run(tmp_path: Path) -> None:
    need((VENV / "bin" / "airflow").exists(), f"Apache Airflow is not installed in {VENV}",
         "run scripts/install-airflow.sh")
    home, counter, dags = tmp_path / "af-project", tmp_path / "calls.txt", tmp_path / "dags"
    dags.mkdir()
    mm_env = {k: v for k, v in os.environ.items() if not k.startswith("MODELMILL_")}
    mm_env |= {"MODELMILL_HOME": str(home), "PYTHONPATH": str(ROOT), "MM_TEST_COUNTER": str(counter)}
    export = _run([sys.executable, "-m", "modelmill", "pipeline", "export-airflow", REF, "-p", "n=60", "-p", "seed=4",
                   "--env", "MM_TEST_COUNTER"], mm_env, ROOT)
    assert export.returncode == 0, export.stderr
    text = export.stdout
    assert "import modelmill" not in text and str(Path(sys.executable).parent / "modelmill") in text
    (dags / "modelmill_af_diamond.py").write_text(text)

    af_env = _airflow_env(tmp_path, dags)
    python = str(VENV / "bin" / "python")
    assert _run([python, "-c", "import modelmill"], af_env, tmp_path).returncode != 0  # Airflow's env has none
    migrate = _run([str(VENV / "bin" / "airflow"), "db", "migrate"], af_env, tmp_path)
    assert migrate.returncode == 0, migrate.stderr[-3000:]
    shape = _run([python, "-c", STRUCTURE, str(dags), DAG_ID], af_env, tmp_path)
    assert shape.returncode == 0, shape.stderr
    loaded = json.loads(shape.stdout.strip().splitlines()[-1])
    assert loaded["errors"] == {}
    assert loaded["tasks"] == {"source": [], "total": ["source"], "spread": ["source"], "report": ["spread", "total"],
                               "modelmill_finish": ["report", "source", "spread", "total"]}

    first = _run([str(VENV / "bin" / "airflow"), "dags", "test", DAG_ID], af_env, tmp_path)
    assert first.returncode == 0, (first.stdout + first.stderr)[-5000:]
    assert sorted(counter.read_text().split()) == ["report", "source", "spread", "total"]

    with Project(Settings.defaults(home=tmp_path / "local")) as local_project:
        local = airflow_pipelines.diamond.run(local_project, params={"n": 60, "seed": 4})
        assert local.status == "finished"
    with Project(Settings.defaults(home=home)) as project:
        runs = pipeline_runs_of(project, "af-diamond")
        assert len(runs) == 1
        run = runs[0]
        assert run["status"] == "finished" and run["reason"].startswith(f"airflow {DAG_ID}/")
        assert {s["step"]: s["status"] for s in run["steps"]} == dict.fromkeys(
            ["source", "total", "spread", "report"], "ran")
        # The same cache keys as the local run: the same code, libraries and inputs, wherever it ran.
        assert {s["step"]: s["cache_key"] for s in run["steps"]} == {s.name: s.cache_key for s in local.steps}
        ignore = {"pipeline_run_id", "run_id"}
        assert {k: v for k, v in run["lineage"].items() if k not in ignore} == {
            k: v for k, v in local.lineage.items() if k not in ignore}
        assert run["lineage"]["data_snapshot"] == "synthetic:n=60:seed=4" and run["lineage"]["training_set"] == "rows-60"
        assert airflow_pipelines.diamond.output(project, run["id"], "report") == local.value("report")
        tracked = Runs(project).get(run["lineage"]["run_id"])
        assert tracked.status == "finished" and tracked.metrics["spread"]["last"] > 0

        second = _run([str(VENV / "bin" / "airflow"), "dags", "test", DAG_ID], af_env, tmp_path)
        assert second.returncode == 0, (second.stdout + second.stderr)[-5000:]
        again = pipeline_runs_of(project, "af-diamond")
        assert len(again) == 2 and again[0]["id"] != run["id"] and again[0]["status"] == "finished"
        assert {s["status"] for s in again[0]["steps"]} == {"cached"}
        assert len(counter.read_text().split()) == 4  # nothing ran twice


def test_run_step_refuses_a_step_before_its_upstream_steps_and_finish_names_what_never_ran(
        project: Project) -> None:
    from modelmill.errors import InputError
    from modelmill.training.airflow import finish_run, run_step

    params = {"n": 10, "seed": 1}
    with pytest.raises(InputError, match="upstream"):
        run_step(project, airflow_pipelines.diamond, "report", key="k1", params=params)
    assert run_step(project, airflow_pipelines.diamond, "source", key="k1", params=params).status == "ran"
    assert run_step(project, airflow_pipelines.diamond, "source", key="k1", params=params).status == "resumed"
    assert run_step(project, airflow_pipelines.diamond, "total", key="k1", params=params).status == "ran"
    out = finish_run(project, airflow_pipelines.diamond, key="k1")
    assert out["status"] == "failed" and out["failed_step"] == "spread"
    assert out["steps"] == {"source": "ran", "total": "ran", "spread": "pending", "report": "pending"}
    run = pipeline_runs_of(project, "af-diamond")[0]
    assert run["status"] == "failed" and run["failed_step"] == "spread"
