"""The Open Inference Protocol v2 over gRPC: KServe's ``GRPCInferenceService`` beside the REST routes.

``modelmill serve --grpc-port N`` starts it in the same process and event loop
as the HTTP server, over the same :class:`ModelServer`: ServerLive,
ServerReady, ModelReady, ServerMetadata, ModelMetadata and ModelInfer answer
as their REST routes in :mod:`modelmill.serving.oip` do. A request is decoded
into the REST request's form and goes through the same functions
(:func:`~modelmill.serving.oip.check_infer_request`,
:func:`~modelmill.serving.oip.decode_inputs`, ``server.choose``,
``server.run``, ``server.record``): the same checks, variant choice, cache,
prediction log (the request ``id`` is the prediction's id) and metrics
(route label ``grpc_infer``).

Tensors come in ``raw_input_contents`` (little-endian, as ``tritonclient.grpc``
sends them) or in the typed ``contents`` field of their datatype (BOOL,
INT8-INT64, UINT8-UINT64, FP32, FP64; FP16 only raw). The output ``output``
(FP64, shape ``[n]``) goes back in ``raw_output_contents``.

Errors are gRPC statuses with the REST answer's message (which names the
field): 400 -> INVALID_ARGUMENT, 404 -> NOT_FOUND, 413 -> RESOURCE_EXHAUSTED,
422 (the model failed on this input) -> INVALID_ARGUMENT, 408 ->
DEADLINE_EXCEEDED, 409 -> FAILED_PRECONDITION, 503 -> UNAVAILABLE; only a
fault of the server itself is INTERNAL. With ``[serving] auth = "required"``
the calls the REST routes guard need metadata ``authorization: Bearer <token>``
(UNAUTHENTICATED without one, PERMISSION_DENIED for a token of too low a role).

Its protobuf messages share the names of ``tritonclient.grpc``'s own
(package ``inference``), so one process cannot import both this module and
``tritonclient.grpc``: clients use tritonclient, the server this.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import grpc
import numpy as np
import orjson
from grpc import aio

import modelmill
from modelmill.errors import InputError
from modelmill.registry import check_version
from modelmill.security import Authenticator
from modelmill.security.tokens import allows
from modelmill.serving import metrics
from modelmill.serving.oip import DATATYPES, OUTPUT, check_infer_request, decode_inputs, model_metadata
from modelmill.serving.proto import grpc_predict_v2_pb2 as pb
from modelmill.serving.proto import grpc_predict_v2_pb2_grpc as pb_grpc
from modelmill.serving.responses import error_response, status_of
from modelmill.serving.server import Choice, ModelServer, Prediction

__all__ = ["InferenceServicer", "grpc_code", "start_grpc"]

log = logging.getLogger(__name__)

_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,  # what gRPC answers for a message over its own size limit
    422: grpc.StatusCode.INVALID_ARGUMENT,  # well-formed input the model fails on: still the input's fault
    503: grpc.StatusCode.UNAVAILABLE,
}

# The typed field of InferTensorContents for each datatype, and the numpy type its values are read as.
_CONTENTS: dict[str, tuple[str, str]] = {
    "BOOL": ("bool_contents", "?"), "INT8": ("int_contents", "<i8"), "INT16": ("int_contents", "<i8"),
    "INT32": ("int_contents", "<i8"), "INT64": ("int64_contents", "<i8"), "UINT8": ("uint_contents", "<u8"),
    "UINT16": ("uint_contents", "<u8"), "UINT32": ("uint_contents", "<u8"), "UINT64": ("uint64_contents", "<u8"),
    "FP32": ("fp32_contents", "<f4"), "FP64": ("fp64_contents", "<f8"),
}
_FIELDS = ("bool_contents", "int_contents", "int64_contents", "uint_contents", "uint64_contents",
           "fp32_contents", "fp64_contents", "bytes_contents")


def grpc_code(status: int) -> grpc.StatusCode:
    """The gRPC status for the HTTP status a REST route answers the same error with."""
    return _CODES.get(status, grpc.StatusCode.INTERNAL)


def _param(p: Any) -> Any:
    kind = p.WhichOneof("parameter_choice")
    return getattr(p, kind) if kind is not None else None


def _contents(t: Any, where: str) -> np.ndarray | list[Any]:
    """An input's values from the typed field of its datatype (a mismatched field is named)."""
    spec = _CONTENTS.get(t.datatype)
    c = t.contents
    if spec is None:
        if t.datatype == "FP16":
            raise InputError(f"{where}.contents", "cannot hold FP16 values; send them in raw_input_contents")
        return []  # decode_inputs names the datatype it does not take
    field, dtype = spec
    for other in _FIELDS:
        if other != field and len(getattr(c, other)):
            raise InputError(f"{where}.contents.{other}", f"does not match datatype {t.datatype}; use {field}")
    values = getattr(c, field)
    return np.fromiter(values, dtype=dtype, count=len(values))


def _request_dict(request: Any) -> tuple[dict[str, Any], memoryview | None]:
    """A ``ModelInferRequest`` as the REST request's dict and binary section, for :func:`decode_inputs`."""
    raw = request.raw_input_contents
    n_inputs = len(request.inputs)
    if raw and len(raw) != n_inputs:
        raise InputError("raw_input_contents", f"has {len(raw)} entries; there are {n_inputs} inputs (one each)")
    inputs: list[dict[str, Any]] = []
    for i, t in enumerate(request.inputs):
        where = f"inputs[{i}]"
        shape = list(t.shape)
        inp: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": shape}
        if raw:
            if t.HasField("contents"):
                raise InputError(f"{where}.contents", "must be unset when raw_input_contents is used")
            dtype = DATATYPES.get(t.datatype)
            need = dtype.itemsize if dtype is not None else -1
            for d in shape:
                need = need * d if d >= 0 and need >= 0 else -1
            if need >= 0 and len(raw[i]) != need:  # (need < 0: decode_inputs names the datatype or shape)
                raise InputError(f"raw_input_contents[{i}]", f"has {len(raw[i])} bytes; {t.datatype} "
                                 f"shape {shape} needs {need}")
            inp["parameters"] = {"binary_data_size": len(raw[i])}
        else:
            inp["data"] = _contents(t, where)
        inputs.append(inp)
    params = request.parameters
    req: dict[str, Any] = {"inputs": inputs, "parameters": {k: _param(v) for k, v in params.items()} if params else {}}
    if request.id:
        req["id"] = request.id
    binary = memoryview(raw[0] if len(raw) == 1 else b"".join(raw)) if raw else None
    return req, binary


def _version(raw: str) -> int | None:
    return check_version(raw) if raw else None


def _check_outputs(request: Any) -> None:
    for i, out in enumerate(request.outputs):
        if out.name != OUTPUT:
            raise InputError(f"outputs[{i}].name", f"must be {OUTPUT!r}, the only output", out.name)


def _encode(pred: Prediction, req_id: str | None) -> Any:
    out = pb.ModelInferResponse.InferOutputTensor(name=OUTPUT, datatype="FP64", shape=[len(pred.output)])
    return pb.ModelInferResponse(model_name=pred.model, model_version=str(pred.version), id=req_id or "",
                                 outputs=[out],
                                 raw_output_contents=[np.ascontiguousarray(pred.output, dtype="<f8").tobytes()])


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """The OIP gRPC calls over one :class:`ModelServer` (the repository calls answer UNIMPLEMENTED)."""

    def __init__(self, server: ModelServer, auth: Authenticator) -> None:
        self.server = server
        self.auth = auth

    async def _authorize(self, context: Any, role: str, call: str) -> None:
        """Abort with UNAUTHENTICATED or PERMISSION_DENIED unless the call may go on (as the REST guard does)."""
        if not self.auth.required:
            return
        presented = next((v for k, v in context.invocation_metadata() or () if k == "authorization"), None)
        token = self.auth.authenticate(presented if isinstance(presented, str) else None)
        if token is None:
            if presented:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                    f"{call}: the API token is unknown, revoked or malformed; check it with "
                                    "modelmill token list")
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                f"{call} needs an API token: send the metadata authorization: Bearer <token> "
                                "(create one with modelmill token create)")
        elif not allows(token.role, role):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"{call} needs a token with role {role}; token {token.name!r} has role {token.role}")

    async def _fail(self, context: Any, exc: BaseException) -> None:
        """Abort with the status and message the REST routes answer ``exc`` with."""
        response = error_response(exc, timeout_s=self.server.config.limits.request_timeout_s)
        await context.abort(grpc_code(response.status_code), orjson.loads(response.body)["error"])

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.server.ready)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return pb.ServerMetadataResponse(name="modelmill", version=modelmill.__version__)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        await self._authorize(context, "read", "ModelReady")
        try:
            self.server.deployed(request.name, _version(request.version))
        except Exception as exc:
            await self._fail(context, exc)
        return pb.ModelReadyResponse(ready=True)

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        await self._authorize(context, "read", "ModelMetadata")
        try:
            meta = model_metadata(self.server, request.name, _version(request.version))
        except Exception as exc:
            await self._fail(context, exc)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta["name"], versions=meta["versions"], platform=meta["platform"],
            inputs=[tensor(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in meta["inputs"]],
            outputs=[tensor(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in meta["outputs"]])

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        await self._authorize(context, "predict", "ModelInfer")
        t0 = time.perf_counter()
        server = self.server
        name = request.model_name
        choice: Choice | None = None
        failure: BaseException | None = None
        response: Any = None
        stats = metrics.REQUESTS
        stats.inflight += 1
        try:
            async with server.deadlines:
                version = _version(request.model_version)
                server.live_route(name)
                req, binary = _request_dict(request)
                check_infer_request(req, max_id_chars=server.config.limits.max_id_chars)
                _check_outputs(request)
                key = next((v for k, v in context.invocation_metadata() or () if k == "x-routing-key"), None)
                if key is None and isinstance(req["parameters"].get("routing_key"), str):
                    key = req["parameters"]["routing_key"]
                choice = server.choose(name, routing_key=key, request_id=req.get("id"), version=version)
                X = decode_inputs(req, binary, choice.deployed)
                pred = await server.run(choice, X, started=t0)
                response = _encode(pred, req.get("id"))
        except Exception as exc:
            failure = exc
        finally:
            stats.inflight -= 1
        server.record(name, "grpc_infer", choice, 200 if failure is None else status_of(failure), t0, failure)
        if failure is not None:
            await self._fail(context, failure)
        return response


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def start_grpc(server: ModelServer, auth: Authenticator, host: str, port: int, *,
                     reuse_port: bool = False) -> Any:
    """A started ``grpc.aio`` server answering the OIP calls on ``host:port`` (stop it with ``stop(grace)``).

    ``reuse_port`` lets several worker processes listen on the one port (the kernel spreads the
    connections); without it a port in use is refused rather than shared with whoever holds it.
    """
    limits = server.config.limits
    options = [("grpc.so_reuseport", 1 if reuse_port else 0),
               ("grpc.max_receive_message_length", limits.max_body_bytes),
               ("grpc.max_send_message_length", -1)]
    g = aio.server(options=options)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(server, auth), g)
    address = _address(host, port)
    try:
        bound = g.add_insecure_port(address)
    except RuntimeError as exc:
        raise InputError("--grpc-port", f"cannot listen on {address} ({exc}); is the port in use?", port) from None
    if not bound:
        raise InputError("--grpc-port", f"cannot listen on {address}; is the port in use?", port)
    await g.start()
    log.info("OIP over gRPC on %s", address)
    return g
