"""Triton's extensions over gRPC: ``tritonclient.grpc``'s config, statistics and repository calls against a real
``modelmill serve --grpc-port``, answering what the REST routes answer (one implementation behind both)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import sqlalchemy as sa
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2 as tpb  # tritonclient's own copy of Triton's messages
from tritonclient.utils import InferenceServerException

from modelmill.security import TokenStore
from modelmill.store.tables import audit_log
from tests.serving.conftest import COLUMNS, N_FEATURES, ServeProcess, free_port, make_project, open_project_at
from tests.serving.test_grpc import _inputs, _status

pytestmark = pytest.mark.slow  # one served model for the module (a server start is several seconds here)


class Served:
    def __init__(self, root: Path, proc: ServeProcess, grpc_port: int, tokens: dict[str, str]) -> None:
        self.root, self.proc, self.grpc_port, self.tokens = root, proc, grpc_port, tokens
        self.client = grpcclient.InferenceServerClient(url=f"127.0.0.1:{grpc_port}")

    def bearer(self, role: str) -> dict[str, str]:
        return {"authorization": f"Bearer {self.tokens[role]}"}

    def rest(self, path: str) -> Any:
        r = httpx.get(f"{self.proc.url}{path}", timeout=10)
        assert r.status_code == 200, r.text
        return r.json()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = make_project(tmp_path_factory.mktemp("grpc-ext") / "proj")
    project = open_project_at(root)
    try:
        tokens = {role: TokenStore(project).create(role, name=f"grpc-{role}")[1] for role in ("read", "admin")}
    finally:
        project.close()
    port = free_port()
    proc = ServeProcess(root, "--model", "clf@production", "--grpc-port", str(port))
    try:
        proc.wait_ready()
        s = Served(root, proc, port, tokens)
        yield s
        s.client.close()
    finally:
        proc.stop()


def test_model_config_is_the_rest_config(served: Served) -> None:
    rest = served.rest("/v2/models/clf/config")
    cfg = served.client.get_model_config("clf").config
    assert (cfg.name, cfg.platform, cfg.backend, cfg.max_batch_size) == (
        rest["name"], rest["platform"], rest["backend"], rest["max_batch_size"])
    assert [str(v) for v in cfg.version_policy.specific.versions] == rest["version_policy"]["specific"]["versions"]
    assert [(i.name, grpcclient.model_config_pb2.DataType.Name(i.data_type), list(i.dims)) for i in cfg.input] == [
        (i["name"], i["data_type"], i["dims"]) for i in rest["input"]]
    assert [i.name for i in cfg.input] == COLUMNS
    assert [(o.name, grpcclient.model_config_pb2.DataType.Name(o.data_type), list(o.dims)) for o in cfg.output] == [
        (o["name"], o["data_type"], o["dims"]) for o in rest["output"]]
    assert list(cfg.dynamic_batching.preferred_batch_size) == rest["dynamic_batching"]["preferred_batch_size"]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == rest["dynamic_batching"][
        "max_queue_delay_microseconds"]
    assert {k: v.string_value for k, v in cfg.parameters.items()} == {
        k: v["string_value"] for k, v in rest["parameters"].items()}
    assert cfg.parameters["flavor"].string_value == "sklearn" and len(cfg.parameters["sha256"].string_value) == 64
    one = served.client.get_model_config("clf", model_version="1").config
    assert one.name == "clf"
    for name, version in (("nope", ""), ("clf", "9")):
        with pytest.raises(InferenceServerException) as err:
            served.client.get_model_config(name, model_version=version)
        assert _status(err) == "StatusCode.NOT_FOUND", err.value


def _stats(served: Served, name: str = "clf") -> Any:
    [entry] = [s for s in served.client.get_inference_statistics(name).model_stats if s.name == "clf"]
    return entry


def test_statistics_count_the_rows_and_requests_of_grpc_infers(served: Served) -> None:
    before = _stats(served)
    X = np.random.default_rng(3).normal(size=(3, N_FEATURES))
    served.client.infer("clf", _inputs(X))
    served.client.infer("clf", _inputs(X[:1]))
    after = _stats(served)
    assert after.version == "1"
    assert after.inference_count - before.inference_count == 4
    assert after.inference_stats.success.count - before.inference_stats.success.count == 2
    assert after.inference_stats.compute_infer.ns > before.inference_stats.compute_infer.ns
    assert after.last_inference > 0 and after.last_inference >= before.last_inference
    rest = served.rest("/v2/models/clf/stats")["model_stats"][0]
    assert rest["inference_count"] == after.inference_count  # no request between: the same counters
    assert rest["inference_stats"]["success"]["count"] == after.inference_stats.success.count
    assert "clf" in [s.name for s in served.client.get_inference_statistics("").model_stats]  # every model
    with pytest.raises(InferenceServerException) as err:
        served.client.get_inference_statistics("nope")
    assert _status(err) == "StatusCode.NOT_FOUND", err.value


def _audit(served: Served) -> list[tuple[str, str, str]]:
    project = open_project_at(served.root)
    try:
        with project.db.engine.connect() as conn:
            rows = conn.execute(sa.select(audit_log.c.actor, audit_log.c.action, audit_log.c.subject)
                                .where(audit_log.c.action.like("repository.%")).order_by(audit_log.c.id)).all()
    finally:
        project.close()
    return [tuple(r) for r in rows]


def _ready_index(served: Served) -> list[tuple[str, str]]:
    with grpc.insecure_channel(f"127.0.0.1:{served.grpc_port}") as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/RepositoryIndex",
                                   request_serializer=tpb.RepositoryIndexRequest.SerializeToString,
                                   response_deserializer=tpb.RepositoryIndexResponse.FromString)
        return [(m.name, m.state) for m in call(tpb.RepositoryIndexRequest(ready=True)).models]


def test_repository_unload_and_load_need_an_admin_token_and_are_audited(served: Served) -> None:
    c = served.client
    for headers, status in ((None, "UNAUTHENTICATED"), ({"authorization": "Bearer mmt_not-a-token"}, "UNAUTHENTICATED"),
                            (served.bearer("read"), "PERMISSION_DENIED")):
        with pytest.raises(InferenceServerException) as err:
            c.unload_model("clf", headers=headers)
        assert _status(err) == f"StatusCode.{status}", err.value
    assert c.is_model_ready("clf")  # refused calls changed nothing
    index = c.get_model_repository_index()
    assert [(m.name, m.version, m.state) for m in index.models] == [("clf", "1", "READY")]
    assert _ready_index(served) == [("clf", "READY")]

    c.unload_model("clf", headers=served.bearer("admin"))
    assert not c.is_model_ready("clf")
    [entry] = c.get_model_repository_index().models
    assert (entry.name, entry.state) == ("clf", "UNAVAILABLE") and "unloaded" in entry.reason
    assert _ready_index(served) == []  # tritonclient does not send ready = true; Triton's message does
    rest_index = httpx.post(f"{served.proc.url}/v2/repository/index", json={}, timeout=10).json()
    assert [(m["name"], m["state"], m["reason"]) for m in rest_index] == [(entry.name, entry.state, entry.reason)]
    with pytest.raises(InferenceServerException) as err:
        c.infer("clf", _inputs(np.zeros((1, N_FEATURES))))
    assert _status(err) in ("StatusCode.NOT_FOUND", "StatusCode.UNAVAILABLE"), err.value
    with pytest.raises(InferenceServerException) as err:
        c.unload_model("clf", headers=served.bearer("admin"))  # not loaded now
    assert _status(err) == "StatusCode.NOT_FOUND", err.value

    with pytest.raises(InferenceServerException) as err:
        c.load_model("clf", headers=served.bearer("admin"), config='{"backend": "python"}')
    assert _status(err) == "StatusCode.INVALID_ARGUMENT" and "parameters.config" in err.value.message()
    with pytest.raises(InferenceServerException) as err:
        c.load_model("nope", headers=served.bearer("admin"))
    assert _status(err) == "StatusCode.NOT_FOUND", err.value
    assert not c.is_model_ready("clf")  # the refused loads loaded nothing

    c.load_model("clf", headers=served.bearer("admin"))
    assert c.is_model_ready("clf")
    assert c.infer("clf", _inputs(np.zeros((2, N_FEATURES)))).as_numpy("output").shape == (2,)
    assert _audit(served)[-2:] == [("token:grpc-admin", "repository.unload", "model:clf"),
                                   ("token:grpc-admin", "repository.load", "model:clf")]


def test_a_load_request_in_kserve_layout_is_read_as_kserves(served: Served) -> None:
    """KServe's RepositoryModelLoadRequest names the model in field 1, Triton's in field 2 (field 1 is the
    repository): both reach the same load. The bytes are written by hand (this process holds tritonclient's
    messages, whose names modelmill's KServe messages share)."""
    name = b"clf"
    with grpc.insecure_channel(f"127.0.0.1:{served.grpc_port}") as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/RepositoryModelLoad",
                                   request_serializer=lambda b: b, response_deserializer=lambda b: b)
        answer = call(b"\x0a" + bytes([len(name)]) + name, metadata=tuple(served.bearer("admin").items()))
        # KServe's RepositoryModelLoadResponse: model_name = "clf" (field 1), isLoaded = true (field 2)
        assert answer == b"\x0a\x03clf\x10\x01"
        with pytest.raises(grpc.RpcError) as err:
            call(b"", metadata=tuple(served.bearer("admin").items()))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "model_name" in (err.value.details() or "")
    assert served.client.is_model_ready("clf")


def test_with_auth_required_the_read_calls_need_a_read_token(tmp_path: Path) -> None:
    root = make_project(tmp_path / "proj", serving='auth = "required"\n')
    project = open_project_at(root)
    try:
        _, reader = TokenStore(project).create("read", name="grpc-reader")
    finally:
        project.close()
    port = free_port()
    proc = ServeProcess(root, "--model", "clf@production", "--grpc-port", str(port))
    client = grpcclient.InferenceServerClient(url=f"127.0.0.1:{port}")
    try:
        proc.wait_ready()
        calls = (lambda h: client.get_model_config("clf", headers=h),
                 lambda h: client.get_inference_statistics("clf", headers=h),
                 lambda h: client.get_model_repository_index(headers=h))
        for call in calls:
            with pytest.raises(InferenceServerException) as err:
                call(None)
            assert _status(err) == "StatusCode.UNAUTHENTICATED", err.value
            call({"authorization": f"Bearer {reader}"})  # answers
        with pytest.raises(InferenceServerException) as err:
            client.unload_model("clf", headers={"authorization": f"Bearer {reader}"})
        assert _status(err) == "StatusCode.PERMISSION_DENIED" and "role admin" in err.value.message()
    finally:
        client.close()
        proc.stop()
