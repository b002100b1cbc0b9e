"""Triton's binary-tensor extension over REST, with the real tritonclient.http against `modelmill serve`:
``binary_data=True`` in and out on every datatype (BYTES on a string-input pipeline), equal to JSON."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from modelmill.config import load_settings
from modelmill.project import Project
from modelmill.registry import Field, Registry, Signature, clear_cache
from modelmill.registry.signature import infer_signature
from tests.serving.conftest import ServeProcess
from tests.serving.test_datatypes import _frame, pipeline

# Every numeric OIP datatype, one column each, with values the datatype holds exactly.
NUMERIC = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64"]
N = 6

pytestmark = pytest.mark.slow  # a real modelmill serve for the module (~25 s in all)


def _column(datatype: str, rng: np.random.Generator) -> np.ndarray:
    from tritonclient.utils import triton_to_np_dtype

    dtype = np.dtype(triton_to_np_dtype(datatype))
    if datatype == "BOOL":
        return rng.integers(0, 2, size=N).astype(bool)
    if dtype.kind == "u":
        return rng.integers(0, 200, size=N).astype(dtype)
    if dtype.kind == "i":
        return rng.integers(-100, 100, size=N).astype(dtype)
    return (rng.integers(-64, 64, size=N) / 8).astype(dtype)  # exact in FP16 too


def wide_model() -> Any:
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(5)
    X = rng.normal(size=(50, len(NUMERIC)))
    return LinearRegression().fit(X, X @ rng.normal(size=len(NUMERIC)))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    root = tmp_path_factory.mktemp("binary") / "proj"
    root.mkdir()
    (root / "modelmill.toml").write_text('home = ".modelmill"\n\n[serving]\nreload_interval_s = 0.25\n')
    clear_cache()
    project = Project(load_settings(cwd=root))
    reg = Registry(project)
    reg.register("wide", wide_model(), flavor="sklearn",
                 signature=Signature(inputs=[Field(f"c_{d.lower()}") for d in NUMERIC]))
    reg.register("cities", pipeline(), flavor="sklearn", signature=infer_signature(_frame(3, 1)))
    project.close()
    clear_cache()
    proc = ServeProcess(root, "--model", "wide@1", "--model", "cities@1")
    try:
        yield proc.wait_ready()
    finally:
        proc.stop()


@pytest.fixture
def client(served: ServeProcess) -> Iterator[Any]:
    import tritonclient.http as httpclient

    c = httpclient.InferenceServerClient(url=served.url.removeprefix("http://"))
    yield c
    c.close()


@pytest.mark.parametrize("binary_in", [True, False])
@pytest.mark.parametrize("binary_out", [True, False])
def test_every_numeric_datatype_in_binary_and_json(client: Any, binary_in: bool, binary_out: bool) -> None:
    import tritonclient.http as httpclient

    rng = np.random.default_rng(11)
    inputs, cols = [], []
    for d in NUMERIC:
        col = _column(d, rng)
        cols.append(col.astype(np.float64))
        t = httpclient.InferInput(f"c_{d.lower()}", [N], d)
        t.set_data_from_numpy(col, binary_data=binary_in)
        inputs.append(t)
    out = httpclient.InferRequestedOutput("output", binary_data=binary_out)
    result = client.infer("wide", inputs, outputs=[out])
    doc = result.get_response()
    assert ("binary_data_size" in doc["outputs"][0].get("parameters", {})) == binary_out
    assert ("data" in doc["outputs"][0]) == (not binary_out)
    expected = wide_model().predict(np.column_stack(cols))
    np.testing.assert_allclose(result.as_numpy("output"), expected, rtol=1e-12)


@pytest.mark.parametrize("datatype", NUMERIC)
def test_a_binary_size_that_does_not_fit_the_datatype_is_refused(client: Any, datatype: str) -> None:
    """One column sent binary with a byte count for another datatype: 400 naming that input."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    rng = np.random.default_rng(2)
    inputs = []
    for d in NUMERIC:
        col = _column(d, rng)
        wrong = d == datatype
        t = httpclient.InferInput(f"c_{d.lower()}", [N + 1 if wrong else N], d)
        t.set_data_from_numpy(np.concatenate([col, col[:1]]) if wrong else col, binary_data=True)
        if wrong:
            t._parameters["binary_data_size"] -= col.itemsize  # as sent: N + 1 values declared, N given
            t._raw_data = t._raw_data[: t._parameters["binary_data_size"]]
        inputs.append(t)
    with pytest.raises(InferenceServerException, match=rf"inputs\[{NUMERIC.index(datatype)}\]"
                                                       r"\.parameters\.binary_data_size"):
        client.infer("wide", inputs)


@pytest.mark.parametrize("binary_in", [True, False])
def test_bytes_tensors_from_tritonclient(client: Any, binary_in: bool) -> None:
    import pandas as pd
    import tritonclient.http as httpclient

    cities = np.array(["rome", "paris", "oslo", "Zürich", "tokyo"], dtype=object)
    x = np.array([0.1, -1.0, 2.0, 0.5, 1.5])
    n = np.array([0, 1, 2, 3, 4], dtype=np.int64)
    t_city = httpclient.InferInput("city", [5], "BYTES")
    t_city.set_data_from_numpy(np.array([c.encode() for c in cities], dtype=object), binary_data=binary_in)
    t_x = httpclient.InferInput("x", [5], "FP64")
    t_x.set_data_from_numpy(x, binary_data=binary_in)
    t_n = httpclient.InferInput("n", [5], "INT64")
    t_n.set_data_from_numpy(n, binary_data=binary_in)
    result = client.infer("cities", [t_city, t_x, t_n], outputs=[httpclient.InferRequestedOutput("output",
                                                                                                binary_data=True)])
    expected = pipeline().predict_proba(pd.DataFrame({"city": list(cities), "x": x, "n": n}))[:, 1]
    np.testing.assert_allclose(result.as_numpy("output"), expected, rtol=1e-12)
    meta = client.get_model_metadata("cities")
    assert [i["datatype"] for i in meta["inputs"]] == ["BYTES", "FP64", "INT64"]


def test_a_numeric_tensor_for_a_string_column_names_the_input(client: Any) -> None:
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    t_city = httpclient.InferInput("city", [1], "FP64")
    t_city.set_data_from_numpy(np.array([1.0]), binary_data=True)
    t_x = httpclient.InferInput("x", [1], "FP64")
    t_x.set_data_from_numpy(np.array([1.0]), binary_data=True)
    t_n = httpclient.InferInput("n", [1], "INT64")
    t_n.set_data_from_numpy(np.array([1]), binary_data=True)
    with pytest.raises(InferenceServerException, match=r"inputs\[0\]\.datatype.*must be BYTES"):
        client.infer("cities", [t_city, t_x, t_n])

