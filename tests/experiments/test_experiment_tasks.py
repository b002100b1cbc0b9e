"""Experiments know the model's task: a regression A/B on squared or absolute error (lower is better), a
multiclass one on the log loss of the logged class probabilities and the accuracy of the predicted class, and a
metric that does not fit the task refused at creation. Real models from the trainers serve the outputs that are
logged through the server's own prediction-log writer; the analysis's means are checked against scikit-learn."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from sklearn.metrics import accuracy_score, log_loss, mean_absolute_error, mean_squared_error
from tests.prediction_log import prediction_log

from modelmill.errors import ConflictError, InputError, NotFoundError
from modelmill.experiments import Arm, Experiment, Experiments
from modelmill.experiments.metrics import served_values
from modelmill.project import Project
from modelmill.registry import Registry, clear_cache, infer_signature
from modelmill.training.trainers import train

from .conftest import log_served

FEATURES = ["a", "b", "c"]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


@pytest.fixture
def registry(project: Project) -> Iterator[Registry]:
    clear_cache()
    yield Registry(project)
    clear_cache()


def _frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    winner = np.argmax(X + rng.normal(scale=0.4, size=X.shape), axis=1)
    return pd.DataFrame({"a": X[:, 0], "b": X[:, 1], "c": X[:, 2], "kind": np.array(["cat", "dog", "fish"])[winner],
                         "price": X @ [2.0, -1.0, 0.5] + rng.normal(scale=0.3, size=n),
                         "late": (X[:, 0] > 0).astype(int)})


def _register(registry: Registry, name: str, label: str, task: str, **params: Any) -> None:
    fit = _frame(600, 0)
    res = train("sklearn-hgb", fit, label, features=FEATURES, task=task, **params)
    registry.register(name, res.native, flavor=res.flavor, signature=infer_signature(fit[FEATURES]), actor="test")


def _regression_ab(registry: Registry, project: Project, name: str, metric: str, offset: int) -> tuple[Any, ...]:
    """An experiment on ``metric``: the control serves price@2 (3 boosting rounds), the treatment price@1 (60);
    1,500 labelled requests from 500 users, each answered by its variant's version."""
    store = Experiments(project)
    exp = store.create(Experiment(name=name, model="price", primary_metric=metric, min_sample_size=100,
                                  variants=(Arm("control", 50, 2), Arm("treatment", 50, 1))))
    served = _frame(1500, 1 + offset)
    X, y = served[FEATURES].to_numpy(), served["price"].to_numpy()
    preds = {v: registry.load(f"price@{v}").predict(X) for v in (1, 2)}
    assigner = exp.assigner()
    variants = np.array([assigner.assign(f"u{i % 500}") for i in range(len(y))])
    version = np.where(variants == "control", 2, 1)
    output = np.where(version == 1, preds[1], preds[2])
    log_served(project.offline, "price", [(f"{name}-{i}", str(variants[i]), int(version[i]), f"u{i % 500}",
                                          float(output[i]), float(y[i])) for i in range(len(y))])
    return store, exp, variants, output, y


def test_a_regression_ab_picks_the_variant_with_the_lower_squared_and_absolute_error(registry: Registry,
                                                                                   project: Project) -> None:
    _register(registry, "price", "price", "regression", max_iter=60)
    _register(registry, "price", "price", "regression", max_iter=3)
    store, exp, variants, output, y = _regression_ab(registry, project, "sq", "squared_error", 0)
    assert exp.direction == "lower"
    out = store.analyze("sq").as_dict()
    assert out["metric"] == "squared_error" and out["direction"] == "lower"
    for v in ("control", "treatment"):  # Σ squared error / Σ requests per variant: its MSE
        m = variants == v
        assert abs(out[v]["mean"] - mean_squared_error(y[m], output[m])) <= 1e-9, v
    assert out["treatment"]["mean"] < out["control"]["mean"] / 2
    assert out["decision"] == "switch_to_treatment" and "treatment is better" in out["reason"], out["reason"]
    store.stop("sq")
    store, exp, variants, output, y = _regression_ab(registry, project, "abs", "absolute_error", 1)
    out = store.analyze("abs").as_dict()
    assert exp.direction == "lower" and out["decision"] == "switch_to_treatment", out["reason"]
    for v in ("control", "treatment"):
        m = variants == v
        assert abs(out[v]["mean"] - mean_absolute_error(y[m], output[m])) <= 1e-9, v
    # told higher is better, the same log keeps the control: the direction decides
    assert store.analyze("abs", direction="higher").as_dict()["decision"] == "keep_control"


def test_a_multiclass_ab_scores_the_logged_class_probabilities(registry: Registry, project: Project) -> None:
    _register(registry, "animals", "kind", "multiclass", max_iter=40)
    _register(registry, "animals", "kind", "multiclass", max_iter=2)
    store = Experiments(project)
    store.create(Experiment(name="ll", model="animals", primary_metric="log_loss", min_sample_size=50,
                            variants=(Arm("control", 50, 2), Arm("treatment", 50, 1))))
    served = _frame(1200, 5)
    X = served[FEATURES].to_numpy()
    y = pd.Categorical(served["kind"], categories=["cat", "dog", "fish"]).codes  # labels: the class indices
    proba = {v: registry.load(f"animals@{v}").predict(X) for v in (1, 2)}
    exp = store.get("ll")
    assigner = exp.assigner()
    variants = np.array([assigner.assign(f"u{i % 400}") for i in range(len(y))])
    P = np.where((variants == "treatment")[:, None], proba[1], proba[2])
    with prediction_log(project.offline) as writer:  # as the server logs a multiclass answer
        for i in range(len(y)):
            writer.append(f"r{i}", "animals", 1 if variants[i] == "treatment" else 2, str(variants[i]), f"u{i % 400}",
                          tuple(FEATURES), X[i:i + 1], np.array([float(P[i].argmax())]), 1.0,
                          probabilities=P[i:i + 1])
    ts = pa.array([dt.datetime.now(dt.UTC)] * len(y), pa.timestamp("us", tz="UTC"))
    project.offline.write("labels", pa.table({"request_id": [f"r{i}" for i in range(len(y))], "ts": ts,
                                              "label": y.astype(float)}), time_column="ts")
    out = store.analyze("ll").as_dict()
    for v in ("control", "treatment"):
        m = variants == v
        assert abs(out[v]["mean"] - log_loss(y[m], P[m], labels=[0, 1, 2])) <= 1e-9, v
    assert out["treatment"]["mean"] < out["control"]["mean"]
    assert out["decision"] == "switch_to_treatment", out["reason"]
    # accuracy of the predicted class, from the same joined log
    _, frame = store.log("ll")
    frame = frame.sort_values("request_id", key=lambda s: s.str[1:].astype(int))
    got = served_values(frame, "accuracy", task="multiclass").to_numpy()
    assert got.mean() == pytest.approx(accuracy_score(y, P.argmax(axis=1)), abs=1e-12)
    # a label that is no class, and a log without the probabilities, are refused by name
    with pytest.raises(InputError, match="class index") as info:
        served_values(frame.assign(label=7.0), "accuracy", task="multiclass")
    assert info.value.field == "label"
    with pytest.raises(InputError, match="1200 of 1200 requests lack them") as info:
        served_values(frame.drop(columns=["probabilities"]), "log_loss", task="multiclass")
    assert info.value.field == "probabilities"


def test_a_metric_that_does_not_fit_the_models_task_is_refused(registry: Registry, project: Project) -> None:
    _register(registry, "price", "price", "regression", max_iter=5)
    _register(registry, "animals", "kind", "multiclass", max_iter=5)
    _register(registry, "late", "late", "binary", max_iter=5)
    store = Experiments(project)
    cases = [("price", "brier", "primary_metric", "a regression model", "squared_error, absolute_error"),
             ("price", "log_loss", "primary_metric", "a regression model", "squared_error, absolute_error"),
             ("animals", "conversion", "primary_metric", "a multiclass model", "log_loss, accuracy"),
             ("animals", "squared_error", "primary_metric", "a multiclass model", "log_loss, accuracy"),
             ("late", "absolute_error", "primary_metric", "a binary model", "conversion, log_loss, brier, accuracy")]
    for model, metric, field, task, fits in cases:
        with pytest.raises(InputError) as info:
            store.create(Experiment(name=f"{model}-{metric}", model=model, primary_metric=metric,
                                    variants=(Arm("control", 50, 1), Arm("treatment", 50, 1))))
        assert info.value.field == field and info.value.value == metric, info.value
        assert task in info.value.message and fits in info.value.message, info.value.message
        with pytest.raises(NotFoundError):
            store.get(f"{model}-{metric}")  # refused before anything is stored
    with pytest.raises(InputError) as info:  # a guardrail too
        store.create(Experiment(name="g", model="price", primary_metric="squared_error", guardrails=("brier",),
                                variants=(Arm("control", 50, 1), Arm("treatment", 50, 1))))
    assert info.value.field == "guardrails" and info.value.value == "brier"
    # the per-request values refuse the same way
    frame = pd.DataFrame({"output": [1.0], "label": [2.0]})
    with pytest.raises(InputError, match="a regression model"):
        served_values(frame, "brier", task="regression")
    assert served_values(frame, "absolute_error", task="regression").tolist() == [1.0]


def test_each_logged_row_is_scored_with_the_task_of_the_version_that_served_it(registry: Registry,
                                                                             project: Project) -> None:
    """An experiment between two binary versions stays a binary A/B after a regression version of the same
    model is registered: the analysis reads the task of the versions the log names, not of the newest one.
    Variants that serve versions of different tasks are refused at creation, naming each."""
    _register(registry, "late", "late", "binary", max_iter=40)
    _register(registry, "late", "late", "binary", max_iter=1)
    store = Experiments(project)
    store.create(Experiment(name="b", model="late", primary_metric="brier", min_sample_size=100,
                            variants=(Arm("control", 50, 2), Arm("treatment", 50, 1))))
    served = _frame(1200, 7)
    X, y = served[FEATURES].to_numpy(), served["late"].to_numpy()
    proba = {v: registry.load(f"late@{v}").predict(X) for v in (1, 2)}
    assigner = store.get("b").assigner()
    variants = np.array([assigner.assign(f"u{i % 400}") for i in range(len(y))])
    version = np.where(variants == "control", 2, 1)
    output = np.where(version == 1, proba[1], proba[2])
    log_served(project.offline, "late", [(f"b-{i}", str(variants[i]), int(version[i]), f"u{i % 400}",
                                          float(output[i]), float(y[i])) for i in range(len(y))])
    _register(registry, "late", "price", "regression", max_iter=5)  # late@3: the newest, of another task
    out = store.analyze("b").as_dict()
    for v in ("control", "treatment"):  # Σ (p - y)² / n per variant: its Brier score
        m = variants == v
        assert abs(out[v]["mean"] - float(np.mean((output[m] - y[m]) ** 2))) <= 1e-9, v
    assert out["decision"] == "switch_to_treatment", out["reason"]
    store.stop("b")
    with pytest.raises(ConflictError) as info:
        store.create(Experiment(name="mixed", model="late", primary_metric="squared_error",
                                variants=(Arm("control", 50, 1), Arm("treatment", 50, 3))))
    assert "late@1" in str(info.value) and "late@3" in str(info.value) and "different tasks" in str(info.value)
    with pytest.raises(NotFoundError):
        store.get("mixed")
