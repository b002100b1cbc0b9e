"""The calibration and serving how-tos (docs/howto/calibration.md, serving-models.md), each run as written.

Each page runs once in a temporary folder (a module-scoped fixture); the tests read the JSON its commands
wrote and check it against the page's own data: the calibrated version's calibration error against the
uncalibrated one's on the same rows, every gate check's status against its value, threshold and baseline,
and the decision against the checks; a server's answers for a multiclass, a regression, a mixed-dtype
pipeline and a ``python``-flavour model against the classes, probabilities and values the same models give
locally. This module imports nothing from modelmill.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tests.tutorials.runner import read_json as _json
from tests.tutorials.runner import run_howto

_run = functools.partial(run_howto, timeout=900)

# each page trains two to six models and runs CLI commands (1 to 5 min on a shared machine): .ci/run runs them
pytestmark = pytest.mark.slow


def _implied(check: dict[str, Any]) -> str:
    """The status a check's own numbers imply: ``min``/``max`` against the threshold, ``max_regression``
    against the baseline (lower is worse for ``auc``, higher for ``logloss``)."""
    value, threshold = check["value"], check["threshold"]
    if value is None or (check["rule"] == "max_regression" and check.get("baseline") is None):
        return "no_data"
    if check["rule"] == "min":
        ok = value >= threshold
    elif check["rule"] == "max":
        ok = value <= threshold
    else:
        worse = check["baseline"] - value if check["metric"] == "auc" else value - check["baseline"]
        ok = worse <= threshold + 1e-12
    return "pass" if ok else "fail"


# --- calibration.md ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def calibration(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run("calibration.md", tmp_path_factory.mktemp("calibration"))


def test_the_calibration_step_lowers_the_calibration_error_on_the_same_rows(calibration: Path) -> None:
    w = calibration
    raw, cal = _json(w, "uncalibrated.json"), _json(w, "calibrated.json")
    assert (raw["model_version"], cal["model_version"]) == ("churn@1", "churn@2")
    assert "calibrate" not in raw["params"] and cal["params"]["calibrate"] == "sigmoid"
    # the over-fitted booster is over-confident; the sigmoid map brings it to a fraction of that
    assert raw["metrics"]["calibration_error"] > 0.08
    assert cal["metrics"]["calibration_error"] < raw["metrics"]["calibration_error"] / 2
    assert cal["metrics"]["log_loss"] < raw["metrics"]["log_loss"]
    # in Python: the uncalibrated metrics are the wrapped model's on the same rows, and a sigmoid keeps its AUC
    py = _json(w, "python.json")
    assert py["model"] == "CalibratedClassifierCV" and py["flavor"] == "sklearn"
    assert py["metrics"]["calibration_error"] < py["uncalibrated"]["calibration_error"] / 2
    assert py["metrics"]["log_loss"] < py["uncalibrated"]["log_loss"]
    assert math.isclose(py["metrics"]["auc"], py["uncalibrated"]["auc"], abs_tol=1e-9)
    # the CLI and the Python call train the same model on the same split
    assert math.isclose(py["metrics"]["calibration_error"], cal["metrics"]["calibration_error"], rel_tol=1e-9)
    assert set(py["refused"]) == {"torch-mlp sigmoid", "sklearn-hgb platt"}
    assert all(r["field"] == "calibrate" for r in py["refused"].values())
    assert "isotonic" in py["refused"]["sklearn-hgb platt"]["message"]


def test_the_gate_rejects_the_uncalibrated_version_on_its_calibration_error(calibration: Path) -> None:
    g = _json(calibration, "gate_uncalibrated.json")
    assert g["candidate"] == "churn@1" and g["against"] is None and g["rows"] == 2000
    checks = {(c["metric"], c["rule"]): c for c in g["checks"]}
    assert set(checks) == {("auc", "min"), ("calibration_error", "max")}
    assert all(c["status"] == _implied(c) for c in checks.values())
    assert checks["auc", "min"]["status"] == "pass"  # it ranks well ...
    assert checks["calibration_error", "max"]["status"] == "fail"  # ... and its probabilities are off
    assert not g["accepted"] and g["decision"] == "reject"


def test_the_gate_decides_what_the_thresholds_imply_from_the_cli_and_from_python(calibration: Path) -> None:
    w = calibration
    g = _json(w, "gate.json")
    assert (g["candidate"], g["against"], g["rows"]) == ("churn@2", "churn@1", 2000)
    checks = {(c["metric"], c["rule"]): c for c in g["checks"]}
    assert set(checks) == {("auc", "min"), ("auc", "max_regression"), ("calibration_error", "max"),
                           ("logloss", "max_regression")}
    expected = {("auc", "min"): 0.70, ("auc", "max_regression"): 0.005, ("calibration_error", "max"): 0.05,
                ("logloss", "max_regression"): 0.01}
    assert {k: c["threshold"] for k, c in checks.items()} == expected
    for key, check in checks.items():
        assert check["status"] == _implied(check), key
    assert g["accepted"] == all(c["status"] == "pass" for c in checks.values())
    assert g["decision"] == ("accept" if g["accepted"] else "reject")
    # on this data every check passes: calibration cost at most 0.005 of AUC and cut the log loss
    assert g["accepted"], g["reason"]
    # the baselines are version 1's own holdout metrics, which the first gate measured on the same rows
    first = _json(w, "gate_uncalibrated.json")["metrics"]
    assert math.isclose(checks["auc", "max_regression"]["baseline"], first["auc"], rel_tol=1e-12)
    assert checks["calibration_error", "max"]["value"] < first["calibration_error"] / 2
    # the toml table's named keys, passed to gate() in Python, are the same checks with the same outcome
    py = _json(w, "gate_python.json")
    assert py["accepted"] == g["accepted"]
    assert sorted((c["metric"], c["rule"], c["threshold"], c["status"]) for c in py["checks"]) == sorted(
        (c["metric"], c["rule"], c["threshold"], c["status"]) for c in g["checks"])
    assert py["metrics"] == pytest.approx(g["metrics"], rel=1e-12)


# --- serving-models.md ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def serving(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run("serving-models.md", tmp_path_factory.mktemp("serving"))


def _outputs(answer: dict[str, Any]) -> dict[str, Any]:
    return {o["name"]: o for o in answer["outputs"]}


def test_multiclass_models_answer_their_classes_and_probabilities_that_sum_to_one(serving: Path) -> None:
    w = serving
    kinds = sorted(pd.read_csv(w / "animals.csv")["kind"].unique())
    assert kinds == ["cat", "dog", "fish"]
    assert _json(w, "animals-xgb-shown.json")["flavor"] == "xgboost"
    for name in ("animals", "animals-xgb"):
        meta = _json(w, f"{name}-meta.json")
        assert meta["task"] == "multiclass" and meta["classes"] == kinds, name
        out = _outputs(_json(w, f"{name}-infer.json"))
        probs = np.asarray(out["output"]["data"])
        assert out["output"]["shape"] == [3, 3] and probs.shape == (3, 3)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
        # the label is the most probable class, and the three asked animals are a fish, a cat and a dog
        assert out["label"]["data"] == [kinds[i] for i in probs.argmax(axis=1)] == ["fish", "cat", "dog"]
    label_only = _json(w, "animals-label.json")
    assert [o["name"] for o in label_only["outputs"]] == ["label"] and label_only["outputs"][0]["data"] == ["dog"]
    # the feature route: the class name, and the same probabilities as the OIP answer for that animal
    routed = _json(w, "animals-predict.json")
    assert routed["prediction"] == "dog" and routed["model"] == "animals" and routed["version"] == 1
    third = np.asarray(_outputs(_json(w, "animals-infer.json"))["output"]["data"])[2]
    assert [routed["probabilities"][k] for k in kinds] == pytest.approx(third.tolist(), rel=1e-12)


def test_the_regression_model_answers_what_predict_batch_computes_locally(serving: Path) -> None:
    w = serving
    assert _json(w, "weight.json")["trainer"] == "catboost" and set(_json(w, "weight.json")["metrics"]) == {
        "rmse", "mae"}
    assert _json(w, "weight-shown.json")["flavor"] == "catboost"
    assert _json(w, "weight-meta.json")["task"] == "regression"
    served = _outputs(_json(w, "weight-infer.json"))["output"]
    local = pd.read_parquet(w / "weight-local.parquet")["prediction"].to_numpy()
    assert served["shape"] == [3]
    np.testing.assert_allclose(served["data"], local, rtol=1e-9)
    assert _json(w, "weight-predict.json")["prediction"] == pytest.approx(local[2], rel=1e-9)
    # weight grows with the animal's size: fish < cat < dog
    assert local[0] < local[1] < local[2]


def test_a_mixed_dtype_pipeline_serves_strings_over_json_binary_and_the_feature_route(serving: Path) -> None:
    w = serving
    meta = _json(w, "cities-meta.json")
    assert [(i["name"], i["datatype"]) for i in meta["inputs"]] == [("city", "BYTES"), ("x", "FP64"), ("n", "INT64")]
    local = _json(w, "cities-local.json")
    np.testing.assert_allclose(_outputs(_json(w, "cities-infer.json"))["output"]["data"], local, rtol=1e-9)
    np.testing.assert_allclose(_json(w, "cities-triton.json"), local, rtol=1e-9)  # tritonclient, binary tensors
    assert _json(w, "cities-predict.json")["prediction"] == pytest.approx(local[0], rel=1e-9)
    assert (w / "refused-int8.status").read_text().strip() == "400"
    assert "inputs[2].data" in _json(w, "refused-int8.json")["error"]
    assert (w / "refused-bytes.status").read_text().strip() == "400"
    assert "inputs[0].datatype" in _json(w, "refused-bytes.json")["error"]
    config = _json(w, "cities-config.json")
    assert [i["data_type"] for i in config["input"]] == ["TYPE_STRING", "TYPE_FP64", "TYPE_INT64"]
    assert config["parameters"]["flavor"]["string_value"] == "sklearn"
    stats = _json(w, "cities-stats.json")["model_stats"][0]["inference_stats"]
    assert stats["success"]["count"] == 3 and stats["fail"]["count"] == 2  # three answered, two refused
    index = {m["name"]: m["state"] for m in _json(w, "index.json")}
    assert index == dict.fromkeys(("animals", "animals-xgb", "cities", "pricer", "weight"), "READY")


def test_the_python_flavour_runs_the_bundled_class_on_its_bundled_table(serving: Path) -> None:
    w = serving
    weights = json.loads((w / "tables" / "weights.json").read_text())
    expected = [min(max(weights.get(c.strip().lower(), 0.0) * x, 0.0), 10.0)
                for c, x in ((" Rome", 1.5), ("OSLO", 4.0), ("lima", 2.0))]
    assert _outputs(_json(w, "pricer-infer.json"))["output"]["data"] == pytest.approx(expected) == [3.0, 10.0, 0.0]


def test_a_lazy_server_loads_a_model_on_its_first_request(serving: Path) -> None:
    w = serving
    assert (w / "before.status").read_text().strip() == "400"
    before = _json(w, "before.json")
    assert before["ready"] is False and before["reason"].startswith("not loaded yet")
    assert (w / "after.status").read_text().strip() == "200" and _json(w, "after.json")["ready"] is True
    assert _json(w, "lazy-infer.json")["outputs"] == _json(w, "weight-infer.json")["outputs"]
