"""Two more ways to make a model cheaper, each measured against the original: pruning and distillation.

* :func:`prune` — magnitude pruning of a PyTorch MLP with ``torch.nn.utils.prune``.
  Unstructured pruning zeroes the smallest weights (smaller when compressed, no faster
  on dense CPU kernels); structured pruning removes the hidden neurons with the
  smallest L2 norm and rebuilds narrower ``Linear`` layers, which is faster.
* :func:`distill` — a small, fast student trained on a large teacher's scores
  (regression on the teacher's logit), wrapped as a binary classifier.

    >>> import numpy as np
    >>> from sklearn.linear_model import LogisticRegression
    >>> X = np.random.default_rng(0).normal(size=(500, 4)); y = (X[:, 0] + X[:, 1] > 0).astype(int)
    >>> teacher = LogisticRegression().fit(X, y)
    >>> student = distill(lambda Z: teacher.predict_proba(Z)[:, 1], X)
    >>> student.predict_proba(X[:2]).shape
    (2, 2)
"""

from __future__ import annotations

import copy
import io
import itertools
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from modelmill.errors import InputError
from modelmill.registry.evaluate import Comparison, compare
from modelmill.registry.flavors import torch_predict
from modelmill.registry.registry import Registry
from modelmill.registry.versions import ModelVersion

__all__ = ["DistilledClassifier", "distill", "distill_version", "prune", "prune_version", "sparsity"]


# ---- pruning -----------------------------------------------------------------------------------------

_ELEMENTWISE = ("ReLU", "GELU", "SiLU", "Tanh", "Sigmoid", "LeakyReLU", "ELU", "Dropout", "Identity", "Sequential")


def prune(model: Any, *, amount: float = 0.5, structured: bool = True, fine_tune: tuple[Any, Any] | None = None,
          epochs: int = 30, output: str = "logit", seed: int = 0) -> Any:
    """A pruned copy of ``model`` (the original is untouched).

    ``structured``: drop ``amount`` of each hidden layer's neurons (smallest L2 norm of
    their incoming weights) and shrink the layer and the next one's inputs; the constant
    a dropped neuron still emitted is folded into the next layer's bias. Otherwise zero
    ``amount`` of all Linear weights by global L1 magnitude. ``fine_tune=(X, y)`` trains the
    survivors for ``epochs`` afterwards (the pruned weights stay zero), which recovers most
    of what pruning costs; ``output`` says what the model emits, which picks the loss.
    """
    import torch
    from torch.nn.utils import prune as torch_prune

    if not isinstance(model, torch.nn.Module) or isinstance(model, torch.jit.ScriptModule):
        raise InputError("model", "pruning needs a plain torch.nn.Module (register it with format='state_dict')",
                         type(model).__name__)
    if not 0.0 < amount < 1.0:
        raise InputError("amount", "must be a fraction between 0 and 1", amount)
    pruned = copy.deepcopy(model).eval()
    linears = [(name, m) for name, m in pruned.named_modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        raise InputError("model", "has no torch.nn.Linear layers to prune", type(model).__name__)
    if not structured:
        torch_prune.global_unstructured([(m, "weight") for _, m in linears],
                                        pruning_method=torch_prune.L1Unstructured, amount=amount)
        if fine_tune is not None:  # the masks stay on as forward hooks while training
            _fine_tune(pruned, *fine_tune, epochs=epochs, output=output, seed=seed)
        for _, m in linears:
            torch_prune.remove(m, "weight")
        return pruned
    for name, m in pruned.named_modules():
        if name and not isinstance(m, torch.nn.Linear) and type(m).__name__ not in _ELEMENTWISE \
                and any(True for _ in m.parameters(recurse=False)):
            raise InputError("model", "structured pruning supports MLPs of Linear layers and element-wise "
                             "activations; use structured=False", f"{name}: {type(m).__name__}")
    names = [name for name, _ in linears]
    for name, next_name in itertools.pairwise(names):  # every layer but the output one
        layer = _get(pruned, name)
        torch_prune.ln_structured(layer, "weight", amount=amount, n=2, dim=0)
        keep = layer.weight_mask.sum(dim=1) > 0
        torch_prune.remove(layer, "weight")
        following = _get(pruned, next_name)
        _fold_constant_neurons(pruned, name, next_name, layer, following, ~keep)
        _replace(pruned, name, _slice_linear(layer, rows=keep))
        _replace(pruned, next_name, _slice_linear(following, cols=keep))
    if fine_tune is not None:
        _fine_tune(pruned, *fine_tune, epochs=epochs, output=output, seed=seed)
    if hasattr(pruned, "init_kwargs"):
        # The widths changed, so the init kwargs no longer describe it: it is stored as TorchScript.
        setattr(pruned, "init_kwargs", None)  # noqa: B010
    return pruned


def _fine_tune(model: Any, X: Any, y: Any, *, epochs: int, output: str, seed: int, batch: int = 1024,
               budget_s: float = 60.0) -> None:
    import time

    import torch

    torch.manual_seed(seed)
    xs = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
    ys = torch.from_numpy(np.asarray(y, dtype=np.float32)).reshape(-1, 1)
    loss_fn: Any = {"logit": torch.nn.BCEWithLogitsLoss(), "probability": torch.nn.BCELoss()}.get(
        output, torch.nn.MSELoss())
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    deadline = time.monotonic() + budget_s
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(xs))
        for start in range(0, len(xs), batch):
            idx = order[start:start + batch]
            opt.zero_grad()
            loss_fn(model(xs[idx]).reshape(len(idx), -1)[:, -1:], ys[idx]).backward()
            opt.step()
        if time.monotonic() > deadline:
            break
    model.eval()


def sparsity(model: Any) -> float:
    """The fraction of Linear weights that are exactly zero."""
    import torch

    weights = [m.weight.detach() for m in model.modules() if isinstance(m, torch.nn.Linear)]
    total = sum(w.numel() for w in weights)
    return float(sum(int((w == 0).sum()) for w in weights) / max(total, 1))


def prune_version(registry: Registry, mv: ModelVersion | str, X: Any, y: Any, *, amount: float = 0.5,
                  structured: bool = True, fine_tune: tuple[Any, Any] | None = None, epochs: int = 30,
                  max_auc_drop: float | None = None, register: bool = True, actor: str = "api",
                  timing: Mapping[str, Any] | None = None) -> Comparison:
    """Prune a registered torch version (optionally fine-tuning on ``fine_tune=(X_train, y_train)``),
    compare it with the original on ``X, y`` and register it if accepted."""
    src = registry.resolve(mv) if isinstance(mv, str) else mv
    if src.flavor != "torch":
        raise InputError("model", "pruning applies to torch versions", f"{src.ref} is {src.flavor}")
    original = registry.load(src)
    output = str(original.options.get("output", "logit"))
    pruned = prune(original.raw, amount=amount, structured=structured, fine_tune=fine_tune, epochs=epochs,
                   output=output)
    kind = ("structured" if structured else "unstructured") + (" + fine-tune" if fine_tune is not None else "")
    result = compare(f"pruned {amount:.0%} {kind}", original.predict, torch_predict(pruned, output), X, y,
                     max_drop=max_auc_drop, sizes=(_state_bytes(original.raw), _state_bytes(pruned)),
                     timing=timing)
    if not (result.accepted and register):
        return result
    version = registry.register(
        src.name, pruned, flavor="torch", signature=src.signature, run_id=src.run_id,
        metrics={"auc": result.after}, options={"output": output, "format": "torchscript" if structured else None},
        lineage={**src.lineage, "derived_from": src.ref, "derivation": f"{kind} L-norm pruning, amount {amount}"},
        tags={**src.tags, "pruned": f"{amount:g}"}, actor=actor,
    )
    return result.with_version(version)


def _state_bytes(model: Any) -> int:
    import torch

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return len(buf.getvalue())


def _fold_constant_neurons(root: Any, name: str, next_name: str, layer: Any, following: Any, dropped: Any) -> None:
    """A neuron whose weights are pruned still emits activation(bias), a constant: add it to the next bias.

    The activation is whatever sits between the two layers in their Sequential; elsewhere nothing is folded.
    """
    import torch

    parent, _, first = name.rpartition(".")
    next_parent, _, second = next_name.rpartition(".")
    container = _get(root, parent) if parent else root
    if parent != next_parent or not isinstance(container, torch.nn.Sequential) or layer.bias is None:
        return
    between = list(container)[int(first) + 1:int(second)]
    with torch.no_grad():
        constant = layer.bias.detach().clone().reshape(1, -1)
        for module in between:
            constant = module(constant)
        contribution = following.weight[:, dropped] @ constant.reshape(-1)[dropped]
        if following.bias is None:
            following.bias = torch.nn.Parameter(torch.zeros(following.out_features))
        following.bias += contribution


def _slice_linear(layer: Any, *, rows: Any = None, cols: Any = None) -> Any:
    import torch

    weight = layer.weight.detach()
    bias = layer.bias.detach() if layer.bias is not None else None
    if rows is not None:
        weight = weight[rows]
        bias = bias[rows] if bias is not None else None
    if cols is not None:
        weight = weight[:, cols]
    new = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new


def _get(root: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        root = getattr(root, part)
    return root


def _replace(root: Any, dotted: str, module: Any) -> None:
    parent, _, leaf = dotted.rpartition(".")
    setattr(_get(root, parent) if parent else root, leaf, module)


# ---- distillation ------------------------------------------------------------------------------------


class DistilledClassifier:
    """A binary classifier whose score is ``sigmoid(student.predict(X))``; the student learnt the teacher's logit."""

    def __init__(self, student: Any) -> None:
        self.student = student
        self.classes_ = np.array([0, 1])

    def predict_proba(self, X: Any) -> np.ndarray:
        p = 1.0 / (1.0 + np.exp(-np.asarray(self.student.predict(X), dtype=np.float64)))
        return np.column_stack([1.0 - p, p])

    def predict(self, X: Any) -> np.ndarray:
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(np.int64)


def distill(teacher: Callable[[np.ndarray], Any], X: Any, *, student: Any = None, random_state: int = 0
            ) -> DistilledClassifier:
    """Fit ``student`` (default: a 40-tree, 15-leaf HistGradientBoostingRegressor) to ``teacher``'s logits on ``X``.

    ``X`` needs no labels: the teacher labels it, so unlabelled rows can be used too.
    """
    from sklearn.ensemble import HistGradientBoostingRegressor

    X = np.asarray(X, dtype=np.float64)
    p = np.clip(np.asarray(teacher(X), dtype=np.float64), 1e-6, 1 - 1e-6)
    target = np.log(p / (1 - p))
    model = student if student is not None else HistGradientBoostingRegressor(
        max_iter=40, max_leaf_nodes=15, learning_rate=0.2, early_stopping=False, random_state=random_state)
    model.fit(X, target)
    return DistilledClassifier(model)


def distill_version(registry: Registry, teacher: ModelVersion | str, X_train: Any, X_test: Any, y_test: Any, *,
                    student: Any = None, max_auc_drop: float | None = None, register: bool = True,
                    actor: str = "api", timing: Mapping[str, Any] | None = None) -> Comparison:
    """Distil a registered teacher into a student, compare on ``X_test, y_test``, register it if accepted."""
    src = registry.resolve(teacher) if isinstance(teacher, str) else teacher
    loaded = registry.load(src)
    model = distill(loaded.predict, X_train, student=student)
    result = compare("distilled", loaded.predict, lambda Z: model.predict_proba(Z)[:, 1], X_test, y_test,
                     max_drop=max_auc_drop, timing=timing)
    if not (result.accepted and register):
        return result
    version = registry.register(
        src.name, model, flavor="sklearn", signature=src.signature, run_id=src.run_id,
        metrics={"auc": result.after},
        lineage={**src.lineage, "derived_from": src.ref, "derivation": f"distilled into {type(model.student).__name__}"},
        tags={**src.tags, "distilled": "true"}, actor=actor,
    )
    return result.with_version(version)
