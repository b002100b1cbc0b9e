"""DistributedDataParallel training of the MLP, launched through torchrun.

:func:`launch` writes the data to a temporary folder and runs::

    python -m torch.distributed.run --standalone --nproc_per_node N -m modelmill.training.trainers.ddp \\
        --data DATA.npz --config CONFIG.json --out FOLDER

Every rank (this module's :func:`main`) joins the process group (NCCL when
CUDA is present, gloo on the CPU), trains with :func:`fit_module` and writes
the sha256 of its final state_dict to ``rank<R>.json``; rank 0 also writes
the weights and the loss curve to ``model.pt``. The launcher checks that all
ranks ended with the same weights before it returns them.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from modelmill.errors import ConflictError, ModelmillError
from modelmill.training.trainers.torch_mlp import MLP, MLPConfig, build_module, fit_module, state_hash

log = logging.getLogger(__name__)

__all__ = ["DDPOutcome", "launch", "main"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class DDPOutcome:
    module: MLP
    losses: list[float]
    rank_hashes: list[str]
    backend: str
    out_dir: str


def launch(X: np.ndarray, y: np.ndarray, cfg: MLPConfig, *, nproc: int = 2, timeout: float = 600.0,
           out_dir: str | Path | None = None) -> DDPOutcome:
    """Train on ``nproc`` local processes through torchrun; returns rank 0's model."""
    import torch

    cfg.validate(nproc)
    work = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="modelmill-ddp-"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / "data.npz"
    np.savez(data, X=np.asarray(X, dtype=np.float64), y=np.asarray(y, dtype=np.float32))
    (work / "config.json").write_text(json.dumps(cfg.as_dict()))
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(cfg.threads)
    src = str(Path(__file__).resolve().parents[3])
    env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
    results = [work / f"rank{r}.json" for r in range(nproc)]
    for path in (*results, work / "model.pt"):  # what a rank writes when it is done; nothing left from before
        path.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "modelmill.training.trainers.ddp", "--data", str(data), "--config", str(work / "config.json"),
           "--out", str(work)]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise ModelmillError(f"torchrun did not finish within {timeout:.0f} s", command=" ".join(cmd)) from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout)[-2000:]
        if not all(path.exists() for path in (*results, work / "model.pt")):
            raise ModelmillError(f"torchrun exited with {proc.returncode}: {tail}", command=" ".join(cmd))
        # Every rank wrote its result after the last collective: what failed was the group's teardown
        # (gloo can lose the race between one rank's destroy_process_group and another's barrier).
        # The weights are checked below like any other run's.
        log.warning("torchrun exited with %s after every rank had finished; using their results: %s",
                    proc.returncode, tail[-500:])
    ranks = [json.loads(path.read_text()) for path in results]
    hashes = [r["sha256"] for r in ranks]
    if len(set(hashes)) != 1:
        raise ConflictError("DDP ranks ended with different weights", rank_hashes=hashes)
    saved = torch.load(work / "model.pt", weights_only=True)
    module = build_module(int(saved["n_in"]), cfg)
    module.load_state_dict(saved["state_dict"])
    return DDPOutcome(module=module, losses=[float(v) for v in saved["losses"]], rank_hashes=hashes, backend=ranks[0]["backend"],
                      out_dir=str(work))


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
    backend = "nccl" if cuda else "gloo"
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
            {"rank": rank, "world": world, "backend": backend, "sha256": state_hash(module), "losses": losses}))
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
