"""Every flavor loads to the same predict interface and scores like the native model: modelmill.testing.check_flavor
over each flavor and model kind; then what each flavor stores and refuses."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression, Ridge

from modelmill.errors import InputError
from modelmill.project import Project
from modelmill.registry import Field, Registry, Signature, to_onnx
from modelmill.testing import check_flavor
from tests.registry.mlp import MLP, train_mlp

Data = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _torch_scores(model: torch.nn.Module, Xt: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return torch.sigmoid(model(torch.from_numpy(Xt.astype(np.float32)))).numpy().ravel()


def _local(inner: torch.nn.Module) -> torch.nn.Module:
    class Local(torch.nn.Module):  # not importable: stored as TorchScript
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x)

    return Local()


def _lgb_classifier(X: np.ndarray, y: np.ndarray) -> Any:
    import lightgbm as lgb

    return lgb.LGBMClassifier(n_estimators=30, num_leaves=15, verbose=-1, random_state=0).fit(X, y)


# Each case: (flavor, make(X, y) -> (model to store, native scores of Xt), options, rtol, atol).
Case = tuple[str, Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[Any, np.ndarray]], dict[str, Any], float, float]


def _case_lgb_classifier(X: np.ndarray, y: np.ndarray, Xt: np.ndarray) -> tuple[Any, np.ndarray]:
    clf = _lgb_classifier(X, y)
    return clf, clf.predict_proba(Xt)[:, 1]


def _case_lgb_booster(X: np.ndarray, y: np.ndarray, Xt: np.ndarray) -> tuple[Any, np.ndarray]:
    clf = _lgb_classifier(X, y)
    return clf.booster_, clf.predict_proba(Xt)[:, 1]


def _case_xgb_classifier(X: np.ndarray, y: np.ndarray, Xt: np.ndarray) -> tuple[Any, np.ndarray]:
    import xgboost

    clf = xgboost.XGBClassifier(n_estimators=30, max_depth=4, n_jobs=1, random_state=0).fit(X, y)
    return clf, clf.predict_proba(Xt)[:, 1]


def _case_catboost_classifier(X: np.ndarray, y: np.ndarray, Xt: np.ndarray) -> tuple[Any, np.ndarray]:
    import catboost

    clf = catboost.CatBoostClassifier(iterations=30, depth=4, thread_count=1, random_seed=0, verbose=False,
                                      allow_writing_files=False).fit(X, y)
    return clf, clf.predict_proba(Xt)[:, 1]


def _case_sklearn_classifier(X: np.ndarray, y: np.ndarray, Xt: np.ndarray) -> tuple[Any, np.ndarray]:
    clf = LogisticRegression().fit(X, y)
    return clf, clf.predict_proba(Xt)[:, 1]


def _case_sklearn_regressor(X: np.ndarray, y: np.ndarray, Xt: np.ndarray) -> tuple[Any, np.ndarray]:
    reg = Ridge().fit(X, X[:, 0] * 3.0)  # a regressor predicts its value
    return reg, reg.predict(Xt)


def _case_torch_state_dict(X: np.ndarray, y: np.ndarray, Xt: np.ndarray) -> tuple[Any, np.ndarray]:
    model = train_mlp(X, y, epochs=30)
    return model, _torch_scores(model, Xt)


def _case_torch_torchscript(X: np.ndarray, y: np.ndarray, Xt: np.ndarray) -> tuple[Any, np.ndarray]:
    model = train_mlp(X, y, epochs=30)
    return _local(model), _torch_scores(model, Xt)


def _case_torch_probability(X: np.ndarray, y: np.ndarray, Xt: np.ndarray) -> tuple[Any, np.ndarray]:
    model = train_mlp(X, y, epochs=30)
    return torch.nn.Sequential(model, torch.nn.Sigmoid()), _torch_scores(model, Xt)


def _case_onnx(X: np.ndarray, y: np.ndarray, Xt: np.ndarray) -> tuple[Any, np.ndarray]:
    clf = LogisticRegression().fit(X, y)
    return to_onnx(clf, "sklearn", n_features=X.shape[1]), clf.predict_proba(Xt)[:, 1]


CASES: dict[str, Case] = {
    "lightgbm-classifier": ("lightgbm", _case_lgb_classifier, {}, 1e-9, 0.0),
    "lightgbm-booster": ("lightgbm", _case_lgb_booster, {}, 1e-9, 0.0),
    "xgboost-classifier": ("xgboost", _case_xgb_classifier, {}, 1e-6, 0.0),
    "catboost-classifier": ("catboost", _case_catboost_classifier, {}, 1e-9, 0.0),
    "sklearn-classifier": ("sklearn", _case_sklearn_classifier, {}, 1e-9, 0.0),
    "sklearn-regressor": ("sklearn", _case_sklearn_regressor, {}, 1e-7, 0.0),
    "torch-state-dict": ("torch", _case_torch_state_dict, {}, 1e-6, 1e-7),
    "torch-torchscript": ("torch", _case_torch_torchscript, {}, 1e-6, 1e-7),
    "torch-probability": ("torch", _case_torch_probability, {"output": "probability"}, 1e-6, 1e-7),
    "onnx": ("onnx", _case_onnx, {}, 0.0, 1e-5),  # float32 inside ONNX
}


@pytest.mark.parametrize("case", list(CASES))
def test_flavor_contract(project: Project, classification: Data, case: str) -> None:
    flavor, make, options, rtol, atol = CASES[case]
    X, y, Xt, _ = classification
    model, expected = make(X, y, Xt)
    check_flavor(flavor, model, Xt, expected, options=options, project=project, rtol=rtol, atol=atol)


def test_torch_stores_an_importable_module_as_a_state_dict_and_else_torchscript(
        sqlite_registry: Registry, classification: Data, signature6: Signature) -> None:
    X, y, _, _ = classification
    model = train_mlp(X, y, epochs=5)
    loaded = sqlite_registry.load(sqlite_registry.register("mlp", model, flavor="torch", signature=signature6))
    assert loaded.options["format"] == "state_dict" and isinstance(loaded.raw, MLP)
    scripted = sqlite_registry.load(sqlite_registry.register("mlp", _local(model), flavor="torch",
                                                             signature=signature6))
    assert scripted.options["format"] == "torchscript"


def test_check_flavor_names_the_broken_promise(project: Project, classification: Data) -> None:
    X, y, Xt, _ = classification
    clf = LogisticRegression().fit(X, y)
    with pytest.raises(AssertionError, match="scores differ from the native model's"):
        check_flavor("sklearn", clf, Xt, clf.predict_proba(Xt)[:, 0], project=project)  # the wrong class


def test_flavor_rejects_what_it_cannot_store(sqlite_registry: Registry, signature6: Signature) -> None:
    with pytest.raises(InputError, match=r"torch\.nn\.Module"):
        sqlite_registry.register("x", object(), flavor="torch", signature=signature6)
    with pytest.raises(InputError, match="ONNX"):
        sqlite_registry.register("x", b"not onnx", flavor="onnx", signature=signature6)
    with pytest.raises(InputError, match=r"options\.output"):
        sqlite_registry.register("x", MLP(6), flavor="torch", signature=signature6, options={"output": "odds"})


class Scorer:
    """predict_proba only: the sigmoid of the first column."""

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        p = 1 / (1 + np.exp(-np.asarray(X)[:, 0]))
        return np.column_stack([1 - p, p])


def test_a_bare_predict_proba_scorer_is_binary(project: Project) -> None:
    """A wrapper with predict_proba only (no classes_, no predict: the demo's planted broken candidate, a
    user's scorer) loads as a binary classifier scoring the second column, as before tasks were known."""
    from modelmill.registry.flavors import task_of

    assert task_of(Scorer()) == ("binary", [])
    registry = Registry(project)
    mv = registry.register("scorer", Scorer(), flavor="sklearn", signature=Signature(inputs=[Field("x", "float64")]))
    loaded = registry.load(mv)
    np.testing.assert_allclose(loaded.predict(np.array([[0.0], [2.0]])), [0.5, 1 / (1 + np.exp(-2.0))])
