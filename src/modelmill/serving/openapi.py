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
from modelmill.events import KINDS
from modelmill.serving.stats import KINDS as STAT_KINDS

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
                                                "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES"]},
        "parameters": {"type": "object"},
        "data": {"type": "array", "description": "Row-major values, flat or nested: numbers (true/false for "
                 "BOOL) that fit the datatype, or strings for BYTES (a model's string columns)."},
    },
}
_TENSOR_META = {
    "type": "object",
    "required": ["name", "datatype", "shape"],
    "properties": {"name": {"type": "string"}, "datatype": {"type": "string"},
                   "shape": {"type": "array", "items": {"type": "integer"}}},
}

_NUM = {"type": "number"}
_DURATION = {"type": "object", "required": ["count", "ns"],
             "properties": {"count": {"type": "integer"}, "ns": {"type": "integer"}}}
_CONFIG_TENSOR = {"type": "object", "required": ["name", "data_type", "dims"],
                  "properties": {"name": {"type": "string"}, "data_type": {"type": "string"},
                                 "format": {"type": "string"}, "dims": {"type": "array", "items": {"type": "integer"}}}}
_NUM_OR_NULL = {"type": "number", "nullable": True}
_STR_OR_NULL = {"type": "string", "nullable": True}
_OBJ = {"type": "object"}
_MODEL_NAME = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.\\-]{0,127}$"}
_THRESHOLD = {"type": "number", "minimum": 0, "nullable": True, "description": "null turns the check off."}

# The control plane of modelmill.serving.control (the bodies mirror the CLI's options).
CONTROL_SCHEMAS: dict[str, Any] = {
    "ModelSummary": {
        "type": "object", "required": ["name", "latest_version", "aliases", "versions"],
        "properties": {"name": {"type": "string"}, "latest_version": {"type": "integer"},
                       "created_at": _NUM, "updated_at": _NUM,
                       "aliases": {"type": "object", "additionalProperties": {"type": "integer"}},
                       "versions": {"type": "array", "items": {"type": "integer"}}},
    },
    "ModelList": {"type": "object", "required": ["models"],
                  "properties": {"models": {"type": "array", "items": _ref("ModelSummary")}}},
    "VersionDetail": {
        "type": "object",
        "required": ["name", "version", "ref", "flavor", "signature", "metrics", "lineage", "gate", "aliases",
                     "gate_history", "alias_history"],
        "properties": {
            "name": {"type": "string"}, "version": {"type": "integer"}, "ref": {"type": "string"},
            "flavor": {"type": "string"}, "artifact_path": {"type": "string"}, "sha256": {"type": "string"},
            "size": {"type": "integer"}, "signature": _OBJ, "run_id": _STR_OR_NULL, "metrics": _OBJ,
            "lineage": {**_OBJ, "description": "Where it came from: training_set, feature_definitions, "
                                               "feature_service, derived_from, ..."},
            "tags": _OBJ, "created_at": _NUM,
            "gate": {**_OBJ, "nullable": True, "description": "The latest gate decision."},
            "aliases": {"type": "array", "items": {"type": "string"}},
            "run": {**_OBJ, "nullable": True, "description": "The tracked run behind the version."},
            "gate_history": {"type": "array", "description": "Every gate decision on the version, oldest first.",
                             "items": {"type": "object", "required": ["at", "actor", "decision"],
                                       "properties": {"at": _NUM, "actor": {"type": "string"},
                                                      "decision": _OBJ}}},
            "alias_history": {"type": "array", "description": "Every alias move to or from the version.",
                              "items": {"type": "object", "required": ["at", "actor", "alias", "version"],
                                        "properties": {"at": _NUM, "actor": {"type": "string"},
                                                       "name": {"type": "string"}, "alias": {"type": "string"},
                                                       "version": {"type": "integer", "nullable": True},
                                                       "previous": {"type": "integer", "nullable": True},
                                                       "reason": {"type": "string"}}}},
        },
    },
    "Rollout": {
        "type": "object",
        "required": ["id", "model", "candidate", "baseline", "plan", "stage", "status", "guardrails", "reason"],
        "properties": {
            "id": {"type": "integer"}, "model": {"type": "string"}, "candidate": {"type": "integer"},
            "baseline": {"oneOf": [{"type": "integer"}, {"type": "string"}]},
            "plan": {"type": "array", "items": {"oneOf": [{"type": "integer"}, {"type": "string"}]}},
            "stage": {"type": "string"}, "stage_index": {"type": "integer"},
            "status": {"type": "string", "enum": ["running", "completed", "rolled_back"]},
            "min_requests": {"type": "integer"}, "stage_seconds": _NUM, "max_stage_seconds": _NUM_OR_NULL,
            "on_timeout": {"type": "string"}, "guardrails": _OBJ, "stage_started_at": _NUM,
            "created_at": _NUM, "updated_at": _NUM, "reason": {"type": "string"},
        },
    },
    "RolloutList": {"type": "object", "required": ["rollouts"],
                    "properties": {"rollouts": {"type": "array", "items": _ref("Rollout")}}},
    "RolloutStatus": {
        "type": "object", "required": ["rollout", "events"],
        "properties": {"rollout": _ref("Rollout"),
                       "events": {"type": "array", "items": {
                           "type": "object", "required": ["at", "action", "actor", "detail"],
                           "properties": {"at": _NUM, "action": {"type": "string"}, "from": _STR_OR_NULL,
                                          "to": _STR_OR_NULL, "actor": {"type": "string"}, "detail": _OBJ}}}},
    },
    "RolloutStarted": {"type": "object", "required": ["rollout"], "properties": {"rollout": _ref("Rollout")}},
    "RolloutStep": {
        "type": "object", "required": ["action", "reason", "rollout"],
        "properties": {"action": {"type": "string", "enum": ["advance", "complete", "rollback"]},
                       "reason": {"type": "string"}, "breaches": {"type": "array", "items": _OBJ},
                       "checks": {"type": "array", "items": _OBJ}, "observed": _OBJ,
                       "rollout": _ref("Rollout")},
    },
    "Guardrails": {
        "type": "object", "additionalProperties": False,
        "properties": {"max_error_rate_increase": _THRESHOLD, "max_latency_ratio": _THRESHOLD,
                       "max_output_shift": _THRESHOLD, "max_label_loss_increase": _THRESHOLD,
                       "max_estimated_loss_increase": _THRESHOLD,
                       "latency_slack_ms": {"type": "number", "minimum": 0},
                       "significance": {"type": "number", "minimum": 0, "exclusiveMinimum": True,
                                        "maximum": 0.999999},
                       "min_errors": {"type": "integer", "minimum": 1, "maximum": 10**12},
                       "min_samples": {"type": "integer", "minimum": 1, "maximum": 10**12,
                                       "description": "Observations each guardrail needs before it can pass."}},
    },
    "RolloutRequest": {
        "type": "object", "required": ["model", "version"], "additionalProperties": False,
        "description": "The options of `modelmill rollout start`. The rollout is stored and its first stage's "
                       "traffic set; `modelmill rollout run NAME`, or `modelmill loop` for a model of its "
                       "[models.NAME] tables, drives it.",
        "properties": {
            "model": _MODEL_NAME,
            "version": {"type": "integer", "minimum": 1, "maximum": 2**63 - 1, "description": "The candidate."},
            "baseline": {"oneOf": [{"type": "integer", "minimum": 1, "maximum": 2**63 - 1},
                                   {"type": "string", "pattern": "^[a-z][a-z0-9_\\-]{0,63}$"}],
                         "default": "production", "description": "What serves today: a version or an alias."},
            "plan": {"oneOf": [{"type": "string", "maxLength": 200},
                               {"type": "array", "minItems": 1, "maxItems": 100,
                                "items": {"oneOf": [{"type": "string", "enum": ["shadow"]}, {"type": "integer"}]}}],
                     "default": "shadow,5,10,50,100"},
            "min_requests": {"type": "integer", "minimum": 0, "maximum": 10**12, "default": 100},
            "stage_seconds": {"type": "number", "minimum": 0, "maximum": 10**9, "default": 60},
            "max_stage_seconds": {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 10**10,
                                  "nullable": True},
            "on_timeout": {"type": "string", "enum": ["rollback", "hold"], "default": "rollback"},
            "guardrails": _ref("Guardrails"),
            "off": {"type": "array", "maxItems": 100,
                    "items": {"type": "string", "enum": ["error_rate", "latency_p95", "output_shift", "label_loss"]}},
        },
    },
    "ReasonRequest": {"type": "object", "additionalProperties": False,
                      "properties": {"reason": {"type": "string", "maxLength": 1000}}},
    "ExperimentVariant": {
        "type": "object", "required": ["name", "weight"], "additionalProperties": False,
        "properties": {"name": {"type": "string", "maxLength": 200},
                       "weight": {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 1e9},
                       "version": {"oneOf": [{"type": "integer", "minimum": 1},
                                             {"type": "string", "minLength": 1, "maxLength": 64}],
                                   "nullable": True,
                                   "description": "On a served model: the version or alias this variant serves."}},
    },
    "ExperimentRequest": {
        "type": "object", "required": ["name", "variants", "metric"], "additionalProperties": False,
        "description": "The options of `modelmill experiment create`; the control is the first variant.",
        "properties": {
            "name": {"type": "string", "maxLength": 200},
            "variants": {"type": "array", "minItems": 2, "maxItems": 100, "items": _ref("ExperimentVariant")},
            "metric": {"type": "string", "maxLength": 200, "description": "The primary metric."},
            "direction": {"type": "string", "enum": ["higher", "lower"], "nullable": True},
            "model": {**_MODEL_NAME, "nullable": True, "description": "A served model whose route is split."},
            "unit": {"type": "string", "maxLength": 200}, "salt": {"type": "string", "maxLength": 200},
            "guardrails": {"type": "array", "maxItems": 100,
                           "items": {"type": "string", "minLength": 1, "maxLength": 200}},
            "min_sample_size": {"type": "integer", "minimum": 0, "maximum": 10**12},
            "alpha": {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 0.5},
            "correction": {"type": "string", "enum": ["holm", "bh", "none"], "default": "holm",
                           "description": "Multiple-testing correction across the treatments: Holm (family-wise "
                                          "error), Benjamini-Hochberg (false discovery rate) or none."},
        },
    },
    "Experiment": {
        "type": "object", "required": ["name", "variants", "primary_metric", "direction", "status", "salt"],
        "properties": {
            "name": {"type": "string"}, "model": _STR_OR_NULL, "status": {"type": "string"},
            "unit": {"type": "string"}, "salt": {"type": "string"},
            "variants": {"type": "array", "items": {
                "type": "object", "required": ["name", "weight"],
                "properties": {"name": {"type": "string"}, "weight": _NUM,
                               "version": {"oneOf": [{"type": "integer"}, {"type": "string"}], "nullable": True}}}},
            "primary_metric": {"type": "string"}, "direction": {"type": "string"},
            "guardrails": {"type": "array", "items": {"type": "string"}},
            "min_sample_size": {"type": "integer"}, "alpha": _NUM, "correction": {"type": "string"},
            "created_at": _NUM, "stopped_at": _NUM_OR_NULL,
            "result": {**_OBJ, "nullable": True},
        },
    },
    "ExperimentResults": {
        "type": "object", "required": ["experiment", "analysis", "decisions", "no_data"],
        "properties": {
            "experiment": {"allOf": [_ref("Experiment"), {
                "type": "object", "required": ["exposures", "srm_p_value", "min_sample_reached"],
                "properties": {"exposures": {"type": "object", "additionalProperties": {"type": "integer"}},
                               "srm_p_value": _NUM_OR_NULL, "min_sample_reached": {"type": "boolean"}}}]},
            "analysis": {**_OBJ, "nullable": True,
                         "description": "As `modelmill experiment analyze NAME --json` prints it."},
            "decisions": {"type": "array", "items": {
                "type": "object", "required": ["treatment", "decision", "reason"],
                "properties": {"treatment": {"type": "string"}, "reason": {"type": "string"},
                               "decision": {"type": "string",
                                            "enum": ["keep_control", "switch_to_treatment", "continue"]}}}},
            "no_data": {"type": "string", "nullable": True,
                        "description": "Why there is no analysis yet (then no decision either)."},
        },
    },
    "StopRequest": {"type": "object", "additionalProperties": False,
                    "properties": {"winner": {"type": "string", "maxLength": 200, "nullable": True,
                                              "description": "The variant that keeps all traffic (default: the "
                                                             "control)."}}},
    "TriggerRequest": {
        "type": "object", "required": ["reason"], "additionalProperties": False,
        "properties": {"reason": {"type": "string", "minLength": 1, "maxLength": 500},
                       "key": {"type": "string", "maxLength": 300, "nullable": True,
                               "description": "Idempotency key: a repeated key starts the pipeline once."},
                       "params": {"type": "object", "description": "The pipeline's parameters."}},
    },
    "TriggerQueued": {"type": "object", "required": ["trigger_id", "pipeline"],
                      "properties": {"trigger_id": {"type": "integer"}, "pipeline": {"type": "string"}}},
    "PipelineRunStatus": {
        "type": "object", "required": ["trigger", "run"],
        "properties": {
            "trigger": {"type": "object", "required": ["id", "pipeline", "status", "reason"],
                        "properties": {"id": {"type": "integer"}, "pipeline": {"type": "string"},
                                       "key": {"type": "string"}, "reason": {"type": "string"}, "params": _OBJ,
                                       "status": {"type": "string",
                                                  "enum": ["pending", "running", "finished", "failed"]},
                                       "created_at": _NUM, "started_at": _NUM_OR_NULL, "ended_at": _NUM_OR_NULL,
                                       "claimed_by": _STR_OR_NULL, "pipeline_run_id": _STR_OR_NULL,
                                       "error": _STR_OR_NULL}},
            "run": {**_OBJ, "nullable": True, "description": "The pipeline run the trigger started: its steps "
                                                             "and lineage."},
        },
    },
    "WebhookDeliveries": {
        "type": "object", "required": ["deliveries", "counts"],
        "properties": {
            "counts": {"type": "object", "description": "Deliveries by status, over the whole outbox.",
                       "required": ["pending", "delivering", "delivered", "failed"],
                       "additionalProperties": {"type": "integer"}},
            "deliveries": {"type": "array", "description": "Newest first.", "items": {
                "type": "object",
                "required": ["id", "event_id", "kind", "webhook", "url", "status", "attempts", "next_at",
                             "last_status", "last_error", "created_at", "delivered_at", "subject", "data"],
                "properties": {
                    "id": {"type": "integer"}, "event_id": {"type": "string", "description": "The same at every "
                                                            "webhook and attempt: receivers dedupe on it."},
                    "kind": {"type": "string"}, "webhook": {"type": "string"}, "url": {"type": "string"},
                    "status": {"type": "string", "enum": ["pending", "delivering", "delivered", "failed"]},
                    "attempts": {"type": "integer"}, "next_at": _NUM,
                    "last_status": {"type": "integer", "nullable": True,
                                    "description": "The HTTP status of the last attempt."},
                    "last_error": {**_STR_OR_NULL, "description": "Why the last attempt failed."},
                    "created_at": _NUM, "updated_at": _NUM, "delivered_at": _NUM_OR_NULL,
                    "subject": {"type": "string"}, "data": _OBJ}}},
        },
    },
    "Monitoring": {
        "type": "object", "required": ["windows", "performance", "alerts"],
        "properties": {
            "performance": {"type": "array", "description": "The delayed-label metrics of every version served "
                            "in the last [monitoring] label_window, by its task, each with the count of labelled "
                            "predictions behind it (as `modelmill monitor --once --json` reports them).",
                            "items": {
                "type": "object", "required": ["model", "version", "n", "status", "metrics"],
                "properties": {"model": {"type": "string"}, "version": {"type": "integer"},
                               "task": {"type": "string", "nullable": True}, "n": {"type": "integer"},
                               "status": {"type": "string", "enum": ["measured", "no_data"]},
                               "reason": {"type": "string", "nullable": True},
                               "metrics": {"type": "object", "additionalProperties": {
                                   "type": "object", "required": ["value", "n", "status"],
                                   "properties": {"value": _NUM_OR_NULL, "n": {"type": "integer"},
                                                  "status": {"type": "string", "enum": ["measured", "no_data"]},
                                                  "reason": {"type": "string", "nullable": True}}}}}}},
            "windows": {"type": "array", "items": {
                "type": "object", "required": ["model", "version", "at", "n_rows", "status", "metrics"],
                "properties": {"model": {"type": "string"}, "version": {"type": "integer"}, "at": _NUM,
                               "window_start": _NUM, "window_end": _NUM, "n_rows": {"type": "integer"},
                               "status": {"type": "string", "enum": ["pass", "fail", "no_data"]},
                               "drift_share": _NUM_OR_NULL, "dataset_drift": {"type": "boolean", "nullable": True},
                               "drifted": {"type": "array", "items": {"type": "string"}}, "drift": _OBJ,
                               "metrics": {"type": "array", "items": _OBJ}}}},
            "alerts": {"type": "array", "items": {
                "type": "object", "required": ["rule", "state", "labels"],
                "properties": {"rule": {"type": "string"}, "state": {"type": "string"}, "labels": _OBJ,
                               "annotations": _OBJ, "value": _NUM_OR_NULL, "pending_since": _NUM_OR_NULL,
                               "started_at": _NUM_OR_NULL, "resolved_at": _NUM_OR_NULL, "updated_at": _NUM,
                               "actions": {"type": "array", "items": _OBJ, "nullable": True}}}},
        },
    },
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
                       "task": {"type": "string", "enum": ["binary", "multiclass", "regression", "multi_output"]},
                       "classes": {"type": "array", "items": {"type": "string"},
                                   "description": "A multiclass model's classes, in the order of its output's "
                                                  "columns."},
                       "load_error": {"type": "string", "description": "Why the version that the model's route "
                                      "or alias names cannot be loaded (the versions listed still serve)."}},
    },
    "ModelConfig": {
        "type": "object", "required": ["name", "platform", "input", "output"],
        "description": "The model's configuration in the shape of Triton's model_config.",
        "properties": {
            "name": {"type": "string"}, "platform": {"type": "string"}, "backend": {"type": "string"},
            "version_policy": {"type": "object"}, "max_batch_size": {"type": "integer"},
            "input": {"type": "array", "items": _CONFIG_TENSOR}, "output": {"type": "array", "items": _CONFIG_TENSOR},
            "dynamic_batching": {"type": "object"}, "parameters": {"type": "object"},
        },
    },
    "ModelStatsResponse": {
        "type": "object", "required": ["model_stats"],
        "properties": {"model_stats": {"type": "array", "items": {
            "type": "object",
            "required": ["name", "version", "last_inference", "inference_count", "execution_count",
                         "inference_stats", "batch_stats"],
            "properties": {
                "name": {"type": "string"}, "version": {"type": "string"},
                "last_inference": {"type": "integer", "description": "Milliseconds since the epoch (0: never)."},
                "inference_count": {"type": "integer"}, "execution_count": {"type": "integer"},
                "inference_stats": {"type": "object", "required": list(STAT_KINDS),
                                    "properties": {k: _DURATION for k in STAT_KINDS}},
                "batch_stats": {"type": "array", "items": {
                    "type": "object", "required": ["batch_size", "compute_infer"],
                    "properties": {"batch_size": {"type": "integer"}, "compute_input": _DURATION,
                                   "compute_infer": _DURATION, "compute_output": _DURATION}}},
            }}}},
    },
    "RepositoryIndexRequest": {"type": "object", "properties": {
        "ready": {"type": "boolean", "description": "Only the models that are ready."}}},
    "RepositoryIndex": {"type": "array", "items": {
        "type": "object", "required": ["name", "state"],
        "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                       "state": {"type": "string", "enum": ["READY", "UNAVAILABLE"]},
                       "reason": {"type": "string", "description": "Why the model is not ready."}}}},
    "RepositoryLoadRequest": {"type": "object", "properties": {"parameters": {
        "type": "object", "description": "Triton's config and file: parameters are refused (400): modelmill "
                                         "serves registered versions."}}},
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
                               "data": {"type": "array", "description": "Numbers (output, row-major) or strings "
                                        "(label: a multiclass model's predicted class)."}}}},
        },
    },
    "PredictInstance": {
        "type": "object", "required": ["entities"],
        "properties": {
            "entities": {"type": "object", "description": "Entity keys of the model's feature service.",
                         "additionalProperties": {"oneOf": [{"type": "string"}, {"type": "number"}]}},
            "features": {"type": "object", "nullable": True,
                         "description": "Request-time features: numbers, and strings for the model's string "
                                        "(categorical) columns.",
                         "additionalProperties": {"oneOf": [{"type": "number"}, {"type": "string"}]}},
            "routing_key": {"type": "string", "nullable": True},
            "id": {"type": "string", "nullable": True, "description": _CLIENT_ID},
        },
    },
    "PredictRequest": {
        "description": "One prediction request, or several under 'instances' (each routed and logged on its own).",
        "anyOf": [
            _ref("PredictInstance"),
            {"type": "object", "required": ["instances"],
             "properties": {"instances": {
                                "type": "array", "minItems": 1,
                                # partial success: the items are not held to PredictInstance here, since an
                                # instance whose features fail is answered in its place, not refused with the rest
                                "items": {"type": "object", "description": "A PredictInstance. One without an "
                                          "'entities' object refuses the whole request (400); one whose features "
                                          "or lookup fail gets its own error and status in its place in the "
                                          "answer, and the others are still predicted."}},
                            "routing_key": {"type": "string", "nullable": True},
                            "id": {"type": "string", "nullable": True,
                                   "description": "Instance i without its own id gets <id>/<i>."}}},
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
    **CONTROL_SCHEMAS,
    "Prediction": {
        "type": "object", "required": ["prediction", "model", "version", "variant", "request_id"],
        "properties": {"prediction": {"oneOf": [{"type": "number"}, {"type": "string"},
                                                {"type": "array", "items": {"type": "number"}}],
                                      "description": "A number (binary: the positive class's probability; "
                                                     "regression: the value), the most probable class's name "
                                                     "(multiclass), or the values of a multi-output model."},
                       "probabilities": {"type": "object", "additionalProperties": {"type": "number"},
                                         "description": "Multiclass: every class's probability."},
                       "model": {"type": "string"},
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
             body: str | None = None, *, body_required: bool = True) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "parameters": params, "responses": {"200": ok, **_ADMIN_ERRORS}}
    if body is not None:
        op["requestBody"] = {"required": body_required, "content": {"application/json": {"schema": _ref(body)}}}
    return {method: _guarded(op)}


def _control_paths() -> dict[str, Any]:
    """The routes of :mod:`modelmill.serving.control` (reads need role read, changes role admin)."""
    name = {**_NAME, "schema": _MODEL_NAME}
    version = {**_VERSION, "description": "Model version number."}
    experiment = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
                  "description": "Experiment name."}
    pipeline = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
                "description": "Pipeline name: a registered name, or 'module:attr' of a module listed in "
                               "[training] pipelines."}
    trigger = {"name": "id", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"},
               "description": "The trigger id POST /v1/pipelines/{name}/runs answered."}
    model_query = {"name": "model", "in": "query", "required": False, "schema": _MODEL_NAME,
                   "description": "Only this model."}
    step = _json(_ref("RolloutStep"), "What the action did, and the rollout now.")
    return {
        "/v1/models": _control("get", [], "Every registered model with its versions and aliases (role read)",
                               _json(_ref("ModelList"), "The models, by name.")),
        "/v1/models/{name}/versions/{version}": _control(
            "get", [name, version], "One version: lineage, tracked run, gate decisions and alias history "
            "(role read)", _json(_ref("VersionDetail"), "The version.")),
        "/v1/rollouts": {
            **_control("get", [], "The active rollouts (role read)", _json(_ref("RolloutList"), "Oldest first.")),
            **_control("post", [], "Start a rollout; `modelmill rollout run NAME` or `modelmill loop` drives it "
                       "(role admin)", _json(_ref("RolloutStarted"), "Stored, at its first stage."),
                       "RolloutRequest"),
        },
        "/v1/rollouts/{name}": _control("get", [name], "A model's newest rollout with its events (role read)",
                                        _json(_ref("RolloutStatus"), "The rollout and its events.")),
        "/v1/rollouts/{name}/promote": _control(
            "post", [name], "Move the rollout to its next stage now; after the last one it completes and "
            "production moves to the candidate (role admin)", step, "ReasonRequest", body_required=False),
        "/v1/rollouts/{name}/rollback": _control(
            "post", [name], "Send all traffic back to the baseline and end the rollout (role admin)", step,
            "ReasonRequest", body_required=False),
        "/v1/experiments": _control("post", [], "Create an experiment; on a served model its traffic split "
                                    "takes effect at once (role admin)",
                                    _json(_ref("Experiment"), "The experiment, running."), "ExperimentRequest"),
        "/v1/experiments/{name}": _control("get", [experiment], "Exposures, the analysis and each treatment's "
                                           "decision (role read)",
                                           _json(_ref("ExperimentResults"), "The results.")),
        "/v1/experiments/{name}/stop": _control("post", [experiment], "Stop an experiment; on a served model all "
                                                "traffic goes to the winner (role admin)",
                                                _json(_ref("Experiment"), "The experiment, stopped."),
                                                "StopRequest", body_required=False),
        "/v1/pipelines/{name}/runs": _control("post", [pipeline], "Enqueue one run of a pipeline for the "
                                              "scheduler (role admin)",
                                              _json(_ref("TriggerQueued"), "The trigger id."), "TriggerRequest"),
        "/v1/pipelines/{name}/runs/{id}": _control("get", [pipeline, trigger], "A triggered run's status "
                                                   "(role read)", _json(_ref("PipelineRunStatus"), "The status.")),
        "/v1/monitoring": _control("get", [model_query], "The latest drift and performance per model version, "
                                   "and the alerts (role read)", _json(_ref("Monitoring"), "What the monitor "
                                                                        "measured last, and the delayed-label "
                                                                        "metrics now.")),
        "/v1/webhooks/deliveries": _control(
            "get", [{"name": "status", "in": "query", "required": False,
                     "schema": {"type": "string", "enum": ["pending", "delivering", "delivered", "failed"]}},
                    {"name": "kind", "in": "query", "required": False,
                     "schema": {"type": "string", "enum": list(KINDS)}, "description": "An event kind."},
                    {"name": "limit", "in": "query", "required": False,
                     "schema": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 100}}],
            "The webhook outbox, newest first: each event's webhook, delivery status, attempts and last error "
            "(role read)", _json(_ref("WebhookDeliveries"), "The deliveries and the counts by status.")),
    }


def _triton_paths() -> dict[str, Any]:
    """Triton's extensions that tritonclient calls: model configuration, statistics, the model repository."""
    both = [_NAME, _VERSION]
    config = _json(_ref("ModelConfig"), "The configuration.")
    stats = _json(_ref("ModelStatsResponse"), "Counts and durations since the server started.")
    name = {**_NAME, "schema": _MODEL_NAME}
    changed = {"400": _json(_ERR, "Malformed body; `error` names the field."),
               "404": _json(_ERR, "No such model is registered (load) or loaded (unload)."),
               "413": _json(_ERR, "The body is over the size limit."),
               "422": _json(_ERR, "The model could not be loaded; `error` says why.")}

    def repo(summary: str, ok: str) -> dict[str, Any]:
        op = {"summary": summary, "parameters": [name], "responses": {"200": {"description": ok}, **changed},
              "requestBody": {"required": False,
                              "content": {"application/json": {"schema": _ref("RepositoryLoadRequest")}}}}
        return {"post": _guarded(op)}

    return {
        "/v2/models/{name}/config": _get([_NAME], "Model configuration (Triton's model_config)", config, _ERRORS),
        "/v2/models/{name}/versions/{version}/config": _get(both, "Model version configuration", config, _ERRORS),
        "/v2/models/stats": _get([], "Inference statistics of every model version", stats, {}),
        "/v2/models/{name}/stats": _get([_NAME], "Inference statistics of a model's versions", stats, _ERRORS),
        "/v2/models/{name}/versions/{version}/stats": _get(both, "Inference statistics of one version", stats,
                                                           _ERRORS),
        "/v2/repository/index": {"post": {
            "summary": "The model repository: every registered model, READY or UNAVAILABLE with the reason",
            "parameters": [],
            "requestBody": {"required": False,
                            "content": {"application/json": {"schema": _ref("RepositoryIndexRequest")}}},
            "responses": {"200": _json(_ref("RepositoryIndex"), "The models."),
                          "400": _json(_ERR, "Malformed body; `error` names the field."),
                          "413": _json(_ERR, "The body is over the size limit.")}}},
        # unload before load: a run through the operations in order leaves the served model loaded
        "/v2/repository/models/{name}/unload": repo("Stop serving a model until it is loaded again (role admin)",
                                                    "Unloaded (empty body)."),
        "/v2/repository/models/{name}/load": repo("Load a registered model and serve it (role admin)",
                                                  "Loaded (empty body)."),
    }


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
        **_control_paths(),
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
    rollout = {"name": "$response.body#/rollout/model"}
    experiment = {"name": "$response.body#/name"}
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
        ("get", "/v1/models"): {"Version": ("get", "/v1/models/{name}/versions/{version}",
                                            {"name": "$response.body#/models/0/name",
                                             "version": "$response.body#/models/0/versions/0"})},
        ("post", "/v1/rollouts"): {"GetRollout": ("get", "/v1/rollouts/{name}", rollout),
                                   "Promote": ("post", "/v1/rollouts/{name}/promote", rollout),
                                   "Rollback": ("post", "/v1/rollouts/{name}/rollback", rollout)},
        ("post", "/v1/experiments"): {"GetExperiment": ("get", "/v1/experiments/{name}", experiment),
                                      "StopExperiment": ("post", "/v1/experiments/{name}/stop", experiment)},
        ("post", "/v1/pipelines/{name}/runs"): {
            "GetRun": ("get", "/v1/pipelines/{name}/runs/{id}", {**name, "id": "$response.body#/trigger_id"})},
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
              "LabelsRequest": {"labels": [{"id": "example-1", "label": 1, "ts": "2026-12-01T10:00:00Z"}]},
              "RolloutRequest": {"model": model, "version": version, "baseline": "production", "plan": "shadow,100",
                                 "min_requests": 50, "off": ["label_loss"]},
              "ReasonRequest": {"reason": "example"},
              "ExperimentRequest": {"name": model, "model": model, "metric": "output",
                                    "variants": [{"name": "control", "version": version, "weight": 50},
                                                 {"name": "treatment", "version": "production", "weight": 50}]},
              "StopRequest": {"winner": "control"},
              "TriggerRequest": {"reason": "example", "key": "example-1"}}
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
               "/v2/models/{name}/versions/{version}/infer", "/v1/models/{name}/predict", "/metrics",
               "/v2/models/{name}/config", "/v2/models/{name}/versions/{version}/config", "/v2/models/stats",
               "/v2/models/{name}/stats", "/v2/models/{name}/versions/{version}/stats", "/v2/repository/index")


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
            **_triton_paths(),
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
