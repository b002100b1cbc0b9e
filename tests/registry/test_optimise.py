"""Pruning and distillation, each measured against the original and registered with its lineage."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.ensemble import HistGradientBoostingClassifier

from modelmill.registry import Registry, Signature, distill_version, prune, prune_version, sparsity
from tests.registry.mlp import train_mlp

FAST = {"single": 20, "batches": 3, "budget_s": 0.3}


def test_unstructured_pruning_zeroes_the_smallest_weights(classification) -> None:
    X, y, _, _ = classification
    model = train_mlp(X, y, epochs=20)
    pruned = prune(model, amount=0.6, structured=False)
    assert abs(sparsity(pruned) - 0.6) < 0.01 and sparsity(model) == 0.0  # the original is untouched
    before = [m.weight.detach() for m in model.modules() if isinstance(m, torch.nn.Linear)]
    after = [m.weight.detach() for m in pruned.modules() if isinstance(m, torch.nn.Linear)]
    dropped = torch.cat([b[a == 0] for b, a in zip(before, after, strict=True)])
    kept = torch.cat([a[a != 0] for a in after])
    assert float(kept.abs().min()) >= float(dropped.abs().max())  # one global magnitude order


def test_structured_pruning_shrinks_and_registers(sqlite_registry: Registry, classification,
                                                  signature6: Signature) -> None:
    X, y, Xt, yt = classification
    mv = sqlite_registry.register("mlp", train_mlp(X, y, hidden=(64, 32), epochs=80), flavor="torch",
                                  signature=signature6)
    result = prune_version(sqlite_registry, mv, Xt, yt, amount=0.5, fine_tune=(X, y), epochs=10,
                           max_auc_drop=0.02, timing=FAST)
    assert result.accepted, result.reason
    assert result.size_after < 0.5 * result.size_before  # half the neurons of each hidden layer are gone
    assert result.before - result.after < 0.02 and result.latency_after.per_1000_ms > 0
    pruned = sqlite_registry.load(result.version)
    widths = [p.shape[0] for n, p in pruned.raw.named_parameters() if n.endswith("weight")]
    assert widths == [32, 16, 1]
    assert pruned.options["format"] == "torchscript"
    assert result.version.lineage["derived_from"] == "mlp@1"


# Trains a teacher and a student network: the slowest test of the suite (45 s on a busy 2-core machine).
@pytest.mark.slow
def test_distilled_student_tracks_the_teacher(sqlite_registry: Registry, classification,
                                              signature6: Signature) -> None:
    X, y, Xt, yt = classification
    teacher = HistGradientBoostingClassifier(max_iter=120, max_leaf_nodes=31, early_stopping=False,
                                             random_state=0).fit(X, y)
    mv = sqlite_registry.register("big", teacher, flavor="sklearn", signature=signature6)
    result = distill_version(sqlite_registry, mv, X, Xt, yt, max_auc_drop=0.03, timing=FAST)
    assert result.accepted, result.reason
    assert result.after > 0.9 and result.before - result.after < 0.03
    student = sqlite_registry.load(result.version)
    assert student.raw.student.n_iter_ == 40 and teacher.n_iter_ == 120
    corr = np.corrcoef(student.predict(Xt), sqlite_registry.load(mv).predict(Xt))[0, 1]
    assert corr > 0.95
