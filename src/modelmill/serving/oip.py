"""The Open Inference Protocol v2 over REST (the KServe / Triton protocol), with Triton's binary tensors.

Routes: ``GET /v2/health/live``, ``GET /v2/health/ready``, ``GET /v2``,
``GET /v2/models/{name}[/versions/{version}]``, ``GET .../ready`` and
``POST .../infer``. A model's inputs are its signature's columns, each a
tensor of shape ``[-1]``; a single tensor of shape ``[n, k]`` holding the
columns in signature order is accepted too. The output is ``output``,
``FP64``, shape ``[n]``. Errors are ``{"error": "..."}`` with a 4xx status.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import orjson
from starlette.requests import Request
from starlette.responses import Response

import modelmill
from modelmill.errors import InputError
from modelmill.registry import check_version
from modelmill.serving import metrics
from modelmill.serving.limits import client_id, read_body
from modelmill.serving.responses import Incoming, error_response, json_response
from modelmill.serving.server import Choice, Deployed, ModelServer, Prediction

__all__ = ["DATATYPES", "OUTPUT", "OipRoutes", "check_infer_request", "decode_inputs", "model_metadata",
           "parse_infer_request"]

# OIP datatype -> numpy dtype (little-endian, as the binary extension sends them).
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"), "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
_SIGNATURE_TYPES = {"float64": "FP64", "float32": "FP32", "float": "FP64", "double": "FP64", "int64": "INT64",
                    "int32": "INT32", "int": "INT64", "bool": "BOOL", "boolean": "BOOL"}
_HEADER = "inference-header-content-length"
# What a JSON number may hold for each integer datatype; FP16/FP32 are bounded by their largest finite value.
_INT_RANGES = {name: (float(np.iinfo(dt).min), float(np.iinfo(dt).max))
               for name, dt in DATATYPES.items() if dt.kind in "iu"}
_FLOAT_MAX = {"FP16": float(np.finfo(np.float16).max), "FP32": float(np.finfo(np.float32).max)}
_EXACT = 2.0**53  # float64 holds every integer up to here; past it a 64-bit bound is checked on the JSON values
OUTPUT = "output"


def _field(msg: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str, *, required: bool = True) -> Any:
    value = msg.get(key)
    if value is None:
        if required:
            raise InputError(f"{where}.{key}", "is required")
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise InputError(f"{where}.{key}", f"must be {getattr(kind, '__name__', 'of another type')}", value)
    return value


def _tensor(inp: dict[str, Any], where: str, binary: memoryview | None, offset: int) -> tuple[np.ndarray, int]:
    """One input tensor as a float64 array of its declared shape; returns it and the new binary offset."""
    datatype = _field(inp, "datatype", str, where)
    dtype = DATATYPES.get(datatype)
    if dtype is None:
        raise InputError(f"{where}.datatype", f"must be one of {', '.join(DATATYPES)} (numeric tensors)", datatype)
    shape = _field(inp, "shape", list, where)
    if not shape or len(shape) > 2 or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise InputError(f"{where}.shape", "must be [n] or [n, k] with sizes >= 0", shape)
    size = shape[0] * (shape[1] if len(shape) == 2 else 1)
    params = inp.get("parameters") or {}
    if not isinstance(params, dict):
        raise InputError(f"{where}.parameters", "must be an object", params)
    nbytes = params.get("binary_data_size")
    if nbytes is not None:
        if binary is None or not isinstance(nbytes, int) or isinstance(nbytes, bool) or nbytes < 0 \
                or offset + nbytes > len(binary) or nbytes != size * dtype.itemsize:
            raise InputError(f"{where}.parameters.binary_data_size",
                             f"must match the binary data sent ({size} x {dtype.itemsize} bytes)", nbytes)
        arr = np.frombuffer(binary[offset:offset + nbytes], dtype=dtype)
        offset += nbytes
    else:
        data = inp.get("data")  # a JSON array, or an array decoded from gRPC's typed contents
        if not isinstance(data, list | np.ndarray):
            raise InputError(f"{where}.data", "must be an array (row-major, flat or nested)")
        try:
            arr = np.asarray(data, dtype=np.float64)
        except (ValueError, TypeError, OverflowError):
            raise InputError(f"{where}.data", f"must hold only numbers of type {datatype}") from None
        if arr.size != size:
            raise InputError(f"{where}.data", f"has {arr.size} values; shape {shape} needs {size}")
        if datatype != "FP64" and arr.size:
            _check_range(arr, data, datatype, f"{where}.data")
    arr = arr.astype(np.float64, copy=False).reshape(shape)
    if not np.isfinite(arr).all():
        raise InputError(f"{where}.data", "contains NaN or infinity")
    return arr, offset


def _check_range(arr: np.ndarray, data: list[Any] | np.ndarray, datatype: str, where: str) -> None:
    """Refuse JSON values that the declared datatype cannot hold (1000 as INT8, 1.5 as INT64, 1e300 as FP32)."""
    if datatype == "BOOL":
        if not np.isin(arr, (0.0, 1.0)).all():
            raise InputError(where, "must hold only true/false (or 0/1) for datatype BOOL")
        return
    fmax = _FLOAT_MAX.get(datatype)
    if fmax is not None:
        if not (np.abs(arr) <= fmax).all():  # NaN fails too; the caller's finiteness check names it
            raise InputError(where, f"holds a value beyond the range of {datatype} (+-{fmax:g})")
        return
    lo, hi = _INT_RANGES[datatype]
    if not (np.trunc(arr) == arr).all():
        raise InputError(where, f"must hold only whole numbers for datatype {datatype}")
    inside = ((arr >= lo) & (arr <= hi)).all()
    if not inside or ((np.abs(arr) >= _EXACT).any() and not _exact_in_range(data, datatype)):
        info = np.iinfo(DATATYPES[datatype])
        raise InputError(where, f"holds a value outside the range of {datatype} ({info.min} to {info.max})")


def _exact_in_range(data: Any, datatype: str) -> bool:
    """The integer bound checked on the JSON values themselves (float64 rounds 2**63 - 1 up to 2**63)."""
    info = np.iinfo(DATATYPES[datatype])
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, np.ndarray):
            stack.extend(item.ravel().tolist())  # exact Python ints from an integer array
        elif isinstance(item, int | float) and not info.min <= item <= info.max:
            return False
    return True


def _header_length(raw: str | None) -> int | None:
    """The ``Inference-Header-Content-Length`` header as a number (ASCII digits only)."""
    if raw is None:
        return None
    # isdigit() alone accepts "²" (a raw byte 0xB2 read as latin-1), which int() then refuses
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 19:
        raise InputError(_HEADER, "must be a whole number of bytes (ASCII digits)", raw)
    return int(raw)


def parse_infer_request(body: bytes, header_length: int | None, *,
                        max_id_chars: int = 256) -> tuple[dict[str, Any], memoryview | None]:
    """The request object and, with Triton's binary extension, the binary tensor section."""
    binary: memoryview | None = None
    if header_length is not None:
        if header_length < 0 or header_length > len(body):
            raise InputError("inference-header-content-length", "exceeds the body size", header_length)
        binary = memoryview(body)[header_length:]
        body = body[:header_length]
    try:
        req = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InputError("body", f"is not valid JSON ({exc})") from None
    if not isinstance(req, dict):
        raise InputError("body", "must be a JSON object with 'inputs'")
    return check_infer_request(req, max_id_chars=max_id_chars), binary


def check_infer_request(req: dict[str, Any], *, max_id_chars: int = 256) -> dict[str, Any]:
    """``req`` (an OIP request as a dict, from JSON or from gRPC) with its inputs, id and parameters checked."""
    inputs = _field(req, "inputs", list, "body")
    if not inputs:
        raise InputError("inputs", "must hold at least one tensor")
    client_id(req.get("id"), "id", max_id_chars)
    params = req.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise InputError("parameters", "must be an object", params)
    return req


def decode_inputs(req: dict[str, Any], binary: memoryview | None, dep: Deployed) -> np.ndarray:
    """The model's ``[n, k]`` float64 input matrix, in signature order."""
    inputs = req["inputs"]
    offset = 0
    k = dep.n_features
    if len(inputs) == 1 and isinstance(inputs[0], dict) and isinstance(inputs[0].get("shape"), list) \
            and len(inputs[0]["shape"]) == 2:
        X, offset = _tensor(inputs[0], "inputs[0]", binary, offset)
        if X.shape[1] != k:
            raise InputError("inputs[0].shape", f"must be [n, {k}] (columns {', '.join(dep.columns)})",
                             inputs[0]["shape"])
        return np.ascontiguousarray(X)
    columns: list[np.ndarray | None] = [None] * k
    n: int | None = None
    for i, inp in enumerate(inputs):
        where = f"inputs[{i}]"
        if not isinstance(inp, dict):
            raise InputError(where, "must be a tensor object")
        name = _field(inp, "name", str, where)
        pos = dep.column_index.get(name)
        if pos is None:
            raise InputError(f"{where}.name", f"is not an input of {dep.name}; inputs are {', '.join(dep.columns)}",
                             name)
        arr, offset = _tensor(inp, where, binary, offset)
        if arr.ndim == 2:
            if arr.shape[1] != 1:
                raise InputError(f"{where}.shape", "must be [n] or [n, 1] for a named column", list(arr.shape))
            arr = arr[:, 0]
        if n is not None and len(arr) != n:
            raise InputError(f"{where}.shape", f"has {len(arr)} rows; earlier inputs have {n}", list(arr.shape))
        n = len(arr)
        if columns[pos] is not None:
            raise InputError(f"{where}.name", "is given twice", name)
        columns[pos] = arr
    missing = [c for c, col in zip(dep.columns, columns, strict=True) if col is None]
    if missing:
        raise InputError("inputs", f"misses {', '.join(missing)} (every signature column is required)")
    if k == 1:
        return np.asarray(columns[0], dtype=np.float64).reshape(-1, 1)
    return np.column_stack([c for c in columns if c is not None])


def _binary_output(req: dict[str, Any]) -> bool:
    params = req.get("parameters")
    wanted = isinstance(params, dict) and params.get("binary_data_output") is True
    outputs = req.get("outputs")
    if outputs is None:
        return wanted
    if not isinstance(outputs, list):
        raise InputError("outputs", "must be an array of {name}")
    for i, out in enumerate(outputs):
        if not isinstance(out, dict) or out.get("name") != OUTPUT:
            raise InputError(f"outputs[{i}].name", f"must be {OUTPUT!r}, the only output",
                             out.get("name") if isinstance(out, dict) else out)
        p = out.get("parameters")
        if isinstance(p, dict) and "binary_data" in p:
            wanted = p["binary_data"] is True
    return wanted


def encode_infer_response(pred: Prediction, req_id: str | None, binary: bool) -> Response:
    out: dict[str, Any] = {"name": OUTPUT, "datatype": "FP64", "shape": [len(pred.output)]}
    doc: dict[str, Any] = {"model_name": pred.model, "model_version": str(pred.version), "outputs": [out]}
    if req_id is not None:
        doc["id"] = req_id
    if not binary:
        out["data"] = pred.output.tolist()
        return json_response(doc)
    raw = np.ascontiguousarray(pred.output, dtype="<f8").tobytes()
    out["parameters"] = {"binary_data_size": len(raw)}
    header = orjson.dumps(doc)
    return Response(header + raw, 200, {"Inference-Header-Content-Length": str(len(header))},
                    "application/octet-stream")


def model_metadata(server: ModelServer, name: str, version: int | None) -> dict[str, Any]:
    dep = server.deployed(name, version)
    versions = [str(d.version) for d in server.live_route(name).versions()] if version is None else [str(version)]
    return {
        "name": name,
        "versions": versions,
        "platform": "modelmill",
        "inputs": [{"name": c, "datatype": _SIGNATURE_TYPES.get(t.lower(), "FP64"), "shape": [-1]}
                   for c, t in zip(dep.columns, dep.dtypes, strict=True)],
        "outputs": [{"name": OUTPUT, "datatype": "FP64", "shape": [-1]}],
        **({"load_error": server.load_errors[name]} if name in server.load_errors else {}),
    }


def _version(request: Incoming) -> int | None:
    raw = request.path_params.get("version")
    if raw is None:
        return None
    return check_version(raw)


class OipRoutes:
    """The OIP endpoints over one :class:`ModelServer`."""

    def __init__(self, server: ModelServer) -> None:
        self.server = server

    async def live(self, request: Request) -> Response:
        return Response(b"", 200)

    async def ready(self, request: Request) -> Response:
        return Response(b"", 200 if self.server.ready else 400)

    async def server_metadata(self, request: Request) -> Response:
        return json_response({"name": "modelmill", "version": modelmill.__version__,
                              "extensions": ["binary_tensor_data"]})

    async def model_metadata(self, request: Request) -> Response:
        try:
            return json_response(model_metadata(self.server, request.path_params["name"], _version(request)))
        except Exception as exc:
            return error_response(exc)

    async def model_ready(self, request: Request) -> Response:
        try:
            name = request.path_params["name"]
            self.server.deployed(name, _version(request))
            return json_response({"name": name, "ready": True})
        except Exception as exc:
            return error_response(exc)

    async def infer(self, request: Incoming) -> Response:
        t0 = time.perf_counter()
        server = self.server
        name = request.path_params["name"]
        limits = server.config.limits
        choice: Choice | None = None
        stats = metrics.REQUESTS
        stats.inflight += 1
        try:
            async with server.deadlines:
                version = _version(request)
                server.live_route(name)  # an unknown model is refused before its body is read
                headers = request.headers
                body = await read_body(request.receive, headers, limits.max_body_bytes)
                req, binary = parse_infer_request(body, _header_length(headers.get(_HEADER)),
                                                  max_id_chars=limits.max_id_chars)
                want_binary = _binary_output(req)
                params = req.get("parameters") or {}
                key = headers.get("x-routing-key")
                if key is None and isinstance(params.get("routing_key"), str):
                    key = params["routing_key"]
                choice = server.choose(name, routing_key=key, request_id=req.get("id"), version=version)
                X = decode_inputs(req, binary, choice.deployed)
                pred = await server.run(choice, X, started=t0)
                response = encode_infer_response(pred, req.get("id"), want_binary)
                failure: BaseException | None = None
        except Exception as exc:
            failure = exc
            response = error_response(exc, timeout_s=limits.request_timeout_s)
        finally:
            stats.inflight -= 1
        server.record(name, "infer", choice, response.status_code, t0, failure)
        return response
