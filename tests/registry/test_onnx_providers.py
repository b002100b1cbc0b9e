"""``[registry] onnx_providers``: the onnxruntime execution providers an ONNX model loads on (CUDA, TensorRT when
this onnxruntime has them), falling back to the CPU with the reason logged. This machine's onnxruntime is the CPU
build, so a CUDA request must fall back: the model still loads, scores as on the CPU, and says so."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from sklearn.linear_model import LogisticRegression

from modelmill.config import Settings
from modelmill.errors import ConfigError
from modelmill.project import Project
from modelmill.registry import Field, Registry, Signature, clear_cache, export_onnx
from modelmill.registry.flavors import onnx_providers

SIGNATURE = Signature(inputs=[Field(f"f{i}", "float64") for i in range(4)], outputs=[Field("probability")])


def _project(tmp_path: Path, registry: dict[str, Any]) -> Project:
    settings = Settings.defaults(home=tmp_path / ".modelmill")
    return Project(dataclasses.replace(settings, extra={"registry": registry}))


def _models(project: Project) -> tuple[Any, Any, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 4))
    y = (X @ np.array([1.0, -0.5, 0.3, 0.0]) > 0).astype(int)
    registry = Registry(project)
    native = registry.register("m", LogisticRegression().fit(X, y), flavor="sklearn", signature=SIGNATURE)
    return native, export_onnx(registry, native), X


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="a CUDA onnxruntime: "
                    "the fallback is what this test shows (the GPU check runs on a GPU machine)")
def test_a_cuda_request_without_cuda_falls_back_to_the_cpu_and_says_why(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    clear_cache()
    project = _project(tmp_path, {"onnx_providers": ["cuda", "cpu"]})
    try:
        native, onnx_mv, X = _models(project)
        with caplog.at_level(logging.WARNING, logger="modelmill.registry"):
            loaded = Registry(project).load(onnx_mv)
        assert loaded.options["providers"] == ["CPUExecutionProvider"]
        assert any("CUDAExecutionProvider" in r.getMessage() and "runs on the CPU" in r.getMessage()
                   for r in caplog.records)
        np.testing.assert_allclose(loaded.predict(X), Registry(project).load(native).predict(X), atol=1e-5)
        # a flavour without execution providers ignores the setting
        assert Registry(project).load(native).flavor == "sklearn"
    finally:
        project.close()
        clear_cache()


def test_providers_are_tried_in_order_and_the_cpu_is_always_last() -> None:
    have = ort.get_available_providers()
    assert onnx_providers(None) == onnx_providers([]) == ["CPUExecutionProvider"]
    assert onnx_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert onnx_providers(["tensorrt", "cuda"]) == [
        *(p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in have), "CPUExecutionProvider"]


@pytest.mark.parametrize("bad", [["gpu2"], "cuda", [1]])
def test_an_unknown_or_malformed_provider_list_names_the_key(tmp_path: Path, bad: Any) -> None:
    clear_cache()
    with _project(tmp_path, {}) as plain:
        _, onnx_mv, _ = _models(plain)
    clear_cache()
    project = _project(tmp_path, {"onnx_providers": bad})  # the same home, now with the bad setting
    try:
        with pytest.raises(ConfigError) as err:
            Registry(project).load(onnx_mv)
        assert err.value.key == "registry.onnx_providers"
    finally:
        project.close()
        clear_cache()
