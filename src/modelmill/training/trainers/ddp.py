"""DistributedDataParallel training of the MLP, launched through torchrun.

:func:`launch` writes the data to a temporary folder and runs::

    python -m torch.distributed.run --standalone --nproc_per_node N -m modelmill.training.trainers.ddp \\
        --data DATA.npz --config CONFIG.json --out FOLDER

or, given ``nodes`` (one :class:`Node` each: the command prefix that runs a
process on that node, such as ``ip netns exec NS`` or ``ssh HOST``, and its
environment), one torchrun per node that meet over TCP (c10d rendezvous at
``rdzv_endpoint``, hosted by the first node's agent)::

    python -m torch.distributed.run --nnodes 2 --nproc_per_node N --rdzv_backend c10d \\
        --rdzv_endpoint HOST:PORT --rdzv_id ID --rdzv_conf is_host=1|0 -m modelmill.training.trainers.ddp ...

The folder is read and written by every node, so on separate machines it is on
storage they share. :func:`torchrun_command` gives one node's command, for a
scheduler (Slurm, Kubernetes) that starts the nodes itself.

Every rank (this module's :func:`main`) joins the process group (NCCL when
CUDA is present, gloo on the CPU), trains with :func:`fit_module` and writes
the sha256 of its final state_dict to ``rank<R>.json``; rank 0 also writes
the weights and the loss curve to ``model.pt``. The launcher checks that all
ranks ended with the same weights before it returns them.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from modelmill.errors import ConflictError, InputError, ModelmillError
from modelmill.training.trainers.torch_mlp import MLP, MLPConfig, build_module, fit_module, state_hash

log = logging.getLogger(__name__)

__all__ = ["DDPOutcome", "Node", "launch", "main", "pick_backend", "torchrun_command"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Node:
    """How to start a process on one node: a command prefix (``()``: here), environment to add, and the
    node's address that the other nodes reach (``addr``; None: torchrun uses the machine's name)."""

    prefix: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    addr: str | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class DDPOutcome:
    module: MLP
    losses: list[float]
    rank_hashes: list[str]
    backend: str
    out_dir: str


def torchrun_command(work: str | Path, *, nproc: int, nnodes: int = 1, rdzv_endpoint: str | None = None,
                     rdzv_id: str = "modelmill", is_host: bool | None = None, local_addr: str | None = None,
                     python: str = sys.executable) -> list[str]:
    """One node's torchrun command for the run whose data and config are in ``work``.

    ``nnodes == 1`` without an endpoint is ``--standalone``; otherwise the nodes rendezvous (c10d, over TCP)
    at ``rdzv_endpoint`` under ``rdzv_id``; ``is_host`` says whether this node's agent hosts the rendezvous
    store (None: torchrun decides, by matching the endpoint's host against this machine's name);
    ``local_addr`` is the address the other nodes reach this one at (its workers' store, when it has rank 0).
    """
    if nnodes < 1 or nproc < 1:
        raise InputError("nnodes" if nnodes < 1 else "nproc", "must be at least 1", min(nnodes, nproc))
    work = Path(work)
    cmd = [python, "-m", "torch.distributed.run"]
    if nnodes == 1 and rdzv_endpoint is None:
        cmd += ["--standalone"]
    else:
        if not rdzv_endpoint:
            raise InputError("rdzv_endpoint", "is needed for more than one node (HOST:PORT of the first node)")
        cmd += ["--nnodes", str(nnodes), "--rdzv_backend", "c10d", "--rdzv_endpoint", rdzv_endpoint,
                "--rdzv_id", rdzv_id]
        if is_host is not None:
            cmd += ["--rdzv_conf", f"is_host={int(is_host)}"]
        if local_addr is not None:
            cmd += ["--local-addr", local_addr]
    return [*cmd, "--nproc_per_node", str(nproc), "-m", "modelmill.training.trainers.ddp",
            "--data", str(work / "data.npz"), "--config", str(work / "config.json"), "--out", str(work)]


def pick_backend(cuda: bool) -> str:
    """NCCL when CUDA devices are present (one per local rank), gloo on the CPU."""
    return "nccl" if cuda else "gloo"


def launch(X: np.ndarray, y: np.ndarray, cfg: MLPConfig, *, nproc: int = 2, timeout: float = 600.0,
           out_dir: str | Path | None = None, nodes: Sequence[Node] | None = None,
           rdzv_endpoint: str | None = None) -> DDPOutcome:
    """Train through torchrun on ``nproc`` processes per node; returns rank 0's model.

    Without ``nodes``, one node here (``--standalone``). With them, one torchrun per node, started through
    its prefix, rendezvousing at ``rdzv_endpoint`` (an address of the first node that the others reach);
    the world is ``nproc * len(nodes)``. Every node's process is waited on within ``timeout`` (then killed).
    """
    import torch

    if nodes is not None and not nodes:
        raise InputError("nodes", "must name at least one node")
    nnodes = 1 if nodes is None else len(nodes)
    world = nproc * nnodes
    cfg.validate(world)
    work = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="modelmill-ddp-"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / "data.npz"
    np.savez(data, X=np.asarray(X, dtype=np.float64), y=np.asarray(y, dtype=np.float32))
    (work / "config.json").write_text(json.dumps(cfg.as_dict()))
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(cfg.threads)
    src = str(Path(__file__).resolve().parents[3])
    env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
    results = [work / f"rank{r}.json" for r in range(world)]
    for path in (*results, work / "model.pt"):  # what a rank writes when it is done; nothing left from before
        path.unlink(missing_ok=True)
    if nodes is None:
        commands = [(torchrun_command(work, nproc=nproc), env)]
    else:
        rdzv_id = f"modelmill-{uuid.uuid4().hex[:12]}"
        commands = [([*node.prefix, *torchrun_command(work, nproc=nproc, nnodes=nnodes, rdzv_endpoint=rdzv_endpoint,
                                                      rdzv_id=rdzv_id, is_host=i == 0, local_addr=node.addr)],
                     {**env, **dict(node.env)}) for i, node in enumerate(nodes)]
    codes, tails = _run_nodes(commands, work, timeout)
    if any(codes):
        tail = "\n".join(f"node {i} (exit {c}): {t}" for i, (c, t) in enumerate(zip(codes, tails, strict=True)) if c)
        if not all(path.exists() for path in (*results, work / "model.pt")):
            raise ModelmillError(f"torchrun exited with {max(codes, key=abs)}: {tail[-3000:]}",
                                 command=" ".join(commands[0][0]))
        # Every rank wrote its result after the last collective: what failed was the group's teardown
        # (gloo can lose the race between one rank's destroy_process_group and another's barrier).
        # The weights are checked below like any other run's.
        log.warning("torchrun exited non-zero after every rank had finished; using their results: %s", tail[-500:])
    ranks = [json.loads(path.read_text()) for path in results]
    hashes = [r["sha256"] for r in ranks]
    if len(set(hashes)) != 1:
        raise ConflictError("DDP ranks ended with different weights", rank_hashes=hashes)
    if [r["world"] for r in ranks] != [world] * world:
        raise ConflictError("DDP ranks saw another world size than launched", world=world,
                            seen=[r["world"] for r in ranks])
    saved = torch.load(work / "model.pt", weights_only=True)
    module = build_module(int(saved["n_in"]), cfg)
    module.load_state_dict(saved["state_dict"])
    return DDPOutcome(module=module, losses=[float(v) for v in saved["losses"]], rank_hashes=hashes, backend=ranks[0]["backend"],
                      out_dir=str(work))


def _run_nodes(commands: list[tuple[list[str], dict[str, str]]], work: Path,
               timeout: float) -> tuple[list[int], list[str]]:
    """Start every node's command, wait for all within ``timeout`` (killing every one past it, or when one
    node fails and the others are left waiting for it), and return their exit codes and output tails."""
    logs = [work / f"node{i}.log" for i in range(len(commands))]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for (cmd, env), path in zip(commands, logs, strict=True):
            with path.open("wb") as out:
                procs.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                              start_new_session=True))
        deadline = time.monotonic() + timeout
        failed_at: float | None = None
        while any(p.poll() is None for p in procs):
            now = time.monotonic()
            if failed_at is None and any(p.returncode not in (None, 0) for p in procs):
                failed_at = now  # a node failed: the others get a grace period to finish or fail on their own
            if now > deadline or (failed_at is not None and now > failed_at + 60):
                raise ModelmillError(f"torchrun did not finish within {timeout:.0f} s" if now > deadline else
                                     "a torchrun node failed and the others did not stop",
                                     command=" ".join(commands[0][0]), output=_tail(logs))
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    return [int(p.returncode) for p in procs], [path.read_text(errors="replace")[-2000:] for path in logs]


def _tail(logs: list[Path]) -> str:
    return "\n".join(f"{p.name}: {p.read_text(errors='replace')[-1500:]}" for p in logs if p.exists())


def main(argv: Sequence[str] | None = None) -> None:
    """One rank: join the group, train, write this rank's weight hash (and rank 0's weights)."""
    import torch
    import torch.distributed as dist

    parser = argparse.ArgumentParser(prog="modelmill.training.trainers.ddp")
    parser.add_argument("--data", required=True)
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    cfg = MLPConfig.from_dict(json.loads(Path(args.config).read_text()))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    backend = pick_backend(cuda)
    device = f"cuda:{local_rank}" if cuda else "cpu"
    if cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend, timeout=dt.timedelta(seconds=300))
    try:
        with np.load(args.data) as npz:
            X, y = npz["X"], npz["y"]
        losses: list[float] = []
        module = fit_module(X, y, cfg, world=world, rank=rank, device=device,
                                         on_epoch=lambda _e, loss: losses.append(loss))
        out = Path(args.out)
        if rank == 0:
            torch.save({"state_dict": module.state_dict(), "n_in": X.shape[1],
                        "losses": torch.tensor(losses, dtype=torch.float64)}, out / "model.pt")
        (out / f"rank{rank}.json").write_text(json.dumps(
            {"rank": rank, "world": world, "backend": backend, "sha256": state_hash(module), "losses": losses,
             "node_rank": int(os.environ.get("GROUP_RANK", "0")), "netns": _netns()}))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _netns() -> str | None:
    """This process's network namespace (``net:[INODE]`` on Linux), so a run shows where its ranks ran."""
    try:
        return os.readlink("/proc/self/ns/net")
    except OSError:
        return None


if __name__ == "__main__":
    main()
