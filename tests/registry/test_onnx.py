"""ONNX export scores like the native model; INT8 quantisation is registered only within its AUC margin."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.ensemble import HistGradientBoostingClassifier

from modelmill.registry import Field, Registry, Signature, export_onnx, quantize
from tests.registry.mlp import train_mlp

FAST = {"single": 20, "batches": 3, "budget_s": 0.3}


def _equivalent(registry: Registry, native, flavor: str, Xt: np.ndarray, signature: Signature) -> None:
    mv = registry.register("m", native, flavor=flavor, signature=signature, run_id="run-1",
                           lineage={"feature_service": "fs"})
    onnx_mv = export_onnx(registry, mv)
    assert onnx_mv.flavor == "onnx" and onnx_mv.version == mv.version + 1
    assert onnx_mv.lineage["derived_from"] == mv.ref and onnx_mv.lineage["feature_service"] == "fs"
    assert onnx_mv.run_id == "run-1" and onnx_mv.signature == signature
    loaded = registry.load(onnx_mv, threads=1)
    assert loaded.flavor == "onnx"
    # float32 inside ONNX: agreement to 1e-5 on probabilities
    np.testing.assert_allclose(loaded.predict(Xt), registry.load(mv).predict(Xt), atol=1e-5)


# Converting a HistGradientBoosting model to ONNX takes about 20 s here.
@pytest.mark.slow
def test_sklearn_hist_gradient_boosting(sqlite_registry: Registry, classification, signature6: Signature) -> None:
    X, y, Xt, _ = classification
    Xm = X.copy()
    Xm[::37, 2] = np.nan  # missing values take the learnt branch in ONNX too
    model = HistGradientBoostingClassifier(max_iter=40, random_state=0).fit(Xm, y)
    Xt = Xt.copy()
    Xt[::41, 2] = np.nan
    _equivalent(sqlite_registry, model, "sklearn", Xt, signature6)


def test_lightgbm(sqlite_registry: Registry, classification, signature6: Signature) -> None:
    import lightgbm as lgb

    X, y, Xt, _ = classification
    model = lgb.LGBMClassifier(n_estimators=40, num_leaves=15, verbose=-1, random_state=0).fit(X, y)
    _equivalent(sqlite_registry, model, "lightgbm", Xt, signature6)


def test_torch_mlp(sqlite_registry: Registry, classification, signature6: Signature) -> None:
    X, y, Xt, _ = classification
    _equivalent(sqlite_registry, train_mlp(X, y, epochs=30), "torch", Xt, signature6)


def test_int8_within_margin_is_registered(sqlite_registry: Registry, classification, signature6: Signature) -> None:
    X, y, Xt, yt = classification
    mv = sqlite_registry.register("mlp", train_mlp(X, y, hidden=(64, 32), epochs=60), flavor="torch",
                                  signature=signature6)
    result = quantize(sqlite_registry, mv, Xt, yt, max_auc_drop=0.01, timing=FAST)
    assert result.accepted, result.reason
    assert abs(result.change) <= 0.01 and result.before > 0.85
    assert result.latency_after.per_row_ms > 0 and result.latency_before.per_1000_ms > 0
    assert result.version is not None and result.version.tags["quantized"] == "int8"
    assert result.version.lineage["derived_from"] == "mlp@1"
    assert sqlite_registry.load(result.version).predict(Xt[:3]).shape == (3,)
    assert result.to_dict()["version"] == "mlp@2"


def test_int8_beyond_margin_is_rejected(sqlite_registry: Registry) -> None:
    # One tiny weight carries the signal, one huge weight sets the per-tensor INT8 scale: the
    # signal's weight rounds to zero, so the quantised model scores every row the same.
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 2))
    y = (X[:, 0] > 0).astype(int)
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU(), torch.nn.Linear(2, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.01, 0.0], [0.0, 100.0]]))
        model[0].bias.zero_()
        model[2].weight.copy_(torch.tensor([[100.0, 0.0]]))
        model[2].bias.zero_()
    sig = Signature(inputs=[Field("signal"), Field("noise")])
    mv = sqlite_registry.register("fragile", model, flavor="torch", signature=sig)
    result = quantize(sqlite_registry, mv, X, y, max_auc_drop=0.005, timing=FAST)
    assert not result.accepted and result.version is None
    assert result.before == pytest.approx(1.0) and result.after == pytest.approx(0.5)
    assert "int8 rejected: auc worsened by 0.5000" in result.reason and "0.0050" in result.reason
    assert [v.version for v in sqlite_registry.versions("fragile")] == [1]  # nothing registered


@pytest.mark.parametrize("flavor", ["sklearn", "lightgbm", "xgboost"])
def test_a_multiclass_export_serves_every_class(sqlite_registry: Registry, flavor: str) -> None:
    """A multiclass model's ONNX version scores [n, C] like the native one (not one column), with the same
    task and class names, so serving answers each class's probability from either version."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(3)
    X = rng.normal(size=(600, 4))
    y = np.argmax(X[:, :3] + rng.normal(scale=0.5, size=(600, 3)), axis=1)
    labels = y + 5  # class labels that are not their indices
    if flavor == "sklearn":
        model = LogisticRegression(max_iter=200).fit(X, labels)
    elif flavor == "lightgbm":
        import lightgbm as lgb

        model = lgb.LGBMClassifier(n_estimators=20, num_leaves=7, verbose=-1, random_state=0).fit(X, labels)
    else:
        import xgboost as xgb

        model = xgb.XGBClassifier(n_estimators=20, max_depth=3).fit(X, y)  # XGBoost's classes are 0..K-1
        model.get_booster().set_attr(modelmill_classes='["cat", "dog", "fish"]')  # as the trainer records them
    signature = Signature(inputs=[Field(f"f{i}", "float64") for i in range(4)], outputs=[Field("probability")])
    mv = sqlite_registry.register("mc", model, flavor=flavor, signature=signature)
    native = sqlite_registry.load(mv)
    onnx_mv = export_onnx(sqlite_registry, mv)
    exported = sqlite_registry.load(onnx_mv, threads=1)
    Xt = rng.normal(size=(200, 4))
    assert native.predict(Xt).shape == exported.predict(Xt).shape == (200, 3)
    np.testing.assert_allclose(exported.predict(Xt), native.predict(Xt), atol=1e-5)
    assert exported.options["task"] == native.options["task"] == "multiclass"
    assert exported.options["classes"] == native.options["classes"], (exported.options, native.options)
    want = ["cat", "dog", "fish"] if flavor == "xgboost" else ["5", "6", "7"]
    assert [str(c) for c in exported.options["classes"]] == want
