"""docs/howto/pipelines.md, run as written (tests.tutorials.runner): the DAG runs, the flaky step's three
attempts are recorded, the second run is served from the cache, new bytes at the same path rerun the steps
that read them, and the exported Airflow DAG has one task per step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.tutorials.runner import free_port, run_page

PAGE = Path(__file__).resolve().parents[2] / "docs" / "howto" / "pipelines.md"


@pytest.mark.slow  # five modelmill commands
def test_the_pipelines_howto_runs_as_written(tmp_path: Path) -> None:
    done = run_page(PAGE, tmp_path, port=free_port(), timeout=420)
    assert done.returncode == 0, done.stdout[-6000:]

    def read(name: str) -> dict:  # type: ignore[type-arg]
        return json.loads((tmp_path / name).read_text())

    first = read("first.json")
    assert first["status"] == "finished" and first["lineage"]["data_snapshot"] == "rows.txt:4 rows"
    steps = {s["name"]: s for s in first["steps"]}
    assert {n: s["status"] for n, s in steps.items()} == dict.fromkeys(["report", "spread", "total", "load"], "ran")
    assert steps["spread"]["attempts"] == 3 and steps["total"]["attempts"] == 1
    runs = read("runs.json")["pipeline_runs"]
    logged = next(s for s in runs[0]["steps"] if s["step"] == "spread")["attempt_log"]
    assert [a["status"] for a in logged] == ["failed", "failed", "ok"]
    assert "not ready" in logged[0]["error"] and [a.get("retry_in") for a in logged] == [0.1, 0.2, None]

    assert {s["status"] for s in read("second.json")["steps"]} == {"cached"}
    third = {s["name"]: s["status"] for s in read("third.json")["steps"]}
    assert third == dict.fromkeys(["report", "spread", "total", "load"], "ran")  # 40 changes every output
    assert json.loads(json.dumps(read("third.json")["lineage"]))["data_snapshot"] == "rows.txt:4 rows"

    dag = (tmp_path / "dag.py").read_text()
    for task in ("load", "total", "spread", "report", "modelmill_finish"):
        assert f"task_id={task!r}" in dag
    assert "t_load >> t_total" in dag and "t_load >> t_spread" in dag and "t_spread >> t_report" in dag
