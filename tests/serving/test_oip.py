"""Open Inference Protocol v2: the real tritonclient against `modelmill serve`, and the protocol's edges in process."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from starlette.testclient import TestClient

from modelmill.serving import FunctionModel, Limits, ModelServer, ServerConfig, StaticSource, create_app
from tests.serving.conftest import COLUMNS, N_FEATURES, train_lr


def test_tritonclient_talks_to_modelmill_serve(project_dir: Path, serve: Any) -> None:
    import tritonclient.http as httpclient

    proc = serve(project_dir, "--model", "clf@production")
    client = httpclient.InferenceServerClient(url=proc.url.removeprefix("http://"))
    try:
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready("clf")
        meta = client.get_model_metadata("clf")
        assert meta["name"] == "clf" and meta["versions"] == ["1"]
        assert [i["name"] for i in meta["inputs"]] == COLUMNS
        assert client.get_server_metadata()["name"] == "modelmill"

        X = np.random.default_rng(3).normal(size=(5, N_FEATURES))
        expected = train_lr(0).predict_proba(X)[:, 1]
        # one FP64 tensor per column, sent as binary (tritonclient's default), binary output
        inputs = []
        for i, c in enumerate(COLUMNS):
            t = httpclient.InferInput(c, [5], "FP64")
            t.set_data_from_numpy(X[:, i].copy())
            inputs.append(t)
        result = client.infer("clf", inputs, request_id="abc")
        np.testing.assert_allclose(result.as_numpy("output"), expected, rtol=1e-12)
        assert result.get_response()["id"] == "abc"
        assert result.get_response()["model_version"] == "1"

        # one [n, k] FP32 matrix as JSON, JSON output, pinned version
        m = httpclient.InferInput("input", [5, N_FEATURES], "FP32")
        m.set_data_from_numpy(X.astype(np.float32), binary_data=False)
        out = httpclient.InferRequestedOutput("output", binary_data=False)
        result = client.infer("clf", [m], model_version="1", outputs=[out])
        np.testing.assert_allclose(result.as_numpy("output"), train_lr(0).predict_proba(
            X.astype(np.float32).astype(np.float64))[:, 1], rtol=1e-12)

        with pytest.raises(Exception, match="not found"):
            client.get_model_metadata("nope")
        with pytest.raises(Exception, match="versions being served: 1"):
            client.infer("clf", inputs, model_version="2")
    finally:
        client.close()


def _app(model: FunctionModel, **config: Any) -> TestClient:
    server = ModelServer(StaticSource([model], aliases={f"{model.name}@production": model.version}),
                         config=ServerConfig(models=[f"{model.name}@production"], log_predictions=False, **config))
    return TestClient(create_app(server))


@pytest.fixture
def client() -> Iterator[TestClient]:
    model = FunctionModel("sum", 3, ["a", "b"], lambda X: X.sum(axis=1))
    with _app(model, limits=Limits(max_body_bytes=4096, max_batch_rows=10)) as c:
        yield c


def test_health_and_metadata(client: TestClient) -> None:
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    assert client.get("/v2").json()["extensions"] == ["binary_tensor_data", "model_repository",
                                                      "model_configuration", "statistics"]
    meta = client.get("/v2/models/sum/versions/3").json()
    assert meta["versions"] == ["3"]
    assert meta["inputs"] == [{"name": "a", "datatype": "FP64", "shape": [-1]},
                              {"name": "b", "datatype": "FP64", "shape": [-1]}]
    assert client.get("/v2/models/sum/ready").json() == {"name": "sum", "ready": True}
    assert client.get("/v2/models/sum/versions/3/ready").status_code == 200
    assert client.get("/v2/models/sum/versions/4/ready").status_code == 404
    assert client.get("/v2/models/nope/ready").status_code == 404


def test_infer_named_columns_any_order_and_nested_data(client: TestClient) -> None:
    body = {"id": "r1", "inputs": [
        {"name": "b", "shape": [2, 1], "datatype": "INT64", "data": [[10], [20]]},
        {"name": "a", "shape": [2], "datatype": "FP32", "data": [1, 2]},
    ]}
    r = client.post("/v2/models/sum/infer", json=body)
    assert r.status_code == 200, r.text
    assert r.json() == {"model_name": "sum", "model_version": "3", "id": "r1",
                        "outputs": [{"name": "output", "datatype": "FP64", "shape": [2], "data": [11.0, 22.0]}]}


@pytest.mark.parametrize(("body", "status", "field"), [
    ({"inputs": []}, 400, "inputs"),
    ({}, 400, "body.inputs"),
    ({"inputs": [{"name": "a", "shape": [1], "datatype": "FP64", "data": [1]}]}, 400, "misses b"),
    ({"inputs": [{"name": "z", "shape": [1], "datatype": "FP64", "data": [1]}]}, 400, "inputs[0].name"),
    ({"inputs": [{"name": "a", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}, 400, "inputs[0].datatype"),
    ({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [1, "x"]}]}, 400, "inputs[0].data"),
    ({"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP64", "data": [1, 2]}]}, 400, "has 2 values"),
    ({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP64", "data": [1, 2, 3]}]}, 400, "[n, 2]"),
    ({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [1, 2]}],
      "outputs": [{"name": "nope"}]}, 400, "outputs[0].name"),
    ({"inputs": [{"name": "x", "shape": [11, 2], "datatype": "FP64", "data": [1] * 22}]}, 413, "limit is 10"),
])
def test_infer_errors_name_the_field(client: TestClient, body: dict[str, Any], status: int, field: str) -> None:
    r = client.post("/v2/models/sum/infer", json=body)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error"}
    assert field in r.json()["error"]


def test_infer_refuses_malformed_json_nan_unknown_models_and_big_bodies(client: TestClient) -> None:
    r = client.post("/v2/models/sum/infer", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    body = b'{"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [1, NaN]}]}'
    assert client.post("/v2/models/sum/infer", content=body).status_code == 400
    r = client.post("/v2/models/nope/infer", json={"inputs": []})
    assert r.status_code == 404 and "served models are: sum" in r.json()["error"]
    r = client.post("/v2/models/sum/versions/x/infer", json={"inputs": []})
    assert r.status_code == 400 and r.json()["error"].startswith("version")
    big = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [1.0, 2.0]}], "pad": "x" * 5000}
    r = client.post("/v2/models/sum/infer", json=big)
    assert r.status_code == 413 and "4096 bytes" in r.json()["error"]
    r = client.get("/nowhere")
    assert r.status_code == 404 and "error" in r.json()
    assert client.get("/v2/models/sum/infer").status_code == 405


def test_binary_tensors_in_and_out(client: TestClient) -> None:
    a = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    b = np.array([0.5, 0.25, 0.125], dtype="<f8")
    header = (b'{"inputs": [{"name": "a", "shape": [3], "datatype": "FP32", "parameters": {"binary_data_size": 12}},'
              b' {"name": "b", "shape": [3], "datatype": "FP64", "parameters": {"binary_data_size": 24}}],'
              b' "parameters": {"binary_data_output": true}}')
    r = client.post("/v2/models/sum/infer", content=header + a.tobytes() + b.tobytes(),
                    headers={"Inference-Header-Content-Length": str(len(header))})
    assert r.status_code == 200, r.text
    n = int(r.headers["inference-header-content-length"])
    assert r.headers["content-type"] == "application/octet-stream"
    doc = __import__("json").loads(r.content[:n])
    assert doc["outputs"][0]["parameters"] == {"binary_data_size": 24}
    np.testing.assert_array_equal(np.frombuffer(r.content[n:], "<f8"), a + b)
    # a binary size that does not match the shape is refused
    bad = header.replace(b'"binary_data_size": 24', b'"binary_data_size": 16')
    r = client.post("/v2/models/sum/infer", content=bad + a.tobytes() + b.tobytes(),
                    headers={"Inference-Header-Content-Length": str(len(bad))})
    assert r.status_code == 400 and "binary_data_size" in r.json()["error"]


def test_request_timeout_answers_408() -> None:
    def slow(X: np.ndarray) -> np.ndarray:
        time.sleep(0.5)
        return X[:, 0]

    model = FunctionModel("slow", 1, ["x"], slow)
    with _app(model, offload=True, limits=Limits(request_timeout_s=0.1)) as c:
        r = c.post("/v2/models/slow/infer",
                   json={"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [1]}]})
    assert r.status_code == 408
    assert "longer than 0.1 s" in r.json()["error"]


def test_model_that_raises_answers_422_naming_the_model() -> None:
    def picky(X: np.ndarray) -> np.ndarray:
        if (X < 0).any():
            raise ValueError("negative values are not allowed")
        return X[:, 0]

    with _app(FunctionModel("picky", 2, ["x"], picky)) as c:
        r = c.post("/v2/models/picky/infer",
                   json={"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [-1]}]})
    assert r.status_code == 422
    assert "picky version 2" in r.json()["error"] and "negative" in r.json()["error"]
