"""The Open Inference Protocol v2 over gRPC: KServe's ``GRPCInferenceService`` beside the REST routes.

``modelmill serve --grpc-port N`` starts it in the same process and event loop
as the HTTP server, over the same :class:`ModelServer`: ServerLive,
ServerReady, ModelReady (false for a model the server knows but does not
answer with now: not loaded yet, unloaded, failed), ServerMetadata, ModelMetadata and ModelInfer answer
as their REST routes in :mod:`modelmill.serving.oip` do, and so do the Triton
extensions that ``tritonclient.grpc`` calls: ModelConfig, ModelStatistics,
RepositoryIndex, RepositoryModelLoad and RepositoryModelUnload, each through the
function its REST route calls (:func:`~modelmill.serving.oip.model_config`,
:func:`~modelmill.serving.oip.model_stats`, ``server.repository_index``,
:func:`~modelmill.serving.oip.repository_load` /
:func:`~modelmill.serving.oip.repository_unload`), its dict read into the
message of ``proto/triton_extensions.proto`` (Triton's field numbers). A load or
unload request in Triton's layout names the model in field 2; one in KServe's
(``model_name`` = field 1) is read as such. A request is decoded
into the REST request's form and goes through the same functions
(:func:`~modelmill.serving.oip.check_infer_request`,
:func:`~modelmill.serving.oip.decode_inputs`, ``server.choose``,
``server.run``, ``server.record``): the same checks, variant choice, cache,
prediction log (the request ``id`` is the prediction's id) and metrics
(route label ``grpc_infer``).

Tensors come in ``raw_input_contents`` (little-endian, as ``tritonclient.grpc``
sends them) or in the typed ``contents`` field of their datatype (BOOL,
INT8-INT64, UINT8-UINT64, FP32, FP64; FP16 only raw; BYTES in bytes_contents
or raw). The outputs go back in ``raw_output_contents``: ``output`` (FP64,
``[n]``, or ``[n, C]`` / ``[n, m]`` for a multiclass / multi-output model) and a
multiclass model's ``label`` (BYTES, ``[n]``).

Errors are gRPC statuses with the REST answer's message (which names the
field): 400 -> INVALID_ARGUMENT, 404 -> NOT_FOUND, 413 -> RESOURCE_EXHAUSTED,
422 (the model failed on this input) -> INVALID_ARGUMENT, 408 ->
DEADLINE_EXCEEDED, 409 -> FAILED_PRECONDITION, 503 -> UNAVAILABLE; only a
fault of the server itself is INTERNAL. With ``[serving] auth = "required"``
the calls the REST routes guard need metadata ``authorization: Bearer <token>``
(UNAUTHENTICATED without one, PERMISSION_DENIED for a token of too low a role);
repository load and unload need an ``admin`` token whatever the mode, as their
REST routes do, and are audited with its name.

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
from google.protobuf import json_format
from grpc import aio

import modelmill
from modelmill.errors import InputError
from modelmill.registry import check_version
from modelmill.security import Authenticator
from modelmill.security.tokens import allows
from modelmill.serving import metrics
from modelmill.serving.oip import (
    DATATYPES,
    bytes_tensor,
    check_infer_request,
    decode_inputs,
    model_config,
    model_metadata,
    model_readiness,
    model_stats,
    output_names,
    output_tensors,
    repository_load,
    repository_unload,
)
from modelmill.serving.proto import grpc_predict_v2_pb2 as pb
from modelmill.serving.proto import triton_extensions_pb2 as ext
from modelmill.serving.responses import error_response, status_of
from modelmill.serving.server import Choice, Deployed, ModelServer, Prediction

__all__ = ["SERVICE", "InferenceServicer", "grpc_code", "start_grpc"]

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"

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
    if t.datatype == "BYTES":
        spec = ("bytes_contents", "")
    if spec is None:
        if t.datatype == "FP16":
            raise InputError(f"{where}.contents", "cannot hold FP16 values; send them in raw_input_contents")
        return []  # decode_inputs names the datatype it does not take
    field, dtype = spec
    for other in _FIELDS:
        if other != field and len(getattr(c, other)):
            raise InputError(f"{where}.contents.{other}", f"does not match datatype {t.datatype}; use {field}")
    values = getattr(c, field)
    if not dtype:
        return list(values)  # BYTES: decode_inputs reads them as UTF-8 strings
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


def _repository_request(request: Any) -> tuple[str, dict[str, Any]]:
    """The model a load / unload request names (Triton's field 2, else KServe's field 1) and its parameters."""
    name = request.model_name or request.repository_name
    if not name:
        raise InputError("model_name", "is required: the name of a registered model")
    return name, {k: _param(v) for k, v in request.parameters.items()}


def _check_outputs(request: Any, dep: Deployed) -> list[str] | None:
    """The outputs asked for (None: all of the model's: ``output``, and ``label`` for a multiclass model)."""
    names = output_names(dep)
    for i, out in enumerate(request.outputs):
        if out.name not in names:
            raise InputError(f"outputs[{i}].name", f"must be one of {', '.join(repr(n) for n in names)}", out.name)
    return [out.name for out in request.outputs] or None


def _encode(pred: Prediction, req_id: str | None, dep: Deployed, names: list[str] | None = None) -> Any:
    outputs, raw = [], []
    for name, datatype, shape, values in output_tensors(pred, dep, names):
        outputs.append(pb.ModelInferResponse.InferOutputTensor(name=name, datatype=datatype, shape=shape))
        raw.append(bytes_tensor(values) if datatype == "BYTES" else np.ascontiguousarray(values, dtype="<f8").tobytes())
    return pb.ModelInferResponse(model_name=pred.model, model_version=str(pred.version), id=req_id or "",
                                 outputs=outputs, raw_output_contents=raw)


class InferenceServicer:
    """The OIP gRPC calls and Triton's extensions over one :class:`ModelServer` (see :meth:`handlers`)."""

    def __init__(self, server: ModelServer, auth: Authenticator) -> None:
        self.server = server
        self.auth = auth

    def handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        """Each method of ``inference.GRPCInferenceService`` this servicer answers, with its messages."""
        calls: dict[str, tuple[Any, Any]] = {
            "ServerLive": (pb.ServerLiveRequest, pb.ServerLiveResponse),
            "ServerReady": (pb.ServerReadyRequest, pb.ServerReadyResponse),
            "ModelReady": (pb.ModelReadyRequest, pb.ModelReadyResponse),
            "ServerMetadata": (pb.ServerMetadataRequest, pb.ServerMetadataResponse),
            "ModelMetadata": (pb.ModelMetadataRequest, pb.ModelMetadataResponse),
            "ModelInfer": (pb.ModelInferRequest, pb.ModelInferResponse),
            "ModelConfig": (ext.ModelConfigRequest, ext.ModelConfigResponse),
            "ModelStatistics": (ext.ModelStatisticsRequest, ext.ModelStatisticsResponse),
            "RepositoryIndex": (ext.RepositoryIndexRequest, ext.RepositoryIndexResponse),
            "RepositoryModelLoad": (ext.RepositoryModelRequest, pb.RepositoryModelLoadResponse),
            "RepositoryModelUnload": (ext.RepositoryModelRequest, pb.RepositoryModelUnloadResponse),
        }
        return {name: grpc.unary_unary_rpc_method_handler(getattr(self, name), request_deserializer=req.FromString,
                                                          response_serializer=resp.SerializeToString)
                for name, (req, resp) in calls.items()}

    async def _authorize(self, context: Any, role: str, call: str, *, always: bool = False) -> str:
        """Abort with UNAUTHENTICATED or PERMISSION_DENIED unless the call may go on (as the REST guard does);
        who made it, for the audit trail (``token:<name>``; ``api`` where no token is needed).

        A data-plane call needs a token only with ``auth = "required"``; an ``always`` call (the control
        plane) needs one in every mode."""
        if not (always or self.auth.required):
            return "api"
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
        return f"token:{token.name}" if token is not None else "api"

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
            ready, _ = model_readiness(self.server, request.name, _version(request.version))
        except Exception as exc:
            await self._fail(context, exc)
        return pb.ModelReadyResponse(ready=ready)

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

    async def ModelConfig(self, request: Any, context: Any) -> Any:
        await self._authorize(context, "read", "ModelConfig")
        try:
            config = model_config(self.server, request.name, _version(request.version))
            return ext.ModelConfigResponse(config=json_format.ParseDict(config, ext.ModelConfig()))
        except Exception as exc:
            await self._fail(context, exc)

    async def ModelStatistics(self, request: Any, context: Any) -> Any:
        await self._authorize(context, "read", "ModelStatistics")
        try:
            stats = model_stats(self.server, request.name or None, _version(request.version))
            return json_format.ParseDict(stats, ext.ModelStatisticsResponse())
        except Exception as exc:
            await self._fail(context, exc)

    async def RepositoryIndex(self, request: Any, context: Any) -> Any:
        await self._authorize(context, "read", "RepositoryIndex")
        try:
            index = self.server.repository_index(ready_only=request.ready)
            return json_format.ParseDict({"models": index}, ext.RepositoryIndexResponse())
        except Exception as exc:
            await self._fail(context, exc)

    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        name = await self._repository(request, context, "RepositoryModelLoad", repository_load)
        return None if name is None else pb.RepositoryModelLoadResponse(model_name=name, isLoaded=True)

    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        name = await self._repository(request, context, "RepositoryModelUnload", repository_unload)
        return None if name is None else pb.RepositoryModelUnloadResponse(model_name=name, isUnloaded=True)

    async def _repository(self, request: Any, context: Any, call: str, action: Any) -> str | None:
        """A repository load or unload (admin, audited as the token's name), through the REST routes' own
        function: the model's name, or None once the call was failed with the error's status."""
        who = await self._authorize(context, "admin", call, always=True)
        try:
            name, params = _repository_request(request)
            await action(self.server, name, params, who)
            return name
        except Exception as exc:
            await self._fail(context, exc)
            return None

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
                if not server.serves(name) and server.wants_lazily(name):
                    await server.ensure_loaded(name)  # [serving] lazy: the first request loads the model
                server.live_route(name)
                req, binary = _request_dict(request)
                check_infer_request(req, max_id_chars=server.config.limits.max_id_chars)
                key = next((v for k, v in context.invocation_metadata() or () if k == "x-routing-key"), None)
                if key is None and isinstance(req["parameters"].get("routing_key"), str):
                    key = req["parameters"]["routing_key"]
                choice = server.choose(name, routing_key=key, request_id=req.get("id"), version=version)
                names = _check_outputs(request, choice.deployed)
                X = decode_inputs(req, binary, choice.deployed)
                pred = await server.run(choice, X, started=t0)
                response = _encode(pred, req.get("id"), choice.deployed, names)
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
    handlers = InferenceServicer(server, auth).handlers()
    g.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    g.add_registered_method_handlers(SERVICE, handlers)
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
