"""Compiled fast paths equal the model's own predictions, and anything else keeps the model's predict."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from modelmill.registry import Field, Signature
from modelmill.registry.flavors import flavor
from modelmill.serving.compiled import compile_linear, fast_predict

RNG = np.random.default_rng(4)
X = RNG.normal(loc=2.0, scale=3.0, size=(300, 5))
Y_CLS = (X @ RNG.normal(size=5) > 1).astype(int)
Y_REG = X @ RNG.normal(size=5) + 0.3


def _loaded(model: Any) -> Any:
    sig = Signature(inputs=[Field(f"x{i}") for i in range(5)])
    return flavor("sklearn").load(flavor("sklearn").dump(model, sig), sig, name="m", version=1, sha256="")


@pytest.mark.parametrize("model", [
    LogisticRegression().fit(X, Y_CLS),
    make_pipeline(StandardScaler(), LogisticRegression(C=0.5)).fit(X, Y_CLS),
    LinearRegression().fit(X, Y_REG),
    make_pipeline(StandardScaler(with_mean=False), Ridge()).fit(X, Y_REG),
], ids=["logistic", "scaler+logistic", "linear", "scaler+ridge"])
def test_compiled_equals_the_served_model(model: Any) -> None:
    handle = _loaded(model)
    fn = fast_predict(handle, 5)
    assert fn is not None
    new = RNG.normal(size=(50, 5))
    np.testing.assert_allclose(fn(new), handle.predict(new), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(fn(new[:1]), handle.predict(new[:1]), rtol=1e-12, atol=1e-14)


def test_other_models_are_not_compiled() -> None:
    assert compile_linear(RandomForestClassifier(n_estimators=3).fit(X, Y_CLS)) is None
    assert fast_predict(_loaded(RandomForestClassifier(n_estimators=3).fit(X, Y_CLS)), 5) is None
    multi = LogisticRegression().fit(X, (X[:, 0] > 2).astype(int) + (X[:, 1] > 2).astype(int))
    assert compile_linear(multi) is None


def test_a_compiled_function_that_disagrees_is_refused() -> None:
    lr = LogisticRegression().fit(X, Y_CLS)
    handle = _loaded(lr)
    lr.coef_ = lr.coef_ * 1.01  # the raw object no longer matches what predict serves
    object.__setattr__(handle, "raw", lr)
    handle._predict = _loaded(LogisticRegression().fit(X, Y_CLS)).predict
    assert fast_predict(handle, 5) is None
