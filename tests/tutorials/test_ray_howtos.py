"""The cluster how-tos (docs/howto/ray.md, distributed-training.md), each run as written: CLI and Python scripts.

ray.md starts a real two-node Ray cluster on this machine (``ray start --head --block`` and a worker node, on
free ports the test hands the page through ``RAY_PORT`` and friends), scores a generated Parquet folder with
``--engine ray`` at the head's GCS address and with the local engine, and stops the cluster; the tests compare
the two outputs row for row, check that both nodes scored rows and that the stopped cluster's address is refused
and its processes gone; the pipeline-on-Ray commands (Ray Client) are shown, and their file and flags checked. distributed-training.md trains the
torch MLP in one process and in two (``--nproc 2``, torchrun), then as two torchrun agents on 127.0.0.1 meeting
over a c10d rendezvous (``RDZV_PORT``); the tests check the weights and metrics agree with one process's and
that the page's two-machine console command is the one ``torchrun_command`` builds, with flags torchrun takes.
This module imports nothing from modelmill.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import need, port_open
from tests.tutorials.runner import HOWTO, blocks, free_port, run_howto
from tests.tutorials.runner import read_json as _json

# each page starts a cluster or torchrun agents and trains (1 to 5 min on a shared machine): .ci/run runs them
pytestmark = pytest.mark.slow

RAY_PORTS = ("RAY_PORT", "RAY_CLIENT_PORT", "RAY_HEAD_AGENT_PORT", "RAY_WORKER_AGENT_PORT")


def _ray_program() -> str | None:
    beside = Path(sys.executable).with_name("ray")
    return str(beside) if beside.exists() else None


# --- ray.md --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, int]]]:
    need(importlib.util.find_spec("ray") is not None, "Ray is not installed", "pip install 'modelmill[ray]'")
    need(_ray_program() is not None, "the 'ray' program is not beside this Python", "pip install 'modelmill[ray]'")
    ports = {name: free_port() for name in RAY_PORTS}
    with pytest.MonkeyPatch.context() as mp:
        for name, port in ports.items():
            mp.setenv(name, str(port))
        # the page's Ray cluster runs with Ray's defaults, not a throwaway cluster's settings of this process
        mp.delenv("RAY_ADDRESS", raising=False)
        yield run_howto("ray.md", tmp_path_factory.mktemp("ray"), timeout=900), ports


def test_the_clusters_scored_output_is_the_local_engines_row_for_row(ray_page: tuple[Path, dict[str, int]]) -> None:
    w, _ = ray_page
    scored, local = pd.read_parquet(w / "scored.parquet"), pd.read_parquet(w / "local.parquet")
    pd.testing.assert_frame_equal(scored, local)
    # every input row once, in the input's order (the four files in name order), with a probability
    assert list(scored.columns) == ["customer", "tenure", "spend", "tickets", "prediction"]
    assert scored["customer"].tolist() == list(range(20000))
    inputs = pd.concat([pd.read_parquet(w / "data" / f"part-{i}.parquet") for i in range(4)], ignore_index=True)
    pd.testing.assert_frame_equal(scored.drop(columns="prediction"), inputs)
    assert scored["prediction"].between(0, 1).all() and scored["prediction"].nunique() > 100


def test_both_nodes_of_the_cluster_scored_rows(ray_page: tuple[Path, dict[str, int]]) -> None:
    w, _ = ray_page
    answer, local = _json(w, "ray.json"), _json(w, "local.json")
    assert (answer["engine"], answer["rows"], answer["model"], answer["version"]) == ("ray", 20000, "churn", 1)
    assert (local["engine"], local["rows"], local["version"]) == ("local", 20000, 1)
    assert "nodes" not in local
    nodes = answer["nodes"]
    assert len(nodes) == 2 and sum(nodes.values()) == 20000
    # units are whole row groups of 1,000 rows, and SPREAD gives each node some
    assert all(rows > 0 and rows % 1000 == 0 for rows in nodes.values()), nodes
    assert _json(w, "train.json")["model_version"] == "churn@1"


def test_the_pipeline_on_ray_is_shown_with_a_file_the_page_writes_and_flags_the_cli_takes(
        ray_page: tuple[Path, dict[str, int]]) -> None:
    # not run here (Ray Client's per-driver port 23000 is shared by every cluster on a machine): the page's
    # pipeline file is written and builds, and its console commands use flags `pipeline run` takes
    w, _ = ray_page
    done = subprocess.run([sys.executable, "-c", "import ray_pipes; p = ray_pipes.sums; "
                           "print(*sorted(s.name for s in p.steps))"], cwd=w, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["cubes", "report", "squares"]
    shown = [b.body for b in blocks(HOWTO / "ray.md") if b.lang == "console" and "pipeline run" in b.body]
    assert len(shown) == 1
    helped = subprocess.run([sys.executable, "-m", "modelmill", "pipeline", "run", "--help"], capture_output=True,
                            text=True, timeout=120)
    assert helped.returncode == 0, helped.stderr[-2000:]
    for flag in set(re.findall(r"\s(--?[a-z][a-z-]*)", shown[0])):
        assert flag in helped.stdout, flag
    assert shown[0].count("--executor ray://HEAD:10001") == 2


def test_the_stopped_clusters_address_is_refused_naming_it(ray_page: tuple[Path, dict[str, int]]) -> None:
    w, ports = ray_page
    assert (w / "refused.code").read_text().strip() == "2"
    refused = (w / "refused.txt").read_text()
    assert f"no Ray cluster answers at 127.0.0.1:{ports['RAY_PORT']}" in refused
    # both nodes stopped: nothing listens at the head's GCS or Ray Client port, and the page's folder is gone
    assert not port_open("127.0.0.1", ports["RAY_PORT"]) and not port_open("127.0.0.1", ports["RAY_CLIENT_PORT"])
    assert "Ray runtime started" in (w / "head.log").read_text()
    assert "Ray runtime started" in (w / "worker.log").read_text()
    gcs = f"127.0.0.1:{ports['RAY_PORT']}"
    left = [p for p in Path("/proc").iterdir() if p.name.isdigit() and gcs in _cmdline(p)]
    assert not left, [_cmdline(p) for p in left]


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_the_pages_cluster_flags_are_ray_starts() -> None:
    program = _ray_program()
    need(program is not None, "the 'ray' program is not beside this Python", "pip install 'modelmill[ray]'")
    done = subprocess.run([str(program), "start", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    shown = [b.body for b in blocks(HOWTO / "ray.md") if b.lang in ("bash", "console") and "ray start" in b.body]
    assert len(shown) == 2  # the cluster on your machines (console) and the two nodes here (bash)
    flags = set(re.findall(r"(--[a-z][a-z-]+)", "\n".join(shown)))
    assert {"--head", "--port", "--ray-client-server-port", "--address", "--num-cpus", "--block"} <= flags
    for flag in flags:
        assert flag in done.stdout, flag


# --- distributed-training.md ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ddp_page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    need(importlib.util.find_spec("torch") is not None, "PyTorch is not installed", "pip install 'modelmill[torch]'")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RDZV_PORT", str(free_port()))
        yield run_howto("distributed-training.md", tmp_path_factory.mktemp("ddp"), timeout=900)


def test_two_processes_through_the_cli_match_one_process(ddp_page: Path) -> None:
    w = ddp_page
    one, ddp = _json(w, "one.json"), _json(w, "ddp.json")
    assert (one["model_version"], ddp["model_version"]) == ("churn@1", "churn@2")
    assert (one["params"]["nproc"], ddp["params"]["nproc"]) == (1, 2)
    assert {k: v for k, v in one["params"].items() if k != "nproc"} == \
        {k: v for k, v in ddp["params"].items() if k != "nproc"}
    assert (ddp["params"]["epochs"], ddp["params"]["hidden"], ddp["params"]["batch_size"]) == (3, [16], 256)
    run = ddp["ddp"]
    assert (run["nproc"], run["backend"]) == (2, "gloo")
    assert len(run["rank_hashes"]) == 2 and len(set(run["rank_hashes"])) == 1
    assert len(run["train_loss"]) == 3 and run["train_loss"][-1] < run["train_loss"][0]
    # weights equal to 1e-5: the validation metrics agree to float rounding, and the model learnt the signal
    for metric in ("auc", "log_loss", "calibration_error"):
        assert abs(one["metrics"][metric] - ddp["metrics"][metric]) < 1e-4, metric
    assert ddp["metrics"]["auc"] > 0.75


def test_two_agents_on_this_host_rendezvous_and_match_one_process(ddp_page: Path) -> None:
    w = ddp_page
    answer = _json(w, "two_agents.json")
    assert answer["backend"] == "gloo"
    assert len(answer["rank_hashes"]) == 2 and len(set(answer["rank_hashes"])) == 1
    assert answer["max_abs_diff"] < 1e-5
    ranks = answer["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1] and [r["world"] for r in ranks] == [2, 2]
    assert sorted(r["node_rank"] for r in ranks) == [0, 1]  # two nodes of one process each, not one of two
    assert [r["sha256"] for r in ranks] == answer["rank_hashes"]
    assert len(answer["losses"]) == 3
    run = w / "run1"
    for name in ("data.npz", "config.json", "rank0.json", "rank1.json", "model.pt", "node0.log", "node1.log"):
        assert (run / name).exists(), name
    assert json.loads((run / "config.json").read_text())["hidden"] == [16]
    with np.load(run / "data.npz") as data:
        assert data["X"].shape == (3200, 3)


def test_the_two_machine_command_is_torchrun_commands_and_its_flags_exist(ddp_page: Path) -> None:
    w = ddp_page
    shown = [b.body for b in blocks(HOWTO / "distributed-training.md") if b.lang == "console"]
    assert len(shown) == 1
    tokens = shown[0].replace("\\\n", " ").split()
    first, second = _json(w, "two_agents.json")["machines"]
    assert tokens == first
    assert second[second.index("--rdzv_conf") + 1] == "is_host=0"
    assert second[second.index("--local-addr") + 1] == "10.0.0.2"
    assert [t for t in first if t not in ("is_host=1", "10.0.0.1")] == \
        [t for t in second if t not in ("is_host=0", "10.0.0.2")]
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0
    module_at = tokens.index("-m", 3)
    for flag in (t for t in tokens[3:module_at] if t.startswith("--")):
        assert flag in done.stdout, flag
    helped = subprocess.run([sys.executable, "-m", "modelmill.training.trainers.ddp", "--help"], capture_output=True,
                            text=True, timeout=120)
    assert helped.returncode == 0
    for flag in ("--data", "--config", "--out"):
        assert flag in tokens[module_at:] and flag in helped.stdout
