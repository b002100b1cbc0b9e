"""Batch scoring on a real two-node Ray cluster (head plus a worker node, each its own process).

The input is a Parquet data set (a folder of files, each several blocks): both nodes score rows, and the
output equals the local engine's, row for row and column for column.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from modelmill.errors import InputError
from modelmill.registry import Registry
from modelmill.serving import predict_batch
from tests.serving.conftest import COLUMNS, N_FEATURES, free_port, open_project_at

FILES, ROWS_PER_FILE = 6, 20_000


def _dataset(folder: Path) -> int:
    """FILES Parquet files of ROWS_PER_FILE rows (row groups of 5,000), row ids running on across files."""
    folder.mkdir()
    rng = np.random.default_rng(5)
    for i in range(FILES):
        X = rng.normal(size=(ROWS_PER_FILE, N_FEATURES))
        ids = np.arange(i * ROWS_PER_FILE, (i + 1) * ROWS_PER_FILE)
        cols = {"row_id": pa.array(ids), **{c: X[:, j] for j, c in enumerate(COLUMNS)},
                "note": pa.array([f"r{k}" for k in ids])}
        pq.write_table(pa.table(cols), folder / f"part-{i:03d}.parquet", row_group_size=5000)
    return FILES * ROWS_PER_FILE


@pytest.mark.slow  # a two-node Ray cluster starts (about 30 s on two busy cores)
def test_ray_cluster_output_equals_local_and_both_nodes_scored(project_dir: Path, tmp_path: Path,
                                                                ray_cluster: Any) -> None:
    n = _dataset(tmp_path / "in")
    with open_project_at(project_dir) as project:
        local = predict_batch(Registry(project), "clf@production", tmp_path / "in", tmp_path / "local.parquet",
                              chunk_rows=4000)
    # The driver joins the cluster by its GCS address from a process of its own: a pytest process that ran a
    # local Ray earlier (tests/serving/test_batch.py) keeps state that made the cluster's tasks fail with
    # OwnerDiedError on the objects this driver put (seen in CI), which no user's fresh process meets.
    code = ("import json, sys\n"
            "from pathlib import Path\n"
            "from modelmill.registry import Registry\n"
            "from modelmill.serving import predict_batch\n"
            "from tests.serving.conftest import open_project_at\n"
            "with open_project_at(Path(sys.argv[1])) as project:\n"
            "    out = predict_batch(Registry(project), 'clf@production', Path(sys.argv[2]), Path(sys.argv[3]),\n"
            "                        chunk_rows=4000, engine='ray', ray_address=sys.argv[4])\n"
            "print(json.dumps(out))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("MODELMILL_HOME", "RAY_ADDRESS")}
    root = Path(__file__).resolve().parents[2]
    env["PYTHONPATH"] = os.pathsep.join([str(root), str(root / "src"), env.get("PYTHONPATH", "")])
    r = subprocess.run([sys.executable, "-c", code, str(project_dir), str(tmp_path / "in"),
                        str(tmp_path / "ray.parquet"), ray_cluster.address],
                       cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    remote = json.loads(r.stdout.strip().splitlines()[-1])
    assert local["rows"] == remote["rows"] == n
    assert "nodes" not in local
    assert sum(remote["nodes"].values()) == n
    assert len(remote["nodes"]) == 2, remote["nodes"]  # the head and the worker node both scored rows
    a, b = pq.read_table(tmp_path / "local.parquet"), pq.read_table(tmp_path / "ray.parquet")
    assert a.column_names == b.column_names == ["row_id", *COLUMNS, "note", "prediction"]
    assert b.column("row_id").to_pylist() == list(range(n))
    assert a.equals(b), "the Ray cluster's output differs from the local engine's"


@pytest.mark.slow
def test_cli_predict_batch_over_ray_client(project_dir: Path, tmp_path: Path, ray_cluster: Any) -> None:
    """`modelmill predict-batch --engine ray --address ray://...` in a process of its own (Ray Client)."""
    n = _dataset(tmp_path / "in")
    env = {k: v for k, v in os.environ.items() if k not in ("MODELMILL_HOME", "RAY_ADDRESS")}
    outs = {}
    for engine, extra in (("local", []), ("ray", ["--address", ray_cluster.client_address])):
        out = tmp_path / f"{engine}.parquet"
        r = subprocess.run([sys.executable, "-m", "modelmill", "predict-batch", "--model", "clf@2", "--input",
                            str(tmp_path / "in"), "--output", str(out), "--engine", engine, *extra,
                            "--chunk-rows", "8000", "--json"],
                           cwd=project_dir, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        outs[engine] = json.loads(r.stdout)
        assert (outs[engine]["version"], outs[engine]["rows"], outs[engine]["engine"]) == (2, n, engine)
    assert sum(outs["ray"]["nodes"].values()) == n
    assert pq.read_table(tmp_path / "local.parquet").equals(pq.read_table(tmp_path / "ray.parquet"))


def test_a_closed_address_is_refused_naming_it(project_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("ray")
    _small(tmp_path / "in.parquet")
    port = free_port()  # nothing listens there
    with open_project_at(project_dir) as project:
        reg = Registry(project)
        with pytest.raises(InputError, match="no Ray cluster answers") as info:
            predict_batch(reg, "clf@production", tmp_path / "in.parquet", tmp_path / "o.parquet", engine="ray",
                          ray_address=f"ray://127.0.0.1:{port}")
        assert info.value.field == "address"
        for bad in ("127.0.0.1", "ray://host:port", "http://h:1/x", "h:0"):
            with pytest.raises(InputError, match="ray://HOST:PORT") as info:
                predict_batch(reg, "clf@production", tmp_path / "in.parquet", tmp_path / "o.parquet",
                              engine="ray", ray_address=bad)
            assert info.value.field == "address"
        with pytest.raises(InputError, match="--engine ray"):
            predict_batch(reg, "clf@production", tmp_path / "in.parquet", tmp_path / "o.parquet",
                          ray_address=f"127.0.0.1:{port}")
    assert not (tmp_path / "o.parquet").exists()


def test_local_engine_reads_a_folder_of_parquet_files_in_name_order(project_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    for i, name in enumerate(["b.parquet", "a.parquet", "c.parquet"]):
        _small(tmp_path / "in" / name, start=100 * ["a.parquet", "b.parquet", "c.parquet"].index(name), seed=i)
    (tmp_path / "in" / "notes.txt").write_text("not data")
    with open_project_at(project_dir) as project:
        reg = Registry(project)
        summary = predict_batch(reg, "clf@production", tmp_path / "in", tmp_path / "o.parquet", chunk_rows=30)
        assert summary["rows"] == 300
        assert pq.read_table(tmp_path / "o.parquet").column("row_id").to_pylist() == list(range(300))
        (tmp_path / "empty").mkdir()
        with pytest.raises(InputError, match=r"without \.parquet files"):
            predict_batch(reg, "clf@production", tmp_path / "empty", tmp_path / "o2.parquet")
        pq.write_table(pa.table({"row_id": [1], "other": [1.0]}), tmp_path / "in" / "d.parquet")
        with pytest.raises(InputError, match="share one schema"):
            predict_batch(reg, "clf@production", tmp_path / "in", tmp_path / "o2.parquet")
    assert not (tmp_path / "o2.parquet").exists()


def _small(path: Path, start: int = 0, seed: int = 0, n: int = 100) -> None:
    X = np.random.default_rng(seed).normal(size=(n, N_FEATURES))
    pq.write_table(pa.table({"row_id": pa.array(np.arange(start, start + n)),
                             **{c: X[:, j] for j, c in enumerate(COLUMNS)}}), path)
