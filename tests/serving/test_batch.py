"""Batch prediction: chunked local scoring, the CLI, and Ray Data writing the same output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from modelmill.errors import InputError
from modelmill.registry import Registry
from modelmill.serving import predict_batch
from tests.serving.conftest import COLUMNS, N_FEATURES, open_project_at, train_lr


def _input(path: Path, n: int = 5000) -> np.ndarray:
    rng = np.random.default_rng(21)
    X = rng.normal(size=(n, N_FEATURES))
    cols = {"row_id": pa.array(np.arange(n)), **{c: X[:, i] for i, c in enumerate(COLUMNS)},
            "note": pa.array([f"n{i}" for i in range(n)])}
    pq.write_table(pa.table(cols), path, row_group_size=700)
    return X


def test_local_engine_scores_in_chunks_in_order(project_dir: Path, tmp_path: Path) -> None:
    X = _input(tmp_path / "in.parquet")
    seen: list[int] = []
    with open_project_at(project_dir) as project:
        summary = predict_batch(Registry(project), "clf@production", tmp_path / "in.parquet",
                                tmp_path / "out.parquet", chunk_rows=1000, progress=seen.append)
    assert summary["rows"] == 5000 and summary["version"] == 1
    assert seen[-1] == 5000 and len(seen) >= 5
    out = pq.read_table(tmp_path / "out.parquet")
    assert out.column_names == ["row_id", *COLUMNS, "note", "prediction"]
    assert out.column("row_id").to_pylist() == list(range(5000))
    np.testing.assert_allclose(out.column("prediction").to_numpy(), train_lr(0).predict_proba(X)[:, 1],
                               rtol=1e-12)


def test_missing_column_is_a_clear_error(project_dir: Path, tmp_path: Path) -> None:
    pq.write_table(pa.table({"f0": [1.0]}), tmp_path / "bad.parquet")
    with open_project_at(project_dir) as project, pytest.raises(InputError, match="misses the model's column"):
        predict_batch(Registry(project), "clf@production", tmp_path / "bad.parquet", tmp_path / "o.parquet")
    assert not (tmp_path / "o.parquet").exists()


def test_cli_predict_batch_json(project_dir: Path, tmp_path: Path) -> None:
    _input(tmp_path / "in.parquet", 300)
    env = {k: v for k, v in os.environ.items() if k != "MODELMILL_HOME"}
    r = subprocess.run([sys.executable, "-m", "modelmill", "predict-batch", "--model", "clf@2", "--input",
                        str(tmp_path / "in.parquet"), "--output", str(tmp_path / "out.parquet"), "--json"],
                       cwd=project_dir, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert (summary["model"], summary["version"], summary["rows"]) == ("clf", 2, 300)
    r = subprocess.run([sys.executable, "-m", "modelmill", "predict-batch", "--model", "clf@production",
                        "--input", str(tmp_path / "nope.parquet"), "--output", "x.parquet", "--json"],
                       cwd=project_dir, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--input" in json.loads(r.stdout)["error"]


@pytest.mark.slow  # about 35 s on 2 busy cores, most of it starting Ray
def test_ray_engine_writes_the_same_output_as_local(project_dir: Path, tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    _input(tmp_path / "in.parquet")
    started = time.monotonic()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with open_project_at(project_dir) as project:
            reg = Registry(project)
            local = predict_batch(reg, "clf@production", tmp_path / "in.parquet", tmp_path / "local.parquet",
                                  chunk_rows=1000)
            remote = predict_batch(reg, "clf@production", tmp_path / "in.parquet", tmp_path / "ray.parquet",
                                   chunk_rows=1000, engine="ray")
    finally:
        ray.shutdown()
    assert local["rows"] == remote["rows"] == 5000
    a, b = pq.read_table(tmp_path / "local.parquet"), pq.read_table(tmp_path / "ray.parquet")
    assert a.column_names == b.column_names
    assert a.equals(b), "ray output differs from local output"
    print(f"ray test took {time.monotonic() - started:.1f} s")


def test_cli_predict_batch_reads_csv_and_refuses_unreadable_input(project_dir: Path, tmp_path: Path) -> None:
    """Issue 15 item 14: ``predict-batch -i file.csv`` ended in a raw ArrowInvalid traceback."""
    X = _input(tmp_path / "in.parquet", 300)
    pcsv.write_csv(pq.read_table(tmp_path / "in.parquet"), tmp_path / "in.csv")
    env = {k: v for k, v in os.environ.items() if k != "MODELMILL_HOME"}

    def predict(source: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "modelmill", "predict-batch", "--model", "clf@production",
                               "--input", str(source), "--output", str(tmp_path / "out.parquet"), "--json"],
                              cwd=project_dir, env=env, capture_output=True, text=True, timeout=120)

    r = predict(tmp_path / "in.csv")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["rows"] == 300
    out = pq.read_table(tmp_path / "out.parquet")
    assert out.column("row_id").to_pylist() == list(range(300))
    np.testing.assert_allclose(out.column("prediction").to_numpy(), train_lr(0).predict_proba(X)[:, 1],
                               rtol=1e-9)
    (tmp_path / "junk.parquet").write_text("id,x\n1,2\n")  # a CSV under a Parquet name
    (tmp_path / "ragged.csv").write_text("row_id,f0\n1,2\n3,4,5\n")
    for bad in ("junk.parquet", "ragged.csv"):
        r = predict(tmp_path / bad)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        error = json.loads(r.stdout)["error"]
        assert bad in error and "can be read" in error
