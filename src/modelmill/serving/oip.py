"""The Open Inference Protocol v2 over REST (the KServe / Triton protocol), with Triton's binary tensors.

Routes: ``GET /v2/health/live``, ``GET /v2/health/ready``, ``GET /v2``,
``GET /v2/models/{name}[/versions/{version}]``, ``GET .../ready`` and
``POST .../infer``. A model's inputs are its signature's columns, each a
tensor of shape ``[-1]``; a single tensor of shape ``[n, k]`` holding the
columns in signature order is accepted too (for a model without string
columns). A ``string`` column takes a ``BYTES`` tensor (JSON strings, or
Triton's binary form); every other column a numeric one, whose JSON values
must fit the datatype (range, whole numbers, true/false). The output is
``output``, ``FP64``, shape ``[n]``. Errors are ``{"error": "..."}`` with a
4xx status naming the input.
"""

from __future__ import annotations

import os
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

__all__ = [
    "BYTES",
    "DATATYPES",
    "LABEL",
    "OUTPUT",
    "OipRoutes",
    "bytes_tensor",
    "check_infer_request",
    "decode_inputs",
    "model_config",
    "model_metadata",
    "model_readiness",
    "model_stats",
    "output_names",
    "output_tensors",
    "parse_infer_request",
    "repository_load",
    "repository_unload",
]

# OIP datatype -> numpy dtype (little-endian, as the binary extension sends them).
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"), "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
BYTES = "BYTES"  # strings: JSON strings, or Triton's binary form (each a 4-byte little-endian length, then UTF-8)
_SIGNATURE_TYPES = {"float64": "FP64", "float32": "FP32", "float": "FP64", "double": "FP64", "int64": "INT64",
                    "int32": "INT32", "int": "INT64", "bool": "BOOL", "boolean": "BOOL", "string": BYTES}
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
    """One input tensor of its declared shape (float64, or an object array of str for BYTES); returns it and
    the new binary offset."""
    datatype = _field(inp, "datatype", str, where)
    dtype = DATATYPES.get(datatype)
    if dtype is None and datatype != BYTES:
        raise InputError(f"{where}.datatype", f"must be one of {', '.join(DATATYPES)} or {BYTES}", datatype)
    shape = _field(inp, "shape", list, where)
    if not shape or len(shape) > 2 or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise InputError(f"{where}.shape", "must be [n] or [n, k] with sizes >= 0", shape)
    size = shape[0] * (shape[1] if len(shape) == 2 else 1)
    params = inp.get("parameters") or {}
    if not isinstance(params, dict):
        raise InputError(f"{where}.parameters", "must be an object", params)
    nbytes = params.get("binary_data_size")
    if dtype is None:
        return _bytes_tensor(inp, where, binary, offset, shape, size, nbytes)
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
            arr = np.asarray(data)  # numbers stay numbers; a string anywhere makes the whole array text
            if arr.dtype.kind not in "fiub" or (arr.dtype.kind == "b" and datatype != "BOOL"):
                raise TypeError(arr.dtype)
            arr = arr.astype(np.float64, copy=False)
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


def _bytes_tensor(inp: dict[str, Any], where: str, binary: memoryview | None, offset: int, shape: list[int],
                  size: int, nbytes: Any) -> tuple[np.ndarray, int]:
    """A BYTES tensor as an object array of str: JSON strings, or Triton's length-prefixed binary form."""
    if nbytes is not None:
        if binary is None or not isinstance(nbytes, int) or isinstance(nbytes, bool) or nbytes < 4 * size \
                or offset + nbytes > len(binary):
            raise InputError(f"{where}.parameters.binary_data_size",
                             f"must match the binary data sent ({size} strings, each a 4-byte length and "
                             "its bytes)", nbytes)
        chunk = binary[offset:offset + nbytes]
        values: list[Any] = []
        pos = 0
        while pos < nbytes:
            if pos + 4 > nbytes:
                raise InputError(f"{where}.parameters.binary_data_size", "ends inside a string's 4-byte length")
            n = int.from_bytes(chunk[pos:pos + 4], "little")
            pos += 4
            if pos + n > nbytes:
                raise InputError(f"{where}.parameters.binary_data_size",
                                 f"ends inside string {len(values)} ({n} bytes declared)")
            values.append(bytes(chunk[pos:pos + n]))
            pos += n
        offset += nbytes
        try:
            strs = [v.decode("utf-8") for v in values]
        except UnicodeDecodeError:
            raise InputError(f"{where}.data", "must hold UTF-8 text for datatype BYTES") from None
    else:
        data = inp.get("data")
        if not isinstance(data, list | np.ndarray):
            raise InputError(f"{where}.data", "must be an array of strings (row-major, flat or nested)")
        strs = []
        stack = [iter(data)]
        while stack:  # flatten nested lists in row-major order without recursion
            item = next(stack[-1], _END)
            if item is _END:
                stack.pop()
            elif isinstance(item, list):
                if len(stack) > 2:
                    raise InputError(f"{where}.data", "nests deeper than the shape [n] or [n, k]")
                stack.append(iter(item))
            elif isinstance(item, str):
                strs.append(item)
            elif isinstance(item, bytes):  # from gRPC's bytes_contents
                try:
                    strs.append(item.decode("utf-8"))
                except UnicodeDecodeError:
                    raise InputError(f"{where}.data", "must hold UTF-8 text for datatype BYTES") from None
            else:
                raise InputError(f"{where}.data", "must hold only strings for datatype BYTES",
                                 type(item).__name__)
    if len(strs) != size:
        raise InputError(f"{where}.data", f"has {len(strs)} values; shape {shape} needs {size}")
    arr = np.empty(size, dtype=object)
    arr[:] = strs
    return arr.reshape(shape), offset


_END = object()


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
    """The model's ``[n, k]`` float64 input matrix, in signature order (string columns as their codes, see
    :mod:`modelmill.serving.strings`)."""
    inputs = req["inputs"]
    offset = 0
    k = dep.n_features
    codes = dep.codes
    if len(inputs) == 1 and isinstance(inputs[0], dict) and isinstance(inputs[0].get("shape"), list) \
            and len(inputs[0]["shape"]) == 2:
        if codes is not None:
            raise InputError("inputs[0].shape", f"must be [n] (one tensor per column): {dep.name} has string "
                             "columns, which a single [n, k] tensor cannot carry", inputs[0]["shape"])
        X, offset = _tensor(inputs[0], "inputs[0]", binary, offset)
        if X.dtype == object:
            raise InputError("inputs[0].datatype", f"must be numeric: {dep.name} has no string columns", BYTES)
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
        is_string = codes is not None and pos in codes.position_set
        if (arr.dtype == object) != is_string:
            want = BYTES if is_string else f"a numeric datatype ({_SIGNATURE_TYPES.get(dep.dtypes[pos], 'FP64')})"
            raise InputError(f"{where}.datatype", f"must be {want}: column {name} is {dep.dtypes[pos]} in the "
                             f"signature of {dep.name}", inp.get("datatype"))
        if is_string and codes is not None:
            arr = codes.encode(pos, arr)
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


LABEL = "label"  # a multiclass model's predicted class name (BYTES)


def output_names(dep: Deployed) -> list[str]:
    return [OUTPUT, LABEL] if dep.task == "multiclass" else [OUTPUT]


def _requested_outputs(req: dict[str, Any], dep: Deployed) -> list[tuple[str, bool]]:
    """The outputs to answer and, for each, whether it goes binary (Triton's ``binary_data``)."""
    params = req.get("parameters")
    default = isinstance(params, dict) and params.get("binary_data_output") is True
    outputs = req.get("outputs")
    names = output_names(dep)
    if outputs is None:
        return [(n, default) for n in names]
    if not isinstance(outputs, list):
        raise InputError("outputs", "must be an array of {name}")
    chosen: list[tuple[str, bool]] = []
    for i, out in enumerate(outputs):
        if not isinstance(out, dict):
            raise InputError(f"outputs[{i}]", "must be an object {name, parameters}", out)
        name = out.get("name")
        if name not in names:
            raise InputError(f"outputs[{i}].name", f"must be one of {', '.join(repr(n) for n in names)}", name)
        p = out.get("parameters")
        wanted = p["binary_data"] is True if isinstance(p, dict) and "binary_data" in p else default
        chosen.append((name, wanted))
    return chosen or [(n, default) for n in names]


def bytes_tensor(values: list[str]) -> bytes:
    """Strings in Triton's binary form: each a 4-byte little-endian length, then its UTF-8 bytes."""
    parts = []
    for v in values:
        raw = v.encode("utf-8")
        parts.append(len(raw).to_bytes(4, "little"))
        parts.append(raw)
    return b"".join(parts)


def output_tensors(pred: Prediction, dep: Deployed, names: list[str] | None = None
                   ) -> list[tuple[str, str, list[int], Any]]:
    """The response tensors: ``output`` (FP64, ``[n]``, or ``[n, C]`` class probabilities / ``[n, m]``
    outputs) and, for a multiclass model, ``label`` (BYTES ``[n]``, the most probable class)."""
    out = pred.output
    tensors: list[tuple[str, str, list[int], Any]] = []
    for name in names or output_names(dep):
        if name == LABEL:
            classes = dep.classes
            labels = [classes[i] if i < len(classes) else str(i) for i in out.argmax(axis=1).tolist()]
            tensors.append((LABEL, BYTES, [len(out)], labels))
        else:
            tensors.append((OUTPUT, "FP64", list(out.shape), out))
    return tensors


def encode_infer_response(pred: Prediction, req_id: str | None, wanted: list[tuple[str, bool]],
                          dep: Deployed) -> Response:
    doc: dict[str, Any] = {"model_name": pred.model, "model_version": str(pred.version), "outputs": []}
    if req_id is not None:
        doc["id"] = req_id
    binary: list[bytes] = []
    for (name, datatype, shape, values), (_, as_binary) in zip(
            output_tensors(pred, dep, [n for n, _ in wanted]), wanted, strict=True):
        out: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
        if as_binary:
            raw = bytes_tensor(values) if datatype == BYTES else np.ascontiguousarray(values, dtype="<f8").tobytes()
            out["parameters"] = {"binary_data_size": len(raw)}
            binary.append(raw)
        else:
            out["data"] = values if datatype == BYTES else values.tolist()
        doc["outputs"].append(out)
    if not binary:
        return json_response(doc)
    header = orjson.dumps(doc)
    return Response(header + b"".join(binary), 200, {"Inference-Header-Content-Length": str(len(header))},
                    "application/octet-stream")


def _output_metadata(dep: Deployed) -> list[dict[str, Any]]:
    """``output``: ``[-1]``, ``[-1, C]`` for a multiclass model (one probability per class), ``[-1, -1]`` for
    a multi-output one; and a multiclass model's ``label``."""
    shape = {"multiclass": [-1, len(dep.classes)], "multi_output": [-1, -1]}.get(dep.task, [-1])
    out: list[dict[str, Any]] = [{"name": OUTPUT, "datatype": "FP64", "shape": shape}]
    if dep.task == "multiclass":
        out.append({"name": LABEL, "datatype": BYTES, "shape": [-1]})
    return out


def model_metadata(server: ModelServer, name: str, version: int | None) -> dict[str, Any]:
    dep = server.deployed(name, version)
    versions = [str(d.version) for d in server.live_route(name).versions()] if version is None else [str(version)]
    return {
        "name": name,
        "versions": versions,
        "platform": "modelmill",
        "inputs": [{"name": c, "datatype": _SIGNATURE_TYPES.get(t.lower(), "FP64"), "shape": [-1]}
                   for c, t in zip(dep.columns, dep.dtypes, strict=True)],
        "outputs": _output_metadata(dep),
        "task": dep.task,
        **({"classes": dep.classes} if dep.task == "multiclass" else {}),
        **({"load_error": server.load_errors[name]} if name in server.load_errors else {}),
    }


_CONFIG_TYPES = {"FP64": "TYPE_FP64", "FP32": "TYPE_FP32", "INT64": "TYPE_INT64", "INT32": "TYPE_INT32",
                 "BOOL": "TYPE_BOOL", BYTES: "TYPE_STRING"}


def model_config(server: ModelServer, name: str, version: int | None) -> dict[str, Any]:
    """The model's configuration in the shape of Triton's ``model_config`` (what tritonclient's
    ``get_model_config`` reads): inputs and outputs without the batch dimension, the batching settings,
    the served versions, and modelmill's own facts (flavor, sha256) under ``parameters``."""
    dep = server.deployed(name, version)
    live = server.live_route(name)
    cfg = server.config
    meta = model_metadata(server, name, version)
    params = {"flavor": str(getattr(dep.handle, "flavor", "function")),
              "sha256": str(getattr(dep.handle, "sha256", "") or ""),
              "compiled": str(dep.compiled).lower()}
    return {
        "name": name,
        "platform": "modelmill",
        "backend": params["flavor"],
        "version_policy": {"specific": {"versions": [str(d.version) for d in live.versions()]}},
        "max_batch_size": cfg.limits.max_batch_rows,
        "input": [{"name": i["name"], "data_type": _CONFIG_TYPES.get(i["datatype"], "TYPE_FP64"),
                   "format": "FORMAT_NONE", "dims": [1]} for i in meta["inputs"]],
        "output": [{"name": o["name"], "data_type": _CONFIG_TYPES.get(o["datatype"], "TYPE_FP64"),
                    "dims": o["shape"][1:] or [1]} for o in meta["outputs"]],
        "dynamic_batching": {"preferred_batch_size": [cfg.max_batch_size],
                             "max_queue_delay_microseconds": cfg.max_wait_us},
        "parameters": {k: {"string_value": v} for k, v in params.items()},
    }


def model_stats(server: ModelServer, name: str | None, version: int | None) -> dict[str, Any]:
    """Triton's statistics response: ``{"model_stats": [...]}`` for every model version that has counts
    (or is served), for one model's versions, or for one version."""
    if name is not None:
        if version is not None:
            server.deployed(name, version)  # 404 for a version not served
        elif not server.serves(name) and not any(n == name for n, _ in server.stats):
            server.live_route(name)  # 404 naming the served models
    entries = [st for (n, v), st in sorted(server.stats.items())
               if (name is None or n == name) and (version is None or v == version)]
    return {"model_stats": [st.to_dict() for st in entries]}


def model_readiness(server: ModelServer, name: str, version: int | None) -> tuple[bool, str]:
    """Whether ``name`` (a version of it) answers now, and if not, why (REST and gRPC ModelReady): a model
    the server knows (not loaded yet, unloaded, failed to load) is not ready; an unknown model, or a version
    of a served model that is not served, is a NotFoundError."""
    ready, reason = server.model_readiness(name, version)
    if ready:
        return True, ""
    if not server.serves(name) and (server.wants_lazily(name) or name in server.load_errors
                                    or name in server.repository_names()):
        return False, reason
    server.deployed(name, version)  # the 404 naming the served models
    raise AssertionError("unreachable")  # pragma: no cover


def _repository_parameters(params: Any) -> dict[str, Any]:
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise InputError("parameters", "must be an object", params)
    return params


def _audit(server: ModelServer, name: str, action: str, who: str) -> None:
    """A repository change is audited with the token's name, as every change of the control plane is
    (it changes what this worker serves, not the stored route table)."""
    project = server.project(f"audit {action}")
    with project.db.begin() as conn:
        project.db.audit(conn, actor=who, action=action, subject=f"model:{name}", detail={"worker_pid": os.getpid()})


async def repository_load(server: ModelServer, name: str, params: Any, who: str) -> None:
    """Triton's repository load (REST and gRPC): load ``name``'s registered version now, serve it, audit it
    as ``who``. ``params`` are the request's parameters: a model ``config`` or ``file:`` is refused."""
    for key in _repository_parameters(params):
        if key == "config" or key.startswith("file:"):
            raise InputError(f"parameters.{key}", "is not supported: modelmill serves registered model "
                             "versions (register one with modelmill models register)")
    await server.load_model(name)
    _audit(server, name, "repository.load", who)


async def repository_unload(server: ModelServer, name: str, params: Any, who: str) -> None:
    """Triton's repository unload (REST and gRPC): stop serving ``name`` until it is loaded again."""
    _repository_parameters(params)
    await server.unload_model(name)
    _audit(server, name, "repository.unload", who)


async def _json_body(request: Request, limit: int) -> dict[str, Any]:
    """A small JSON object body; an empty body is ``{}``."""
    body = await read_body(request.receive, request.headers, limit)
    if not body.strip():
        return {}
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InputError("body", f"is not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise InputError("body", "must be a JSON object")
    return doc


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
                              "extensions": ["binary_tensor_data", "model_repository", "model_configuration",
                                             "statistics"]})

    async def model_metadata(self, request: Request) -> Response:
        try:
            return json_response(model_metadata(self.server, request.path_params["name"], _version(request)))
        except Exception as exc:
            return error_response(exc)

    async def model_config(self, request: Request) -> Response:
        try:
            return json_response(model_config(self.server, request.path_params["name"], _version(request)))
        except Exception as exc:
            return error_response(exc)

    async def model_stats(self, request: Request) -> Response:
        try:
            return json_response(model_stats(self.server, request.path_params.get("name"), _version(request)))
        except Exception as exc:
            return error_response(exc)

    async def repository_index(self, request: Request) -> Response:
        """``POST /v2/repository/index`` with an optional ``{"ready": true}``: Triton's repository index."""
        try:
            body = await _json_body(request, self.server.config.limits.max_body_bytes)
            ready = body.get("ready", False)
            if not isinstance(ready, bool):
                raise InputError("ready", "must be true or false", ready)
            return json_response(self.server.repository_index(ready_only=ready))
        except Exception as exc:
            return error_response(exc)

    async def load(self, request: Request) -> Response:
        """``POST /v2/repository/models/{name}/load``: load the model's registered version now and serve it."""
        from modelmill.security import actor

        try:
            body = await _json_body(request, self.server.config.limits.max_body_bytes)
            await repository_load(self.server, request.path_params["name"], body.get("parameters"), actor(request))
            return Response(b"", 200)
        except Exception as exc:
            return error_response(exc)

    async def unload(self, request: Request) -> Response:
        """``POST /v2/repository/models/{name}/unload``: stop serving the model until it is loaded again."""
        from modelmill.security import actor

        try:
            body = await _json_body(request, self.server.config.limits.max_body_bytes)
            await repository_unload(self.server, request.path_params["name"], body.get("parameters"),
                                    actor(request))
            return Response(b"", 200)
        except Exception as exc:
            return error_response(exc)

    async def model_ready(self, request: Request) -> Response:
        """200 ``{"name", "ready": true}``; a model the server knows but cannot answer with now is a 400
        saying why (not loaded yet, unloaded, failed to load); an unknown model, or a version of a served
        model that is not served, a 404."""
        try:
            name = request.path_params["name"]
            ready, reason = model_readiness(self.server, name, _version(request))
            if ready:
                return json_response({"name": name, "ready": True})
            return json_response({"error": f"model {name!r} is not ready: {reason}", "name": name,
                                  "ready": False, "reason": reason}, 400)
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
                if not server.serves(name) and server.wants_lazily(name):
                    await server.ensure_loaded(name)  # [serving] lazy: the first request loads the model
                server.live_route(name)  # an unknown model is refused before its body is read
                headers = request.headers
                body = await read_body(request.receive, headers, limits.max_body_bytes)
                req, binary = parse_infer_request(body, _header_length(headers.get(_HEADER)),
                                                  max_id_chars=limits.max_id_chars)
                params = req.get("parameters") or {}
                key = headers.get("x-routing-key")
                if key is None and isinstance(params.get("routing_key"), str):
                    key = params["routing_key"]
                choice = server.choose(name, routing_key=key, request_id=req.get("id"), version=version)
                dep = choice.deployed
                wanted = _requested_outputs(req, dep)
                X = decode_inputs(req, binary, dep)
                pred = await server.run(choice, X, started=t0)
                response = encode_infer_response(pred, req.get("id"), wanted, dep)
                failure: BaseException | None = None
        except Exception as exc:
            failure = exc
            response = error_response(exc, timeout_s=limits.request_timeout_s)
        finally:
            stats.inflight -= 1
        server.record(name, "infer", choice, response.status_code, t0, failure)
        return response
