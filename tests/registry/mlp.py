"""A small PyTorch MLP for the registry's tests, importable so the torch flavor stores it as a state_dict."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn


class MLP(nn.Module):
    modelmill_output = "logit"

    def __init__(self, n_in: int, hidden: Sequence[int] = (32, 16)) -> None:
        super().__init__()
        self.init_kwargs: dict[str, Any] = {"n_in": n_in, "hidden": list(hidden)}
        layers: list[nn.Module] = []
        width = n_in
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def train_mlp(X: np.ndarray, y: np.ndarray, *, hidden: Sequence[int] = (32, 16), epochs: int = 150,
              seed: int = 0) -> MLP:
    """Full-batch Adam on BCE-with-logits; deterministic for a seed."""
    torch.manual_seed(seed)
    model = MLP(X.shape[1], hidden)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    xs = torch.from_numpy(X.astype(np.float32))
    ys = torch.from_numpy(y.astype(np.float32)).reshape(-1, 1)
    loss_fn = nn.BCEWithLogitsLoss()
    for _ in range(epochs):
        opt.zero_grad()
        loss_fn(model(xs), ys).backward()
        opt.step()
    return model.eval()
