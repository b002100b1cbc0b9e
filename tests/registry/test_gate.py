"""The gate's Python API: thresholds, baselines, clear errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from modelmill.errors import InputError
from modelmill.registry import Registry, Signature, gate, parse_thresholds


def _frame(X: np.ndarray, y: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(X, columns=[f"f{i}" for i in range(X.shape[1])]).assign(outcome=y)


def test_first_model_has_no_baseline_yet(sqlite_registry: Registry, classification, signature6: Signature) -> None:
    X, y, Xt, yt = classification
    sqlite_registry.register("m", LogisticRegression().fit(X, y), flavor="sklearn", signature=signature6)
    result = gate(sqlite_registry, "m@1", data=_frame(Xt, yt), label="outcome", against="m@production",
                  minimum={"auc": 0.7}, maximum=["logloss=0.6"], max_regression={"auc": 0.005})
    assert result.accepted and result.against is None and result.baseline_metrics is None
    assert "m@production is not set; regression checks skipped" in result.reason
    assert [c.rule for c in result.checks] == ["min", "max"] and result.rows == len(yt)
    assert sqlite_registry.get("m", 1).gate["accepted"] is True


def test_regression_is_judged_in_the_metric_direction(sqlite_registry: Registry, classification,
                                                      signature6: Signature) -> None:
    X, y, Xt, yt = classification
    sqlite_registry.register("m", LogisticRegression().fit(X, y), flavor="sklearn", signature=signature6)
    sqlite_registry.register("m", LogisticRegression(C=1e-4).fit(X, y), flavor="sklearn", signature=signature6)
    result = gate(sqlite_registry, "m@2", data=_frame(Xt, yt), label="outcome", against="m@1",
                  max_regression={"logloss": 0.01}, record=False)
    (check,) = result.checks
    assert check.value > check.baseline + 0.01 and not result.accepted  # a higher loss is a regression
    assert "worse by" in result.reason and sqlite_registry.get("m", 2).gate is None


def test_bad_input_names_the_option(sqlite_registry: Registry, classification, signature6: Signature) -> None:
    X, y, Xt, yt = classification
    sqlite_registry.register("m", LogisticRegression().fit(X, y), flavor="sklearn", signature=signature6)
    with pytest.raises(InputError) as info:
        parse_thresholds(["auc>0.7"], "--min")
    assert info.value.field == "--min"
    with pytest.raises(InputError, match="metric"):
        parse_thresholds(["f1=0.7"], "--min")
    with pytest.raises(InputError, match="at least one threshold"):
        gate(sqlite_registry, "m@1", data=_frame(Xt, yt), label="outcome")
    with pytest.raises(InputError, match="f5"):
        gate(sqlite_registry, "m@1", data=_frame(Xt[:, :5], yt), label="outcome", minimum={"auc": 0.5})
    with pytest.raises(InputError, match="label"):
        gate(sqlite_registry, "m@1", data=_frame(Xt, yt), minimum={"auc": 0.5})
