"""The OpenAPI 3 document of the server, written by hand to match :func:`modelmill.serving.app.create_app`.

A test keeps the two honest: every route of the app is here and every path
here is a route, and schemathesis checks the answers against the schemas.
Every operation has an ``operationId``; links lead from a change to the
reads that show it (a route PUT to its GET) and from a model's metadata to
its versions, so a stateful test can follow them. A server passes its first
served model to :func:`openapi_document` so that the examples name it, with
an inference body its signature accepts.

    >>> doc = openapi_document(example=("clf", 1, ["x", "y"]))
    >>> doc["paths"]["/v2/models/{name}/infer"]["post"]["parameters"][0]["example"]
    'clf'
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import modelmill

__all__ = ["openapi_document", "served_example"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERR = _ref("Error")
_ERRORS = {
    "400": _json(_ERR, "Malformed input; `error` names the field."),
    "404": _json(_ERR, "No such model or version is being served."),
}
_INFER_ERRORS = {
    **_ERRORS,
    "408": _json(_ERR, "The request took longer than the request timeout."),
    "413": _json(_ERR, "The body or the number of rows is over the limit."),
    "422": _json(_ERR, "The model could not predict on this input."),
    "503": _json(_ERR, "A backend (feature store) is unavailable."),
}
_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
         "description": "Model name."}
_VERSION = {"name": "version", "in": "path", "required": True,
            "schema": {"type": "string", "pattern": "^[0-9]{1,12}$"},
            "description": "Model version number."}
_ROUTING = {"name": "x-routing-key", "in": "header", "required": False, "schema": {"type": "string"},
            "description": "Sticky routing key (such as a user id) for A/B and canary variants."}

_TENSOR_IN = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1, "maxItems": 2},
        "datatype": {"type": "string", "enum": ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16",
                                                "INT32", "INT64", "FP16", "FP32", "FP64"]},
        "parameters": {"type": "object"},
        "data": {"type": "array", "description": "Row-major values, flat or nested."},
    },
}
_TENSOR_META = {
    "type": "object",
    "required": ["name", "datatype", "shape"],
    "properties": {"name": {"type": "string"}, "datatype": {"type": "string"},
                   "shape": {"type": "array", "items": {"type": "integer"}}},
}

#: What a client's request id is, and the rule for an id sent again (OIP infer and the feature route).
_CLIENT_ID = ("The prediction's id (default: one the server picks; an empty id counts as none), at most "
              "serving.max_id_chars characters: post its label under it. A request of n > 1 rows logs row i as "
              "<id>/<i>. Ids are not deduplicated (as in KServe): a repeat of a known id is answered and logged "
              "again under the same id, by the same variant while the route is unchanged (without a routing "
              "key the variant is chosen by hashing the id), and a label for the id labels every answer logged "
              "under it for the model. Reuse an id only to retry the same request.")

SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
    "ServerMetadata": {
        "type": "object", "required": ["name", "version", "extensions"],
        "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                       "extensions": {"type": "array", "items": {"type": "string"}}},
    },
    "ModelMetadata": {
        "type": "object", "required": ["name", "platform", "inputs", "outputs"],
        "properties": {"name": {"type": "string"}, "versions": {"type": "array", "items": {"type": "string"}},
                       "platform": {"type": "string"},
                       "inputs": {"type": "array", "items": _TENSOR_META},
                       "outputs": {"type": "array", "items": _TENSOR_META},
                       "load_error": {"type": "string", "description": "Why the version that the model's route "
                                      "or alias names cannot be loaded (the versions listed still serve)."}},
    },
    "ModelReady": {"type": "object", "required": ["name", "ready"],
                   "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}}},
    "InferRequest": {
        "type": "object", "required": ["inputs"],
        "properties": {
            "id": {"type": "string", "description": _CLIENT_ID},
            "parameters": {"type": "object"},
            "inputs": {"type": "array", "minItems": 1, "items": _TENSOR_IN},
            "outputs": {"type": "array", "items": {
                "type": "object", "required": ["name"],
                "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}}}},
        },
    },
    "InferResponse": {
        "type": "object", "required": ["model_name", "outputs"],
        "properties": {
            "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
            "parameters": {"type": "object"},
            "outputs": {"type": "array", "items": {
                "type": "object", "required": ["name", "datatype", "shape"],
                "properties": {"name": {"type": "string"}, "datatype": {"type": "string"},
                               "shape": {"type": "array", "items": {"type": "integer"}},
                               "parameters": {"type": "object"},
                               "data": {"type": "array", "items": {"type": "number"}}}}},
        },
    },
    "PredictInstance": {
        "type": "object", "required": ["entities"],
        "properties": {
            "entities": {"type": "object", "description": "Entity keys of the model's feature service.",
                         "additionalProperties": {"oneOf": [{"type": "string"}, {"type": "number"}]}},
            "features": {"type": "object", "description": "Request-time features.",
                         "additionalProperties": {"type": "number"}},
            "routing_key": {"type": "string"},
            "id": {"type": "string", "description": _CLIENT_ID},
        },
    },
    "PredictRequest": {
        "description": "One prediction request, or several under 'instances' (each routed and logged on its own).",
        "anyOf": [
            _ref("PredictInstance"),
            {"type": "object", "required": ["instances"],
             "properties": {"instances": {"type": "array", "minItems": 1, "items": _ref("PredictInstance")},
                            "routing_key": {"type": "string"},
                            "id": {"type": "string", "description": "Instance i without its own id gets "
                                                                    "<id>/<i>."}}},
        ],
    },
    "Variant": {
        "type": "object", "required": ["name", "version"],
        "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 100},
                       "version": {"oneOf": [{"type": "integer", "minimum": 1},
                                             {"type": "string", "minLength": 1, "maxLength": 200}],
                                   "description": "A version number or an alias."},
                       "weight": {"type": "number", "minimum": 0, "default": 1},
                       "shadow": {"type": "boolean", "default": False}},
    },
    "Route": {
        "type": "object", "required": ["model", "salt", "variants"],
        "properties": {"model": {"type": "string"}, "salt": {"type": "string"},
                       "variants": {"type": "array", "items": _ref("Variant")}},
    },
    "RouteList": {"type": "object", "required": ["routes"],
                  "properties": {"routes": {"type": "array", "items": _ref("Route")}}},
    "RouteRequest": {
        "type": "object", "required": ["variants"],
        "properties": {"variants": {"type": "array", "minItems": 1, "items": _ref("Variant")},
                       "salt": {"type": "string", "maxLength": 200}, "reason": {"type": "string", "maxLength": 1000}},
    },
    "Aliases": {"type": "object", "required": ["name", "aliases"],
                "properties": {"name": {"type": "string"},
                               "aliases": {"type": "object", "additionalProperties": {"type": "integer"}}}},
    "AliasRequest": {"type": "object", "required": ["version"],
                     "properties": {"version": {"type": "integer", "minimum": 1},
                                    "reason": {"type": "string", "maxLength": 1000}}},
    "AliasSet": {"type": "object", "required": ["name", "alias", "version"],
                 "properties": {"name": {"type": "string"}, "alias": {"type": "string"},
                                "version": {"type": "integer"}}},
    "Label": {
        "type": "object", "required": ["id", "label"],
        "properties": {"id": {"oneOf": [{"type": "string", "minLength": 1}, {"type": "integer"}],
                              "description": "The prediction's id: its request_id, or the client's own id."},
                       "label": {"oneOf": [{"type": "number"}, {"type": "boolean"}],
                                 "description": "The observed outcome, fitting the task of the model's newest "
                                                "version: 0 or 1 (true, false) for binary (tags.task or "
                                                "lineage.task, else a signature whose one output is "
                                                "'probability'), one of its recorded classes (else a whole "
                                                "number) for multiclass, a finite number for regression or a "
                                                "version that records no task. A label that does not fit is a "
                                                "400 naming it: labels[i].label."},
                       "ts": {"oneOf": [{"type": "string", "format": "date-time"}, {"type": "number"}],
                              "nullable": True,
                              "description": "When the outcome was observed, ISO 8601 or epoch seconds (default: "
                                             "now); per id the label with the newest ts wins."}},
    },
    "LabelsRequest": {"type": "object", "required": ["labels"], "additionalProperties": False,
                      "properties": {"labels": {"type": "array", "minItems": 1, "items": _ref("Label")}}},
    "LabelCounts": {
        "type": "object", "required": ["accepted", "duplicates", "unknown"],
        "properties": {"accepted": {"type": "integer", "minimum": 0,
                                    "description": "Stored, for a logged prediction of the model."},
                       "duplicates": {"type": "integer", "minimum": 0,
                                      "description": "Already stored (or repeated in the batch): not stored again."},
                       "unknown": {"type": "integer", "minimum": 0,
                                   "description": "Stored, but no prediction of the model has that id (yet)."}},
    },
    "Deleted": {"type": "object", "required": ["deleted"], "properties": {"deleted": {"type": "boolean"}}},
    "Prediction": {
        "type": "object", "required": ["prediction", "model", "version", "variant", "request_id"],
        "properties": {"prediction": {"type": "number"}, "model": {"type": "string"},
                       "version": {"type": "integer"}, "variant": {"type": "string"},
                       "request_id": {"type": "string"},
                       "missing": {"type": "array", "items": {"type": "string"},
                                   "description": "Features the online store lacked (absent or expired), "
                                                  "defaulted or passed as NaN by the feature service's "
                                                  "on_missing policy."}},
    },
    "PredictResponse": {
        "anyOf": [
            _ref("Prediction"),
            {"type": "object", "required": ["predictions"],
             "properties": {"predictions": {"type": "array", "items": {"anyOf": [
                 _ref("Prediction"),
                 {"type": "object", "required": ["error", "status"],
                  "properties": {"error": {"type": "string"}, "status": {"type": "integer"}}}]}}}},
        ],
    },
}


def _infer(params: list[dict[str, Any]], summary: str) -> dict[str, Any]:
    return {"post": {
        "summary": summary,
        "parameters": [*params, _ROUTING,
                       {"name": "inference-header-content-length", "in": "header", "required": False,
                        "schema": {"type": "integer", "minimum": 0},
                        "description": "Triton binary extension: length of the JSON header before binary "
                                       "tensors."}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("InferRequest")}}},
        "responses": {
            "200": {"description": "Outputs; binary tensors follow the JSON header when requested.",
                    "content": {"application/json": {"schema": _ref("InferResponse")},
                                "application/octet-stream": {"schema": {"type": "string",
                                                                        "format": "binary"}}}},
            **_INFER_ERRORS,
        },
    }}


def _get(params: list[dict[str, Any]], summary: str, ok: dict[str, Any], errors: dict[str, Any]) -> dict[str, Any]:
    return {"get": {"summary": summary, "parameters": params, "responses": {"200": ok, **errors}}}


_AUTH_ERRORS = {
    "401": _json(_ERR, "No API token, or an unknown or revoked one (header `Authorization: Bearer <token>`)."),
    "403": _json(_ERR, "The token's role does not allow this call."),
}
_BEARER: list[dict[str, list[str]]] = [{"bearer": []}]
_ALIAS = {"name": "alias", "in": "path", "required": True,
          "schema": {"type": "string", "pattern": "^[a-z][a-z0-9_\\-]{0,63}$"},
          "description": "Alias name (production, canary, ...)."}
_ADMIN_ERRORS = {
    "400": _json(_ERR, "Malformed input; `error` names the field."),
    "404": _json(_ERR, "No such model, version, alias or route."),
    "409": _json(_ERR, "The version's artifact fails its checksum, or a rollout holds the route."),
    "413": _json(_ERR, "The body is over the size limit."),
    "503": _json(_ERR, "The metadata database or registry is unavailable."),
}


def _guarded(op: dict[str, Any]) -> dict[str, Any]:
    """``op`` (one method's operation) with bearer security and the 401/403 answers."""
    return {**op, "security": _BEARER, "responses": {**op["responses"], **_AUTH_ERRORS}}


def _control(method: str, params: list[dict[str, Any]], summary: str, ok: dict[str, Any],
             body: str | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "parameters": params, "responses": {"200": ok, **_ADMIN_ERRORS}}
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(body)}}}
    return {method: _guarded(op)}


def _admin_paths() -> dict[str, Any]:
    name = {**_NAME, "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.\\-]{0,127}$"}}
    route = _json(_ref("Route"), "The route.")
    return {
        "/v1/routes": _control("get", [], "Every stored traffic route (role read)",
                               _json(_ref("RouteList"), "The routes.")),
        "/v1/routes/{name}": {
            **_control("get", [name], "A model's traffic route (role read)", route),
            **_control("put", [name], "Replace a model's traffic route (role admin)", route, "RouteRequest"),
            **_control("delete", [name], "Remove a model's route; it falls back to its configured reference "
                       "(role admin)", _json(_ref("Deleted"), "Removed.")),
        },
        "/v1/models/{name}/aliases": _control("get", [name], "A model's aliases (role read)",
                                              _json(_ref("Aliases"), "Alias to version.")),
        "/v1/models/{name}/aliases/{alias}": {
            **_control("put", [name, _ALIAS], "Point an alias at a version (role admin)",
                       _json(_ref("AliasSet"), "The alias now."), "AliasRequest"),
            **_control("delete", [name, _ALIAS], "Delete an alias (role admin)",
                       _json(_ref("Deleted"), "Deleted.")),
        },
        "/v1/models/{name}/labels": _control("post", [name], "Store ground truth for a model's predictions "
                                             "(role label or admin)",
                                             _json(_ref("LabelCounts"), "How the labels were counted."),
                                             "LabelsRequest"),
    }


def openapi_document(*, auth_required: bool = False,
                     example: tuple[str, int, Sequence[str]] | None = None) -> dict[str, Any]:
    """The document; with ``auth_required`` predictions, metadata and metrics declare bearer security too.

    ``example`` is a served model (name, version, input columns): the parameters and request
    bodies get examples that it answers with 200.
    """
    doc = _document()
    paths = doc["paths"]
    for path, ops in paths.items():
        for method, op in ops.items():
            op["operationId"] = _operation_id(method, path)
    _link(paths)
    if auth_required:
        for path, ops in paths.items():
            if path in _DATA_PLANE:
                paths[path] = {m: _guarded(op) for m, op in ops.items()}
    if example is not None:
        doc = _with_examples(doc, *example)
    return doc


def served_example(server: Any) -> tuple[str, int, list[str]] | None:
    """The first model ``server`` serves, as :func:`openapi_document` takes its ``example``; None if none."""
    names = server.model_names()
    if not names:
        return None
    deployed = server.deployed(names[0])
    return names[0], deployed.version, list(deployed.columns)


def _operation_id(method: str, path: str) -> str:
    """``put /v1/routes/{name}`` -> ``put_v1_routes_name``: unique, and stable across releases."""
    words = [w.strip("{}") for w in path.split("/") if w]
    return "_".join([method, *(w.replace(".", "_") for w in words)]) if words else method


def _links(links: dict[str, tuple[str, str, dict[str, str]]]) -> dict[str, Any]:
    return {key: {"operationId": _operation_id(method, path), "parameters": params}
            for key, (method, path, params) in links.items()}


def _link(paths: dict[str, Any]) -> None:
    """Links from each change to the reads that show it, and from a model's metadata to its versions."""
    name = {"name": "$request.path.name"}
    version = {**name, "version": "$response.body#/versions/0"}
    both = {**name, "alias": "$request.path.alias"}
    follow = {
        ("put", "/v1/routes/{name}"): {"GetRoute": ("get", "/v1/routes/{name}", name),
                                       "DeleteRoute": ("delete", "/v1/routes/{name}", name),
                                       "Infer": ("post", "/v2/models/{name}/infer", name)},
        ("put", "/v1/models/{name}/aliases/{alias}"): {
            "GetAliases": ("get", "/v1/models/{name}/aliases", name),
            "DeleteAlias": ("delete", "/v1/models/{name}/aliases/{alias}", both)},
        ("get", "/v2/models/{name}"): {
            "VersionMetadata": ("get", "/v2/models/{name}/versions/{version}", version),
            "VersionReady": ("get", "/v2/models/{name}/versions/{version}/ready", version),
            "VersionInfer": ("post", "/v2/models/{name}/versions/{version}/infer", version)},
        ("get", "/v1/models/{name}/aliases"): {"PutRoute": ("put", "/v1/routes/{name}", name)},
    }
    for (method, path), links in follow.items():
        paths[path][method]["responses"]["200"]["links"] = _links(links)


def _with_examples(doc: dict[str, Any], model: str, version: int, columns: Sequence[str]) -> dict[str, Any]:
    """``doc`` with examples naming ``model``: path parameters, and bodies it answers with 200."""
    doc = copy.deepcopy(doc)  # the parameter objects are shared between operations
    values = {"name": model, "version": str(version), "alias": "canary"}
    infer = {"id": "example-1", "inputs": [{"name": c, "shape": [1], "datatype": "FP64", "data": [0.5]}
                                           for c in columns]}
    bodies = {"InferRequest": infer,
              "RouteRequest": {"variants": [{"name": "default", "version": version}], "reason": "example"},
              "AliasRequest": {"version": version, "reason": "example"},
              "LabelsRequest": {"labels": [{"id": "example-1", "label": 1, "ts": "2026-12-01T10:00:00Z"}]}}
    for ops in doc["paths"].values():
        for op in ops.values():
            for param in op.get("parameters", []):
                if param["in"] == "path" and param["name"] in values:
                    param["example"] = values[param["name"]]
            content = op.get("requestBody", {}).get("content", {}).get("application/json")
            ref = content["schema"].get("$ref", "") if content else ""
            if ref.rsplit("/", 1)[-1] in bodies:
                content["example"] = bodies[ref.rsplit("/", 1)[-1]]
    return doc


# Guarded only with auth = "required" (see modelmill.security.auth).
_DATA_PLANE = ("/v2/models/{name}", "/v2/models/{name}/versions/{version}", "/v2/models/{name}/ready",
               "/v2/models/{name}/versions/{version}/ready", "/v2/models/{name}/infer",
               "/v2/models/{name}/versions/{version}/infer", "/v1/models/{name}/predict", "/metrics")


def _document() -> dict[str, Any]:
    both = [_NAME, _VERSION]
    return {
        "openapi": "3.0.3",
        "info": {"title": "modelmill serving", "version": modelmill.__version__,
                 "description": "Open Inference Protocol v2 (REST) and feature-backed predictions."},
        "paths": {
            "/v2/health/live": _get([], "Liveness", {"description": "The server is live (empty body)."}, {}),
            "/v2/health/ready": _get([], "Readiness", {"description": "Every served model is loaded."},
                                     {"400": {"description": "Not ready yet (empty body)."}}),
            "/v2": _get([], "Server metadata", _json(_ref("ServerMetadata"), "Server metadata."), {}),
            "/v2/models/{name}": _get([_NAME], "Model metadata", _json(_ref("ModelMetadata"), "Metadata."),
                                      _ERRORS),
            "/v2/models/{name}/versions/{version}": _get(both, "Model version metadata",
                                                         _json(_ref("ModelMetadata"), "Metadata."), _ERRORS),
            "/v2/models/{name}/ready": _get([_NAME], "Model readiness", _json(_ref("ModelReady"), "Ready."),
                                            _ERRORS),
            "/v2/models/{name}/versions/{version}/ready": _get(both, "Model version readiness",
                                                               _json(_ref("ModelReady"), "Ready."), _ERRORS),
            "/v2/models/{name}/infer": _infer([_NAME], "Inference"),
            "/v2/models/{name}/versions/{version}/infer": _infer(both, "Inference on one version"),
            "/v1/models/{name}/predict": {"post": {
                "summary": "Feature-backed prediction from entity keys",
                "parameters": [_NAME, _ROUTING],
                "requestBody": {"required": True,
                                "content": {"application/json": {"schema": _ref("PredictRequest")}}},
                "responses": {"200": _json(_ref("PredictResponse"), "The prediction."), **_INFER_ERRORS},
            }},
            "/metrics": _get([], "Prometheus metrics",
                             {"description": "Prometheus text format.",
                              "content": {"text/plain": {"schema": {"type": "string"}}}}, {}),
            "/openapi.json": _get([], "This document",
                                  {"description": "OpenAPI 3 document.",
                                   "content": {"application/json": {"schema": {"type": "object"}}}}, {}),
            **_admin_paths(),
        },
        "components": {"schemas": SCHEMAS,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                      "description": "An API token from `modelmill token create`."}}},
    }
