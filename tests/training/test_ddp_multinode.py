"""DDP on two nodes: ``torchrun --nnodes 2`` in two network namespaces joined by a veth pair.

Each node is its own torchrun (``ip netns exec NS ...``), so the only way between them is the veth link: the
c10d rendezvous runs over TCP to the first node's address, and gloo's collectives go over the same link
(GLOO_SOCKET_IFNAME names each node's end). The weights must equal a one-process run's within the tolerance
of tests/training/test_ddp.py. NCCL (chosen when CUDA devices are present) cannot run on this CPU machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from modelmill.errors import InputError
from modelmill.training.trainers.ddp import Node, launch, pick_backend, torchrun_command
from modelmill.training.trainers.torch_mlp import MLPConfig, fit_module, state_hash
from tests.conftest import need
from tests.training.test_ddp import TOLERANCE


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


@contextlib.contextmanager
def two_namespaces() -> Iterator[list[tuple[str, str, str]]]:
    """Two fresh network namespaces linked by a veth pair: [(namespace, interface, address)] for each;
    names and the /24 are random per call, and both namespaces (and so the veth pair) are deleted after."""
    need(shutil.which("ip") is not None, "the 'ip' program (iproute2) is missing", "apt-get install iproute2")
    tag = secrets.token_hex(3)
    names = [f"mmddp-{tag}-{i}" for i in range(2)]
    ifaces = [f"mmv{tag}{i}" for i in range(2)]  # at most 15 characters
    subnet = f"10.{200 + secrets.randbelow(50)}.{secrets.randbelow(256)}"
    addrs = [f"{subnet}.{i + 1}" for i in range(2)]
    made: list[str] = []
    try:
        for ns in names:
            r = _ip("netns", "add", ns)
            if r.returncode != 0:
                need(False, f"cannot create a network namespace ({r.stderr.strip()})", "run as root (CAP_SYS_ADMIN)")
            made.append(ns)
        steps = [("link", "add", ifaces[0], "type", "veth", "peer", "name", ifaces[1])]
        for ns, iface, addr in zip(names, ifaces, addrs, strict=True):
            steps += [("link", "set", iface, "netns", ns), ("-n", ns, "addr", "add", f"{addr}/24", "dev", iface),
                      ("-n", ns, "link", "set", iface, "up"), ("-n", ns, "link", "set", "lo", "up")]
        for step in steps:
            r = _ip(*step)
            assert r.returncode == 0, f"ip {' '.join(step)}: {r.stderr}"
        yield list(zip(names, ifaces, addrs, strict=True))
    finally:
        for ns in made:
            _ip("netns", "del", ns)


def _netns_of_this_process() -> str:
    return os.readlink("/proc/self/ns/net")


@pytest.mark.slow  # two torchrun node processes, rendezvous and three epochs (about 20 s on two busy cores)
def test_two_nodes_in_separate_namespaces_match_one_process(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)  # the data and settings of tests/training/test_ddp.py
    X = rng.normal(size=(1024, 6))
    X[::13, 2] = np.nan
    y = (X[:, 0] - X[:, 1] + 0.3 * rng.normal(size=1024) > 0).astype(np.float32)
    cfg = MLPConfig(hidden=(16, 8), epochs=3, batch_size=64, lr=0.1, momentum=0.9, seed=7, threads=1)

    with two_namespaces() as spaces:
        nodes = [Node(prefix=("ip", "netns", "exec", ns), env=(("GLOO_SOCKET_IFNAME", iface),), addr=addr)
                 for ns, iface, addr in spaces]
        port = 29400 + secrets.randbelow(1000)  # inside a namespace of its own: nothing else listens there
        outcome = launch(X, y, cfg, nproc=1, nodes=nodes, rdzv_endpoint=f"{spaces[0][2]}:{port}", out_dir=tmp_path,
                         timeout=150)
        created = [ns for ns, _, _ in spaces]
    listed = _ip("netns", "list").stdout
    assert not any(ns in listed for ns in created), "a namespace was left behind"

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2] and {r["backend"] for r in ranks} == {"gloo"}
    assert sorted(r["node_rank"] for r in ranks) == [0, 1]  # one rank on each node
    namespaces = {r["netns"] for r in ranks}
    assert len(namespaces) == 2 and _netns_of_this_process() not in namespaces  # each node in its own namespace
    assert ranks[0]["sha256"] == ranks[1]["sha256"] == state_hash(outcome.module)

    single = fit_module(X, y, cfg)
    diffs = [float((a - b).abs().max()) for a, b in zip(single.state_dict().values(),
                                                        outcome.module.state_dict().values(), strict=True)]
    assert max(diffs) < TOLERANCE, diffs
    assert outcome.losses[-1] < outcome.losses[0]


def test_node_commands_rendezvous_over_tcp_or_run_standalone(tmp_path: Path) -> None:
    one = torchrun_command(tmp_path, nproc=2)
    assert "--standalone" in one and "--rdzv_endpoint" not in one
    host = torchrun_command(tmp_path, nproc=1, nnodes=2, rdzv_endpoint="10.0.0.1:29400", rdzv_id="r1", is_host=True)
    other = torchrun_command(tmp_path, nproc=1, nnodes=2, rdzv_endpoint="10.0.0.1:29400", rdzv_id="r1",
                             is_host=False)
    for cmd in (host, other):
        assert "--standalone" not in cmd
        assert cmd[cmd.index("--nnodes") + 1] == "2" and cmd[cmd.index("--rdzv_backend") + 1] == "c10d"
        assert cmd[cmd.index("--rdzv_endpoint") + 1] == "10.0.0.1:29400" and cmd[cmd.index("--rdzv_id") + 1] == "r1"
    assert host[host.index("--rdzv_conf") + 1] == "is_host=1" and other[other.index("--rdzv_conf") + 1] == "is_host=0"
    assert "--local-addr" not in host
    addressed = torchrun_command(tmp_path, nproc=1, nnodes=2, rdzv_endpoint="h:1", local_addr="10.0.0.2")
    assert addressed[addressed.index("--local-addr") + 1] == "10.0.0.2"
    with pytest.raises(InputError, match="rdzv_endpoint"):
        torchrun_command(tmp_path, nproc=1, nnodes=2)
    with pytest.raises(InputError, match="nodes"):
        launch(np.zeros((4, 2)), np.zeros(4, dtype=np.float32), MLPConfig(batch_size=2), nodes=[])
    with pytest.raises(InputError, match="multiple of the process count 4"):  # 2 nodes x 2 processes
        launch(np.zeros((4, 2)), np.zeros(4, dtype=np.float32), MLPConfig(batch_size=6), nproc=2,
               nodes=[Node(), Node()], rdzv_endpoint="127.0.0.1:1")


def test_nccl_is_chosen_with_cuda_and_gloo_without() -> None:
    """The backend choice only: NCCL itself needs GPUs, which this machine does not have."""
    assert pick_backend(True) == "nccl" and pick_backend(False) == "gloo"
