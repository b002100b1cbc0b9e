"""The gate's calibration checks: expected calibration error and log loss beside AUC; no data fails."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LinearRegression, LogisticRegression

from modelmill.errors import ConfigError, InputError
from modelmill.loop.config import parse_models
from modelmill.registry import Registry, Signature, gate
from modelmill.registry.evaluate import score


def _frame(X: np.ndarray, y: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(X, columns=[f"f{i}" for i in range(X.shape[1])]).assign(outcome=y)


def _timid(X: np.ndarray, y: np.ndarray) -> LogisticRegression:
    """Fitted on X / 10 and served X: the same ranking, probabilities pushed far from the truth."""
    return LogisticRegression().fit(X * 10, y)


def test_a_candidate_over_max_calibration_error_is_rejected(sqlite_registry: Registry, classification,
                                                            signature6: Signature) -> None:
    X, y, Xt, yt = classification
    sqlite_registry.register("m", LogisticRegression().fit(X, y), flavor="sklearn", signature=signature6)
    sqlite_registry.register("m", _timid(X, y), flavor="sklearn", signature=signature6)
    data = _frame(Xt, yt)
    good = gate(sqlite_registry, "m@1", data=data, label="outcome", minimum={"auc": 0.7},
                max_calibration_error=0.05, record=False)
    bad = gate(sqlite_registry, "m@2", data=data, label="outcome", minimum={"auc": 0.7},
               max_calibration_error=0.05, record=False)
    assert good.accepted and not bad.accepted
    # The ranking is as good (AUC passes); the calibration check alone rejects it.
    auc, ece = ({c.metric: c for c in bad.checks}[m] for m in ("auc", "calibration_error"))
    assert auc.status == "pass" and ece.status == "fail" and ece.rule == "max"
    assert ece.value is not None and ece.value > 0.05
    assert ece.value == pytest.approx(bad.metrics["calibration_error"])
    assert "calibration_error" in bad.reason and "> maximum 0.0500" in bad.reason
    assert bad.metrics["calibration_error"] > 2 * good.metrics["calibration_error"]


def test_log_loss_increase_against_production(sqlite_registry: Registry, classification,
                                              signature6: Signature) -> None:
    X, y, Xt, yt = classification
    sqlite_registry.register("m", LogisticRegression().fit(X, y), flavor="sklearn", signature=signature6)
    sqlite_registry.set_alias("m", "production", 1, actor="test")
    sqlite_registry.register("m", _timid(X, y), flavor="sklearn", signature=signature6)
    result = gate(sqlite_registry, "m@2", data=_frame(Xt, yt), label="outcome", against="m@production",
                  max_regression={"auc": 0.01}, max_log_loss_increase=0.01, max_log_loss=5.0, record=False)
    checks = {(c.metric, c.rule): c for c in result.checks}
    loss = checks[("logloss", "max_regression")]
    assert loss.status == "fail" and loss.value - loss.baseline > 0.01  # type: ignore[operator]
    assert checks[("logloss", "max")].status == "pass" and checks[("auc", "max_regression")].passed
    assert not result.accepted


def test_a_metric_that_cannot_be_computed_is_no_data_and_fails(sqlite_registry: Registry, classification,
                                                               signature6: Signature) -> None:
    X, y, Xt, yt = classification
    # A scorer declared binary whose outputs are not probabilities (a regressor's): their calibration error
    # and log loss do not exist. Undeclared, a regressor is gated as regression (tests/registry/test_gate_tasks.py).
    sqlite_registry.register("m", LinearRegression().fit(X, y * 10.0 - 3.0), flavor="sklearn",
                             signature=signature6, tags={"task": "binary"})
    result = gate(sqlite_registry, "m@1", data=_frame(Xt, yt), label="outcome", minimum={"auc": 0.6},
                  max_calibration_error=0.5, record=True)
    checks = {c.metric: c for c in result.checks}
    assert checks["auc"].status == "pass"  # ranking is defined for any score
    assert checks["calibration_error"].status == "no_data" and checks["calibration_error"].value is None
    assert not checks["calibration_error"].passed and not result.accepted
    assert "calibration_error" not in result.metrics and "no data" in result.reason
    assert sqlite_registry.get("m", 1).gate["accepted"] is False  # recorded (JSON without a NaN)


def test_a_baseline_without_the_metric_is_no_data(sqlite_registry: Registry, classification,
                                                  signature6: Signature) -> None:
    X, y, Xt, yt = classification
    sqlite_registry.register("m", LinearRegression().fit(X, y * 10.0 - 3.0), flavor="sklearn",
                             signature=signature6, tags={"task": "binary"})  # a scorer: not probabilities
    sqlite_registry.set_alias("m", "production", 1, actor="test")
    sqlite_registry.register("m", LogisticRegression().fit(X, y), flavor="sklearn", signature=signature6)
    result = gate(sqlite_registry, "m@2", data=_frame(Xt, yt), label="outcome", against="m@production",
                  max_log_loss_increase=0.01, record=False)
    (check,) = result.checks
    assert check.status == "no_data" and check.value is not None and check.baseline is None
    assert not result.accepted and "m@1" in check.message


def test_named_bounds_are_validated(sqlite_registry: Registry, classification, signature6: Signature) -> None:
    X, y, Xt, yt = classification
    sqlite_registry.register("m", LogisticRegression().fit(X, y), flavor="sklearn", signature=signature6)
    with pytest.raises(InputError) as info:
        gate(sqlite_registry, "m@1", data=_frame(Xt, yt), label="outcome", max_calibration_error=-1.0)
    assert info.value.field == "max_calibration_error"
    with pytest.raises(InputError, match="conflicts"):
        gate(sqlite_registry, "m@1", data=_frame(Xt, yt), label="outcome", maximum={"logloss": 0.5},
             max_log_loss=0.4)


def test_calibration_error_is_the_monitors_measure() -> None:
    from modelmill.monitoring.performance import classification_metrics

    rng = np.random.default_rng(0)
    p = rng.random(500)
    y = (rng.random(500) < p ** 2).astype(float)
    assert score("calibration_error", y, p) == classification_metrics(y, p)["calibration_error"] > 0.1
    assert np.isnan(score("calibration_error", y, p * 3))  # not probabilities


def test_loop_config_takes_the_named_calibration_keys() -> None:
    base = {"pipeline": {"function": "p:q"}}
    m = parse_models({"m": {**base, "gate": {"min": {"auc": 0.6}, "max_calibration_error": 0.05,
                                             "max_log_loss": 0.7, "max_log_loss_increase": 0.01}}}).model("m")
    assert dict(m.gate.maximum) == {"calibration_error": 0.05, "logloss": 0.7}
    assert dict(m.gate.max_regression) == {"logloss": 0.01}
    # a named bound alone is a threshold
    only = parse_models({"m": {**base, "gate": {"max_log_loss_increase": 0.02}}}).model("m")
    assert dict(only.gate.max_regression) == {"logloss": 0.02}
    with pytest.raises(ConfigError, match=r"models\.m\.gate\.max_calibration_error"):
        parse_models({"m": {**base, "gate": {"max_calibration_error": "low"}}})
    with pytest.raises(ConfigError, match=r"models\.m\.gate\.max_log_loss"):
        parse_models({"m": {**base, "gate": {"max": {"logloss": 0.5}, "max_log_loss": 0.6}}})


def test_the_loop_gate_rejects_a_retrained_version_over_its_calibration_bound(tmp_path: Path) -> None:
    from modelmill.loop import Lease, Loop
    from tests.loop import pipelines
    from tests.loop.helpers import config, log_traffic, open_project

    gate_table = {"label": "clicked", "min": {"auc": 0.6}, "max_regression": {"auc": 0.05},
                  "max_calibration_error": 0.0001, "max_log_loss_increase": 0.5}
    with open_project(tmp_path / "home") as project:
        pipelines.first_version(project)
        log_traffic(project)
        out = Loop(project, config(gate=gate_table), lease=Lease(project.db, holder="a")).round()
        (decision,) = out["models"]["clicks"]["decisions"]
        assert decision["status"] == "rejected" and decision["version"] == 2
        checks = {(c["metric"], c["rule"]): c for c in decision["gate"]["checks"]}
        assert checks[("calibration_error", "max")]["status"] == "fail"
        assert checks[("auc", "min")]["status"] == "pass"
        assert checks[("logloss", "max_regression")]["status"] == "pass"  # judged against clicks@production
        assert "calibration_error" in decision["reason"]
        assert Registry(project).aliases("clicks") == {"production": 1}
