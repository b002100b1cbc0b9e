"""Every flavor loads to the same predict interface and scores like the native model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import Ridge

from modelmill.errors import InputError
from modelmill.registry import Field, Registry, Signature
from tests.registry.mlp import MLP, train_mlp


def test_lightgbm_classifier_and_booster(sqlite_registry: Registry, classification, signature6: Signature) -> None:
    import lightgbm as lgb

    X, y, Xt, _ = classification
    clf = lgb.LGBMClassifier(n_estimators=30, num_leaves=15, verbose=-1, random_state=0).fit(X, y)
    for model in (clf, clf.booster_):
        mv = sqlite_registry.register("lgb", model, flavor="lightgbm", signature=signature6)
        loaded = sqlite_registry.load(mv)
        np.testing.assert_allclose(loaded.predict(Xt), clf.predict_proba(Xt)[:, 1], rtol=1e-9)


def test_regressor_predicts_its_value(sqlite_registry: Registry, classification) -> None:
    X, _, Xt, _ = classification
    model = Ridge().fit(X, X[:, 0] * 3.0)
    sig = Signature(inputs=[Field(f"f{i}") for i in range(6)], outputs=[Field("value")])
    loaded = sqlite_registry.load(sqlite_registry.register("reg", model, flavor="sklearn", signature=sig))
    np.testing.assert_allclose(loaded.predict(Xt), model.predict(Xt))


def test_torch_state_dict_and_torchscript(sqlite_registry: Registry, classification, signature6: Signature) -> None:
    X, y, Xt, _ = classification
    model = train_mlp(X, y, epochs=30)
    with torch.inference_mode():
        expected = torch.sigmoid(model(torch.from_numpy(Xt.astype(np.float32)))).numpy().ravel()

    mv = sqlite_registry.register("mlp", model, flavor="torch", signature=signature6)
    loaded = sqlite_registry.load(mv)
    assert loaded.options["format"] == "state_dict" and isinstance(loaded.raw, MLP)
    np.testing.assert_allclose(loaded.predict(Xt), expected, rtol=1e-6, atol=1e-7)

    class Local(torch.nn.Module):  # not importable: stored as TorchScript
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x)

    mv2 = sqlite_registry.register("mlp", Local(), flavor="torch", signature=signature6)
    loaded2 = sqlite_registry.load(mv2)
    assert loaded2.options["format"] == "torchscript"
    np.testing.assert_allclose(loaded2.predict(Xt), expected, rtol=1e-6, atol=1e-7)

    probs = sqlite_registry.register("mlp", torch.nn.Sequential(model, torch.nn.Sigmoid()), flavor="torch",
                                     signature=signature6, options={"output": "probability"})
    np.testing.assert_allclose(sqlite_registry.load(probs).predict(Xt), expected, rtol=1e-6, atol=1e-7)


def test_flavor_rejects_what_it_cannot_store(sqlite_registry: Registry, signature6: Signature) -> None:
    with pytest.raises(InputError, match=r"torch\.nn\.Module"):
        sqlite_registry.register("x", object(), flavor="torch", signature=signature6)
    with pytest.raises(InputError, match="ONNX"):
        sqlite_registry.register("x", b"not onnx", flavor="onnx", signature=signature6)
    with pytest.raises(InputError, match=r"options\.output"):
        sqlite_registry.register("x", MLP(6), flavor="torch", signature=signature6, options={"output": "odds"})
