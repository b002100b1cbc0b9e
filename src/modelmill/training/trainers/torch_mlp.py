"""A PyTorch MLP for binary classification, trained in one process or with DistributedDataParallel.

One training loop serves both: it always draws batches through a
``DistributedSampler``. With ``world`` processes each takes ``batch_size /
world`` rows per step and DDP averages the gradients, so a step sees the same
global batch, in the same order, as one process with ``batch_size`` rows;
the two runs then agree up to float rounding (see ``tests/training/test_ddp.py``
for the tolerance). That holds when the row count is a multiple of ``world``;
otherwise the sampler repeats a few rows to even out the ranks.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0); X = rng.normal(size=(512, 4)); y = (X[:, 0] + X[:, 1] > 0).astype(int)
    >>> res = TorchMLPTrainer(hidden=(8,), epochs=5, batch_size=64, lr=0.1).fit(X[:384], y[:384], X[384:], y[384:])
    >>> res.metrics["auc"] > 0.9, res.model.predict_proba(X[:2]).shape
    (True, (2, 2))
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from modelmill.errors import InputError
from modelmill.training.tracking import Run
from modelmill.training.trainers.base import TrainResult, evaluate, log_result

__all__ = ["MLP", "MLPConfig", "TorchMLPClassifier", "TorchMLPTrainer", "fit_module", "state_hash"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class MLPConfig:
    """Model and optimiser settings; ``batch_size`` is the global batch (split across processes)."""

    hidden: tuple[int, ...] = (64, 32)
    epochs: int = 10
    batch_size: int = 256
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    seed: int = 0
    threads: int = 1

    def validate(self, world: int = 1) -> MLPConfig:
        if not self.hidden or any(int(h) < 1 for h in self.hidden):
            raise InputError("hidden", "must be one or more positive layer widths", list(self.hidden))
        for key in ("epochs", "batch_size", "threads"):
            if getattr(self, key) < 1:
                raise InputError(key, "must be at least 1", getattr(self, key))
        if self.lr <= 0:
            raise InputError("lr", "must be positive", self.lr)
        if world < 1:
            raise InputError("nproc", "must be at least 1", world)
        if self.batch_size % world:
            raise InputError("batch_size", f"must be a multiple of the process count {world}", self.batch_size)
        return self

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["hidden"] = list(self.hidden)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MLPConfig:
        values = dict(data)
        if "hidden" in values:
            values["hidden"] = tuple(int(h) for h in values["hidden"])
        return cls(**values)


class MLP(nn.Module):
    """Standardisation (as buffers) + ReLU layers + one logit. Importable with ``init_kwargs``, so the
    registry's torch flavor stores it as a state_dict and serving feeds it raw feature values."""

    modelmill_output = "logit"
    mean: torch.Tensor
    scale: torch.Tensor
    init_kwargs: dict[str, Any]

    def __init__(self, n_in: int, hidden: Sequence[int] = (64, 32)) -> None:
        super().__init__()
        self.init_kwargs = {"n_in": int(n_in), "hidden": [int(h) for h in hidden]}
        self.register_buffer("mean", torch.zeros(int(n_in)))
        self.register_buffer("scale", torch.ones(int(n_in)))
        layers: list[nn.Module] = []
        width = int(n_in)
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU()]
            width = int(h)
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def set_scaler(self, mean: np.ndarray, scale: np.ndarray) -> MLP:
        self.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.scale.copy_(torch.as_tensor(scale, dtype=torch.float32))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A missing value becomes the column mean: 0 after standardising.
        return self.net(torch.nan_to_num((x - self.mean) / self.scale, nan=0.0))


class TorchMLPClassifier:
    """A fitted :class:`MLP` with the scikit-learn face the rest of modelmill expects (``predict_proba``)."""

    classes_ = np.array([0, 1])

    def __init__(self, module: MLP) -> None:
        self.module_ = module.eval()

    def __repr__(self) -> str:
        return f"TorchMLPClassifier(n_features={self.n_features_in_})"

    @property
    def n_features_in_(self) -> int:
        return int(self.module_.init_kwargs["n_in"])

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        xs = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
        with torch.inference_mode():
            p = torch.sigmoid(self.module_(xs).squeeze(1)).double().numpy()
        return np.column_stack([1.0 - p, p])

    def predict(self, X: np.ndarray) -> np.ndarray:
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(np.int64)


def scaler(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column means and scales (missing values ignored; a constant column gets scale 1)."""
    with np.errstate(all="ignore"):
        mean = np.nan_to_num(np.nanmean(X, axis=0))
        scale = np.nan_to_num(np.nanstd(X, axis=0), nan=1.0)
    scale[scale == 0] = 1.0
    return mean, scale


def build_module(n_in: int, cfg: MLPConfig) -> MLP:
    torch.manual_seed(cfg.seed)
    return MLP(n_in, cfg.hidden)


def fit_module(X: np.ndarray, y: np.ndarray, cfg: MLPConfig, *, world: int = 1, rank: int = 0,
               device: str = "cpu", on_epoch: Callable[[int, float], None] | None = None) -> MLP:
    """Train and return the module (on the CPU). With ``world > 1`` the process group must be initialised."""
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    cfg.validate(world)
    torch.set_num_threads(cfg.threads)
    X = np.asarray(X, dtype=np.float64)
    data = TensorDataset(torch.from_numpy(X.astype(np.float32)), torch.from_numpy(np.asarray(y, np.float32)))
    sampler: DistributedSampler[Any] = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed)
    loader = DataLoader(data, batch_size=cfg.batch_size // world, sampler=sampler)
    module = build_module(X.shape[1], cfg).set_scaler(*scaler(X)).to(device)
    model: Any = module
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(module, device_ids=[device] if device.startswith("cuda") else None)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    for epoch in range(cfg.epochs):
        sampler.set_epoch(epoch)
        total = torch.zeros(2, dtype=torch.float64, device=device)
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb).squeeze(1), yb)
            loss.backward()
            opt.step()
            total += torch.stack([loss.detach().double() * len(yb), torch.tensor(len(yb), dtype=torch.float64,
                                                                                   device=device)])
        if world > 1:
            import torch.distributed as dist

            dist.all_reduce(total)
        if on_epoch is not None:
            on_epoch(epoch, float(total[0] / total[1]))
    return module.cpu()


def state_hash(module: Any) -> str:
    """sha256 over a module's state_dict (names and raw bytes, in order): equal hashes, equal weights."""
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class TorchMLPTrainer:
    """Settings are stored; ``fit`` trains, in this process (``nproc=1``) or through torchrun."""

    name = "torch-mlp"
    flavor = "torch"

    def __init__(self, *, hidden: tuple[int, ...] | list[int] = (64, 32), epochs: int = 10, batch_size: int = 256,
                 lr: float = 0.05, momentum: float = 0.9, weight_decay: float = 0.0, seed: int = 0,
                 threads: int = 1, nproc: int = 1, timeout: float = 600.0) -> None:
        self.config = MLPConfig(hidden=tuple(int(h) for h in hidden), epochs=epochs, batch_size=batch_size, lr=lr,
                                momentum=momentum, weight_decay=weight_decay, seed=seed, threads=threads)
        self.nproc = nproc
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"TorchMLPTrainer({self.config}, nproc={self.nproc})"

    def fit(self, X: np.ndarray, y: np.ndarray, X_valid: np.ndarray, y_valid: np.ndarray, *,
            run: Run | None = None, feature_names: list[str] | None = None) -> TrainResult:
        cfg = self.config.validate(self.nproc)
        losses: list[float] = []
        extra: dict[str, Any] = {"nproc": self.nproc}
        X = np.asarray(X, dtype=np.float64)
        if self.nproc == 1:
            module = fit_module(X, y, cfg, on_epoch=lambda _e, loss: losses.append(loss))
        else:
            from modelmill.training.trainers.ddp import launch

            outcome = launch(X, y, cfg, nproc=self.nproc, timeout=self.timeout)
            module, losses = outcome.module, outcome.losses
            extra.update(rank_hashes=outcome.rank_hashes, backend=outcome.backend)
        model = TorchMLPClassifier(module)
        if run is not None:
            run.log_batch([("train_loss", loss, epoch) for epoch, loss in enumerate(losses)])
        metrics = evaluate(model, X_valid, y_valid)
        params = {"trainer": self.name, "nproc": self.nproc, **cfg.as_dict()}
        log_result(run, params, metrics)
        return TrainResult(model=model, native=module, trainer=self.name, flavor=self.flavor, params=params,
                           metrics=metrics,
                           feature_names=feature_names or [f"f{i}" for i in range(X.shape[1])],
                           run_id=None if run is None else run.run_id, extra={**extra, "train_loss": losses})
