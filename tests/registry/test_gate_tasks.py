"""The gate knows the task: multiclass log loss, macro F1 and accuracy; regression RMSE, MAE and R²; binary as
before. Real models from the trainers (and `modelmill train --task`), their gate values against scikit-learn's
own metrics of the same predictions, decisions that follow the thresholds in each metric's direction, a
threshold the task does not have refused, and what cannot be computed failing as no data."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    log_loss,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
)
from typer.testing import CliRunner

from modelmill.errors import InputError
from modelmill.registry import Registry, gate, infer_signature, parse_thresholds
from modelmill.training.trainers import train

FEATURES = ["a", "b", "c"]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """OpenMP on a shared machine: one thread is many times quicker than several fighting others."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


def _frame(n: int, seed: int) -> pd.DataFrame:
    """Three features; a three-class label by name (``kind``) and by number (``code``: 3, 5, 7), and a
    numeric one (``price``)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    winner = np.argmax(X + rng.normal(scale=0.6, size=X.shape), axis=1)
    return pd.DataFrame({"a": X[:, 0], "b": X[:, 1], "c": X[:, 2],
                         "kind": np.array(["cat", "dog", "fish"])[winner], "code": np.array([3, 5, 7])[winner],
                         "price": X @ [2.0, -1.0, 0.5] + 0.3 * X[:, 0] ** 2 + rng.normal(scale=0.3, size=n)})


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, pd.DataFrame]:
    return _frame(600, 0), _frame(400, 1)


def _register(registry: Registry, name: str, frame: pd.DataFrame, label: str, task: str, **params: Any) -> Any:
    """Train and register as `modelmill train --register` does (the signature inferred from the features)."""
    res = train("sklearn-hgb", frame, label, features=FEATURES, task=task, **params)
    mv = registry.register(name, res.native, flavor=res.flavor, signature=infer_signature(frame[FEATURES]),
                           metrics=res.metrics, actor="test")
    return res.model, mv


def test_multiclass_named_classes_are_gated_on_log_loss_macro_f1_and_accuracy(sqlite_registry: Registry,
                                                                               data) -> None:
    fit, holdout = data
    good, v1 = _register(sqlite_registry, "animals", fit, "kind", "multiclass", max_iter=40)
    weak, _ = _register(sqlite_registry, "animals", fit, "kind", "multiclass", max_iter=2)
    assert v1.lineage["task"] == "multiclass" and "classes" not in v1.lineage  # names: serving's order
    X, y = holdout[FEATURES].to_numpy(), holdout["kind"].to_numpy()

    def sk(model: Any) -> dict[str, float]:
        P = model.predict_proba(X)
        pred = model.classes_[P.argmax(axis=1)]
        return {"logloss": log_loss(y, P, labels=model.classes_), "macro_f1": f1_score(y, pred, average="macro"),
                "accuracy": accuracy_score(y, pred)}

    want, base = sk(weak), sk(good)
    assert base["logloss"] < want["logloss"] - 0.05  # two boosting rounds are worse
    result = gate(sqlite_registry, "animals@2", data=holdout, label="kind", against="animals@1",
                  minimum={"macro_f1": want["macro_f1"] - 0.01, "accuracy": want["accuracy"] + 0.01},
                  maximum={"logloss": want["logloss"] + 0.01},
                  max_regression={"logloss": (want["logloss"] - base["logloss"]) * 2,
                                  "macro_f1": max(base["macro_f1"] - want["macro_f1"], 0) + 0.5})
    assert result.task == "multiclass" and result.rows == len(holdout) and result.to_dict()["task"] == "multiclass"
    for name in want:
        assert abs(result.metrics[name] - want[name]) <= 1e-9, name
        assert result.baseline_metrics is not None and abs(result.baseline_metrics[name] - base[name]) <= 1e-9
    status = {(c.metric, c.rule): c.status for c in result.checks}
    # the accuracy floor just above its value fails; the rest pass, the regressions in each metric's direction
    assert status == {("macro_f1", "min"): "pass", ("accuracy", "min"): "fail", ("logloss", "max"): "pass",
                      ("logloss", "max_regression"): "pass", ("macro_f1", "max_regression"): "pass"}
    assert not result.accepted and f"accuracy {want['accuracy']:.4f} < minimum" in result.reason
    recorded = sqlite_registry.get("animals", 2).gate
    assert recorded is not None and recorded["task"] == "multiclass"  # recorded on the version
    # a log loss higher than production's by more than allowed is a regression (lower is better)
    tight = gate(sqlite_registry, "animals@2", data=holdout, label="kind", against="animals@1",
                 max_log_loss_increase=(want["logloss"] - base["logloss"]) / 2, record=False)
    (check,) = tight.checks
    assert check.status == "fail" and "worse by" in check.message and not tight.accepted
    # no regression allowed: each metric passes where scikit-learn says version 1 is at least as good, in the
    # metric's direction (log loss lower, macro F1 and accuracy higher), and fails where it says otherwise
    strict = gate(sqlite_registry, "animals@1", data=holdout, label="kind", against="animals@2",
                  max_regression={"logloss": 0.0, "macro_f1": 0.0, "accuracy": 0.0}, record=False)
    expected = {"logloss": base["logloss"] <= want["logloss"], "macro_f1": base["macro_f1"] >= want["macro_f1"],
                "accuracy": base["accuracy"] >= want["accuracy"]}
    assert {c.metric: c.passed for c in strict.checks} == expected and expected["logloss"]
    assert strict.accepted == all(expected.values())


def test_multiclass_numeric_classes_map_labels_by_the_recorded_class_values(sqlite_registry: Registry,
                                                                            data) -> None:
    fit, holdout = data
    model, mv = _register(sqlite_registry, "codes", fit, "code", "multiclass", max_iter=20)
    assert mv.lineage["classes"] == [3.0, 5.0, 7.0]
    X, y = holdout[FEATURES].to_numpy(), holdout["code"].to_numpy()
    P = model.predict_proba(X)
    pred = model.classes_[P.argmax(axis=1)]
    result = gate(sqlite_registry, "codes@1", data=holdout.assign(code=holdout["code"].astype(float)),
                  label="code", minimum={"macro_f1": 0.0, "accuracy": 0.0}, maximum={"logloss": 10.0}, record=False)
    assert result.accepted, result.reason
    assert abs(result.metrics["logloss"] - log_loss(y, P, labels=model.classes_)) <= 1e-9
    assert abs(result.metrics["macro_f1"] - f1_score(y, pred, average="macro")) <= 1e-9
    assert abs(result.metrics["accuracy"] - accuracy_score(y, pred)) <= 1e-9


def test_regression_is_gated_on_rmse_mae_and_r2_lower_error_is_better(sqlite_registry: Registry, data) -> None:
    fit, holdout = data
    good, v1 = _register(sqlite_registry, "price", fit, "price", "regression", max_iter=60)
    weak, _ = _register(sqlite_registry, "price", fit, "price", "regression", max_iter=3)
    assert v1.lineage["task"] == "regression"
    X, y = holdout[FEATURES].to_numpy(), holdout["price"].to_numpy()

    def sk(model: Any) -> dict[str, float]:
        p = model.predict(X)
        return {"rmse": mean_squared_error(y, p) ** 0.5, "mae": mean_absolute_error(y, p), "r2": r2_score(y, p)}

    want, base = sk(weak), sk(good)
    assert want["rmse"] > base["rmse"] + 0.1
    gap = want["rmse"] - base["rmse"]
    kept = gate(sqlite_registry, "price@2", data=holdout, label="price", against="price@1",
                maximum={"rmse": want["rmse"] + 0.01, "mae": want["mae"] - 0.01}, minimum={"r2": want["r2"] - 0.01},
                max_regression={"rmse": gap / 2}, record=False)
    assert kept.task == "regression"
    for name in want:
        assert abs(kept.metrics[name] - want[name]) <= 1e-9, name
        assert kept.baseline_metrics is not None and abs(kept.baseline_metrics[name] - base[name]) <= 1e-9
    status = {(c.metric, c.rule): c.status for c in kept.checks}
    assert status == {("rmse", "max"): "pass", ("mae", "max"): "fail", ("r2", "min"): "pass",
                      ("rmse", "max_regression"): "fail"}  # a higher RMSE than production's is worse
    assert not kept.accepted and f"worse by {gap:.4f}, more than the allowed {gap / 2:.4f}" in kept.reason
    loose = gate(sqlite_registry, "price@2", data=holdout, label="price", against="price@1",
                 max_regression={"rmse": gap * 2, "mae": 10.0, "r2": 10.0}, record=False)
    assert loose.accepted, loose.reason
    reverse = gate(sqlite_registry, "price@1", data=holdout, label="price", against="price@2",
                   max_regression={"rmse": 0.0, "mae": 0.0, "r2": 0.0}, record=False)
    assert reverse.accepted and all("better by" in c.message for c in reverse.checks), reverse.reason


def test_a_metric_the_task_does_not_have_is_refused_naming_it_and_the_tasks_metrics(sqlite_registry: Registry,
                                                                                   data) -> None:
    fit, holdout = data
    _register(sqlite_registry, "price", fit, "price", "regression", max_iter=5)
    _register(sqlite_registry, "animals", fit, "kind", "multiclass", max_iter=5)
    binary = fit.assign(late=(fit["a"] > 0).astype(int))
    _register(sqlite_registry, "late", binary, "late", "binary", max_iter=5)
    cases = [("price@1", "price", {"auc": 0.7}, "auc", "a regression model", "rmse, mae, r2"),
             ("price@1", "price", {"logloss": 0.7}, "logloss", "a regression model", "rmse, mae, r2"),
             ("animals@1", "kind", {"rmse": 0.7}, "rmse", "a multiclass model", "logloss, macro_f1, accuracy"),
             ("late@1", "late", {"macro_f1": 0.7}, "macro_f1", "a binary model", "accuracy, auc, brier")]
    for ref, label, bound, name, task, accepted in cases:
        with pytest.raises(InputError) as info:
            gate(sqlite_registry, ref, data=holdout.assign(late=(holdout["a"] > 0).astype(int)), label=label,
                 maximum=bound)
        assert info.value.field == "metric" and info.value.value == name, ref
        assert task in info.value.message and accepted in info.value.message, info.value.message
        assert sqlite_registry.resolve(ref).gate is None  # refused: nothing recorded, never a pass
    with pytest.raises(InputError, match="rmse, mae, r2") as info:  # a named log-loss bound is a logloss one
        gate(sqlite_registry, "price@1", data=holdout, label="price", max_log_loss=0.5)
    assert info.value.value == "logloss"
    with pytest.raises(InputError, match="macro_f1") as info:  # a metric no task has lists every one
        parse_thresholds(["f1_macro=0.5"], "--min")
    assert info.value.value == "f1_macro"
    _register(sqlite_registry, "late", fit.assign(late=fit["price"]), "late", "regression", max_iter=5)
    with pytest.raises(InputError, match="a baseline must do the candidate's task") as info:
        gate(sqlite_registry, "late@2", data=holdout.assign(late=holdout["price"]), label="late",
             against="late@1", max_regression={"rmse": 0.1})
    assert info.value.field == "against"


def test_what_cannot_be_computed_is_no_data_and_fails_the_gate(sqlite_registry: Registry, data) -> None:
    fit, holdout = data
    _register(sqlite_registry, "animals", fit, "kind", "multiclass", max_iter=10)
    _register(sqlite_registry, "price", fit, "price", "regression", max_iter=10)
    binary = fit.assign(late=(fit["a"] > 0).astype(int))
    _register(sqlite_registry, "late", binary, "late", "binary", max_iter=10)

    def only_check(ref: str, frame: pd.DataFrame, label: str, **bounds: Any) -> Any:
        result = gate(sqlite_registry, ref, data=frame, label=label, **bounds)
        assert not result.accepted and "no data" in result.reason, result.reason
        assert all(c.status == "no_data" and not c.passed and c.value is None for c in result.checks)
        recorded = sqlite_registry.resolve(ref).gate
        assert recorded is not None and recorded["accepted"] is False  # recorded as a rejection
        return result

    # no labels: every row's label is missing
    gone = only_check("price@1", holdout.assign(price=np.nan), "price", maximum={"rmse": 100.0})
    assert gone.rows == 0 and "no labelled rows" in gone.reason
    none = only_check("animals@1", holdout.assign(kind=None), "kind", minimum={"accuracy": 0.0})
    assert "no labelled rows" in none.reason
    # labels of one class: AUC (binary) is undefined; constant labels: R² is
    one = only_check("late@1", holdout.assign(late=1), "late", minimum={"auc": 0.5})
    assert "one class" in one.reason
    flat = gate(sqlite_registry, "price@1", data=holdout.assign(price=2.0), label="price",
                maximum={"rmse": 100.0}, minimum={"r2": -100.0})
    checks = {c.metric: c for c in flat.checks}
    assert checks["rmse"].status == "pass" and checks["r2"].status == "no_data" and not flat.accepted
    # a label that is not one of the model's classes
    bird = only_check("animals@1", holdout.assign(kind=["bird", *holdout["kind"].tolist()[1:]]), "kind",
                      maximum={"logloss": 100.0})
    assert "1 of 400 labels (the first 'bird') are not its classes: cat, dog, fish" in bird.reason
    # rows without a label are left out, the rest measured
    part = holdout.copy()
    part.loc[part.index[:100], "price"] = np.nan
    some = gate(sqlite_registry, "price@1", data=part, label="price", maximum={"rmse": 100.0}, record=False)
    kept = part.iloc[100:]
    p = sqlite_registry.load("price@1").predict(kept[FEATURES].to_numpy())
    assert some.rows == 300 and some.accepted
    assert math.isclose(some.metrics["rmse"], mean_squared_error(kept["price"], p) ** 0.5, rel_tol=0, abs_tol=1e-9)


@pytest.mark.slow  # two CLI trainings and three CLI gates (about 10 s)
def test_the_cli_trains_with_task_and_gates_on_the_tasks_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 data) -> None:
    from modelmill.cli import app
    from modelmill.config import load_settings
    from modelmill.project import Project
    from modelmill.registry import clear_cache

    for key in [k for k in os.environ if k.startswith("MODELMILL_")]:
        monkeypatch.delenv(key)
    (tmp_path / "modelmill.toml").write_text('home = ".modelmill"\n')
    monkeypatch.chdir(tmp_path)
    fit, holdout = data
    fit[[*FEATURES, "price"]].to_parquet(tmp_path / "train.parquet")
    holdout[[*FEATURES, "price"]].to_parquet(tmp_path / "holdout.parquet")
    cli = CliRunner()
    for iters in (60, 3):
        out = cli.invoke(app, ["train", "--trainer", "sklearn-hgb", "--task", "regression", "--data", "train.parquet",
                               "--label", "price", "--register", "price", "-p", f"max_iter={iters}", "--json"])
        assert out.exit_code == 0, out.output
    clear_cache()
    project = Project(load_settings(cwd=tmp_path))
    try:
        registry = Registry(project)
        X, y = holdout[FEATURES].to_numpy(), holdout["price"].to_numpy()
        rmse = [mean_squared_error(y, registry.load(f"price@{v}").predict(X)) ** 0.5 for v in (1, 2)]
    finally:
        project.close()
        clear_cache()
    args = ["gate", "--data", "holdout.parquet", "--label", "price", "--json"]
    first = cli.invoke(app, [*args, "--candidate", "price@1", "--max", f"rmse={rmse[0] + 0.01}"])
    assert first.exit_code == 0, first.output
    doc = json.loads(first.stdout)
    assert doc["task"] == "regression" and abs(doc["metrics"]["rmse"] - rmse[0]) <= 1e-9
    second = cli.invoke(app, [*args, "--candidate", "price@2", "--against", "price@1",
                              "--max-regression", f"rmse={(rmse[1] - rmse[0]) / 2}"])
    assert second.exit_code == 1, second.output
    assert json.loads(second.stdout)["checks"][0]["status"] == "fail"
    wrong = cli.invoke(app, [*args, "--candidate", "price@1", "--min", "auc=0.7"])
    assert wrong.exit_code != 0 and isinstance(wrong.exception, InputError)
    assert "auc" in str(wrong.exception) and "rmse, mae, r2" in str(wrong.exception)
