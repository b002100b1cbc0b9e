"""A small retraining pipeline for the loop's tests: synthetic rows, a logistic regression, registered.

``seed`` changes the data, so two runs with different seeds register two different versions (a run with
the same params is the step cache's: the same version again).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

from modelmill.registry import Field, Registry, Signature
from modelmill.training import Pipeline, StepContext, register_pipeline, step

FEATURES = ("x1", "x2")
SIGNATURE = Signature(inputs=[Field(c, "float64") for c in FEATURES], outputs=[Field("p", "float64")])


def frame(seed: int, n: int = 600) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    y = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(scale=0.7, size=n) > 0).astype("int64")
    return pd.DataFrame({"x1": x[:, 0], "x2": x[:, 1], "clicked": y})


@step(inputs=["seed"], outputs=["train_set", "holdout"])
def make_data(seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    data = frame(seed)
    return data.iloc[:400].reset_index(drop=True), data.iloc[400:].reset_index(drop=True)


@step(inputs=["train_set", "model", "flip"], outputs=["version"])
def fit_and_register(ctx: StepContext, train_set: pd.DataFrame, model: str, flip: bool) -> int:
    y = train_set["clicked"].to_numpy()
    fitted = LogisticRegression().fit(train_set[list(FEATURES)].to_numpy(), 1 - y if flip else y)
    mv = Registry(ctx.project).register(model, fitted, flavor="sklearn", signature=SIGNATURE,
                                        lineage={"pipeline_run": ctx.pipeline_run_id}, actor="test-pipeline")
    ctx.record(model_version=f"{model}@{mv.version}")
    return mv.version


@step(inputs=["seed"], outputs=["train_set", "holdout"])
def make_data_without_x2_in_holdout(seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    data = frame(seed)
    return data.iloc[:400].reset_index(drop=True), data.iloc[400:].drop(columns=["x2"]).reset_index(drop=True)


RETRAIN = register_pipeline(Pipeline("loop_test_retrain", [make_data, fit_and_register]))
OTHER = register_pipeline(Pipeline("loop_test_other", [make_data, fit_and_register]))
BAD_HOLDOUT = register_pipeline(Pipeline("loop_test_bad_holdout", [make_data_without_x2_in_holdout,
                                                                  fit_and_register]))


def first_version(project: Any, model: str = "clicks") -> int:
    """Version 1 of ``model`` made by the pipeline itself (seed 0), set as production."""
    result = RETRAIN.run(project, params={"seed": 0, "model": model, "flip": False})
    assert result.status == "finished", result.error
    version = int(result.value("version"))
    Registry(project).set_alias(model, "production", version, actor="test", reason="first model")
    return version
