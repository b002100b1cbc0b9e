"""OIP over gRPC: the real ``tritonclient.grpc`` against ``modelmill serve --grpc-port``, answers equal to REST's."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2 as tpb  # tritonclient's own copy of the messages
from tritonclient.utils import InferenceServerException

from tests.serving.conftest import (
    COLUMNS,
    N_FEATURES,
    ServeProcess,
    free_port,
    infer_body,
    make_project,
    open_project_at,
)


class Served:
    def __init__(self, root: Path, proc: ServeProcess, grpc_port: int) -> None:
        self.root, self.proc, self.grpc_port = root, proc, grpc_port
        self.client = grpcclient.InferenceServerClient(url=f"127.0.0.1:{grpc_port}")

    def rest(self, X: np.ndarray, **extra: Any) -> np.ndarray:
        r = httpx.post(f"{self.proc.url}/v2/models/clf/infer", json={**infer_body(X), **extra}, timeout=10)
        assert r.status_code == 200, r.text
        return np.asarray(r.json()["outputs"][0]["data"])


def _start(root: Path, *args: str) -> tuple[ServeProcess, int]:
    port = free_port()
    proc = ServeProcess(root, "--model", "clf@production", "--grpc-port", str(port), *args)
    try:
        proc.wait_ready()
    except Exception:
        proc.stop()
        raise
    return proc, port


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = make_project(tmp_path_factory.mktemp("grpc") / "proj")
    proc, port = _start(root)
    s = Served(root, proc, port)
    yield s
    s.client.close()
    proc.stop()


def _inputs(X: np.ndarray) -> list[Any]:
    """One FP64 tensor per column; tritonclient sends them in raw_input_contents."""
    inputs = []
    for i, c in enumerate(COLUMNS):
        t = grpcclient.InferInput(c, [len(X)], "FP64")
        t.set_data_from_numpy(np.ascontiguousarray(X[:, i]))
        inputs.append(t)
    return inputs


def _status(exc: pytest.ExceptionInfo[InferenceServerException]) -> str:
    return str(exc.value.status())


def test_health_and_metadata(served: Served) -> None:
    c = served.client
    assert c.is_server_live() and c.is_server_ready()
    assert c.is_model_ready("clf") and c.is_model_ready("clf", "1")
    meta = c.get_server_metadata()
    assert meta.name == "modelmill"
    model = c.get_model_metadata("clf")
    assert model.name == "clf" and list(model.versions) == ["1"] and model.platform == "modelmill"
    assert [(t.name, t.datatype, list(t.shape)) for t in model.inputs] == [(col, "FP64", [-1]) for col in COLUMNS]
    assert [(t.name, t.datatype, list(t.shape)) for t in model.outputs] == [("output", "FP64", [-1])]
    # the same document as REST's
    rest = httpx.get(f"{served.proc.url}/v2/models/clf").json()
    assert [t["name"] for t in rest["inputs"]] == [t.name for t in model.inputs]


def test_infer_equals_rest_and_the_id_is_the_logged_request_id(served: Served) -> None:
    X = np.random.default_rng(7).normal(size=(6, N_FEATURES))
    result = served.client.infer("clf", _inputs(X), request_id="grpc-order-1", headers={"x-routing-key": "user-9"})
    got = result.as_numpy("output")
    assert got.dtype == np.float64 and got.shape == (6,)
    np.testing.assert_allclose(got, served.rest(X), rtol=0, atol=1e-12)
    response = result.get_response()
    assert response.id == "grpc-order-1" and response.model_name == "clf" and response.model_version == "1"
    # a pinned version and one [n, k] FP32 matrix
    m = grpcclient.InferInput("input", [6, N_FEATURES], "FP32")
    m.set_data_from_numpy(X.astype(np.float32))
    pinned = served.client.infer("clf", [m], model_version="1", outputs=[grpcclient.InferRequestedOutput("output")])
    np.testing.assert_allclose(pinned.as_numpy("output"), served.rest(X.astype(np.float32).astype(np.float64)),
                               rtol=0, atol=1e-12)

    from modelmill.store.feedback import Feedback

    project = open_project_at(served.root)
    try:
        deadline = time.monotonic() + 30
        rows = None
        while time.monotonic() < deadline:
            log = Feedback(project.offline).routed("clf", since=0, labelled=False, answered=True)
            rows = log[log["request_id"].astype(str).str.startswith("grpc-order-1")] if len(log) else log
            if len(rows) == 6:
                break
            time.sleep(0.2)
        assert rows is not None and len(rows) == 6, rows
        assert set(rows["routing_key"]) == {"user-9"}
        np.testing.assert_allclose(np.sort(rows["output"].to_numpy()), np.sort(got), rtol=0, atol=1e-12)
    finally:
        project.close()


def _typed_request(X: np.ndarray) -> Any:
    """Typed ``contents``, one datatype per column: INT64, INT32, BOOL, FP32, then FP64."""
    req = tpb.ModelInferRequest(model_name="clf", id="typed")
    for i, c in enumerate(COLUMNS):
        t = req.inputs.add(name=c, shape=[len(X)])
        col = X[:, i]
        if i == 0:
            t.datatype = "INT64"
            t.contents.int64_contents.extend(int(v) for v in col)
        elif i == 1:
            t.datatype = "INT32"
            t.contents.int_contents.extend(int(v) for v in col)
        elif i == 2:
            t.datatype = "BOOL"
            t.contents.bool_contents.extend(bool(v) for v in col)
        elif i == 3:
            t.datatype = "FP32"
            t.contents.fp32_contents.extend(col.tolist())
        else:
            t.datatype = "FP64"
            t.contents.fp64_contents.extend(col.tolist())
    return req


def test_typed_contents_of_every_datatype_equal_rest(served: Served) -> None:
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    rng = np.random.default_rng(11)
    X = rng.normal(size=(4, N_FEATURES))
    X[:, 0] = rng.integers(-5, 5, size=4)
    X[:, 1] = rng.integers(-5, 5, size=4)
    X[:, 2] = [0, 1, 1, 0]
    X[:, 3] = X[:, 3].astype(np.float32)
    with grpc.insecure_channel(f"127.0.0.1:{served.grpc_port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        response = stub.ModelInfer(_typed_request(X))
        got = np.frombuffer(response.raw_output_contents[0], dtype="<f8")
        np.testing.assert_allclose(got, served.rest(X), rtol=0, atol=1e-12)
        assert response.id == "typed"

        bad = _typed_request(X)
        bad.inputs[1].contents.fp64_contents.append(1.0)  # INT32 values in the FP64 field too
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(bad)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith("inputs[1].contents.fp64_contents:")

        wide = _typed_request(X)
        wide.inputs[1].datatype = "INT8"
        del wide.inputs[1].contents.int_contents[:]
        wide.inputs[1].contents.int_contents.extend([1, 2, 300, 4])  # 300 is no INT8
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(wide)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith("inputs[1].data:") and "INT8" in err.value.details()


def test_bad_input_is_invalid_argument_naming_the_field(served: Served) -> None:
    X = np.zeros((2, N_FEATURES))
    inputs = _inputs(X)
    wrong = grpcclient.InferInput("nope", [2], "FP64")
    wrong.set_data_from_numpy(np.zeros(2))
    cases = [
        ([*inputs[:-1], wrong], {}, f"inputs[{N_FEATURES - 1}].name:"),
        (inputs[:-1], {}, "inputs: misses f19"),
        (inputs, {"request_id": "x" * 300}, "id:"),
        (inputs, {"outputs": [grpcclient.InferRequestedOutput("proba")]}, "outputs[0].name:"),
        (inputs, {"model_version": "one"}, "version"),
    ]
    for tensors, kwargs, field in cases:
        with pytest.raises(InferenceServerException) as err:
            served.client.infer("clf", tensors, **kwargs)
        assert _status(err) == "StatusCode.INVALID_ARGUMENT", (field, err.value)
        assert field in err.value.message(), (field, err.value.message())
    nan = grpcclient.InferInput("f0", [2], "FP64")
    nan.set_data_from_numpy(np.array([np.nan, 1.0]))
    with pytest.raises(InferenceServerException) as err:
        served.client.infer("clf", [nan, *inputs[1:]])
    assert _status(err) == "StatusCode.INVALID_ARGUMENT" and "NaN" in err.value.message()


def test_raw_contents_of_the_wrong_size_name_their_entry(served: Served) -> None:
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    req = tpb.ModelInferRequest(model_name="clf")
    for c in COLUMNS:
        req.inputs.add(name=c, shape=[2], datatype="FP64")
        req.raw_input_contents.append(np.zeros(2).tobytes())
    req.raw_input_contents[3] = b"\x00" * 12
    with grpc.insecure_channel(f"127.0.0.1:{served.grpc_port}") as channel, pytest.raises(grpc.RpcError) as err:
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(req)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "raw_input_contents[3]: has 12 bytes; FP64 shape [2] needs 16"


def test_unknown_model_or_version_is_not_found(served: Served) -> None:
    inputs = _inputs(np.zeros((1, N_FEATURES)))
    for call in (lambda: served.client.infer("nope", inputs), lambda: served.client.get_model_metadata("nope"),
                 lambda: served.client.is_model_ready("nope"),
                 lambda: served.client.infer("clf", inputs, model_version="2")):
        with pytest.raises(InferenceServerException) as err:
            call()
        assert _status(err) == "StatusCode.NOT_FOUND", err.value
    assert "served models are: clf" in str(err.value) or "versions being served: 1" in str(err.value)


def test_auth_required_needs_a_token_in_the_metadata(tmp_path: Path) -> None:
    from modelmill.security import TokenStore

    root = make_project(tmp_path / "proj", serving='auth = "required"\n')
    project = open_project_at(root)
    try:
        _, predict = TokenStore(project).create("predict", name="grpc-client")
        _, reader = TokenStore(project).create("read", name="grpc-reader")
    finally:
        project.close()
    proc, port = _start(root)
    client = grpcclient.InferenceServerClient(url=f"127.0.0.1:{port}")
    try:
        inputs = _inputs(np.zeros((1, N_FEATURES)))
        assert client.is_server_live()  # health stays open, as on REST
        for headers in (None, {"authorization": "Bearer mmt_not-a-token"}):
            with pytest.raises(InferenceServerException) as err:
                client.infer("clf", inputs, headers=headers)
            assert _status(err) == "StatusCode.UNAUTHENTICATED", err.value
            with pytest.raises(InferenceServerException) as err:
                client.get_model_metadata("clf", headers=headers)
            assert _status(err) == "StatusCode.UNAUTHENTICATED", err.value
        with pytest.raises(InferenceServerException) as err:
            client.infer("clf", inputs, headers={"authorization": f"Bearer {reader}"})
        assert _status(err) == "StatusCode.PERMISSION_DENIED" and "role predict" in err.value.message()
        assert client.get_model_metadata("clf", headers={"authorization": f"Bearer {reader}"}).name == "clf"
        ok = client.infer("clf", inputs, headers={"authorization": f"Bearer {predict}"})
        assert ok.as_numpy("output").shape == (1,)
    finally:
        client.close()
        proc.stop()


@pytest.mark.slow  # many CLI processes or a served model: .ci/run runs it, make test keeps its 10 minutes
def test_two_workers_share_the_grpc_port(tmp_path: Path) -> None:
    root = make_project(tmp_path / "proj")
    proc, port = _start(root, "--workers", "2")
    try:
        X = np.random.default_rng(5).normal(size=(3, N_FEATURES))
        answers = []
        for _ in range(8):  # fresh connections, which the kernel spreads over both workers' listeners
            client = grpcclient.InferenceServerClient(url=f"127.0.0.1:{port}")
            try:
                answers.append(client.infer("clf", _inputs(X)).as_numpy("output"))
            finally:
                client.close()
        rest = httpx.post(f"{proc.url}/v2/models/clf/infer", json=infer_body(X), timeout=10).json()
        for got in answers:
            np.testing.assert_allclose(got, rest["outputs"][0]["data"], rtol=0, atol=1e-12)
    finally:
        proc.stop()


def test_a_grpc_port_that_is_the_http_port_or_taken_is_refused(tmp_path: Path) -> None:
    import os
    import socket
    import subprocess
    import sys

    root = make_project(tmp_path / "proj")
    env = {k: v for k, v in os.environ.items() if k != "MODELMILL_HOME"}

    def serve(port: int, grpc_port: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "modelmill", "serve", "clf@production", "--port", str(port),
                               "--grpc-port", str(grpc_port)], cwd=root, env=env, capture_output=True, text=True,
                              timeout=60)

    port = free_port()
    same = serve(port, port)
    assert same.returncode == 2 and "--grpc-port: must differ from --port" in same.stderr, same
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = serve(port, taken.getsockname()[1])
    assert busy.returncode == 2 and "--grpc-port: cannot listen on" in busy.stderr, busy
    assert "Traceback" not in busy.stderr
