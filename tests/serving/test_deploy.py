"""The Kubernetes manifests in deploy/: valid against a schema of the fields they use, and consistent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from modelmill.serving.openapi import openapi_document

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"

# The subset of the Kubernetes API (apps/v1, v1, autoscaling/v2) these manifests use, written from the
# API reference. Objects are closed (additionalProperties: false) so a misspelt field fails here instead
# of being silently dropped by the API server.
_STR = {"type": "string", "minLength": 1}
_INT = {"type": "integer", "minimum": 0}
_QTY = {"oneOf": [{"type": "string", "pattern": r"^[0-9.]+(m|Ki|Mi|Gi|Ti|k|M|G)?$"}, {"type": "integer"}]}
_LABELS = {"type": "object", "additionalProperties": {"type": "string", "maxLength": 63}}
_PORT = {"oneOf": [{"type": "integer", "minimum": 1, "maximum": 65535},
                   {"type": "string", "pattern": "^[a-z0-9-]{1,15}$"}]}


def _obj(props: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": list(required), "additionalProperties": False}


_META = _obj({"name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}, "labels": _LABELS,
              "annotations": _LABELS}, ("name",))
_PROBE = _obj({"httpGet": _obj({"path": _STR, "port": _PORT, "scheme": {"enum": ["HTTP", "HTTPS"]}},
                               ("path", "port")),
               "initialDelaySeconds": _INT, "periodSeconds": _INT, "timeoutSeconds": _INT,
               "failureThreshold": _INT, "successThreshold": _INT}, ("httpGet",))
_SECRET_REF = _obj({"secretKeyRef": _obj({"name": _STR, "key": _STR}, ("name", "key"))})
_CONTAINER = _obj({
    "name": _STR, "image": _STR, "imagePullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
    "command": {"type": "array", "items": {"type": "string"}},
    "args": {"type": "array", "items": {"type": "string"}},
    "ports": {"type": "array", "items": _obj({"name": {"type": "string", "maxLength": 15},
                                              "containerPort": {"type": "integer", "minimum": 1, "maximum": 65535},
                                              "protocol": {"enum": ["TCP", "UDP", "SCTP"]}}, ("containerPort",))},
    "env": {"type": "array", "items": _obj({"name": _STR, "value": {"type": "string"}, "valueFrom": _SECRET_REF},
                                           ("name",))},
    "resources": _obj({"requests": _obj({"cpu": _QTY, "memory": _QTY}),
                       "limits": _obj({"cpu": _QTY, "memory": _QTY})}),
    "startupProbe": _PROBE, "readinessProbe": _PROBE, "livenessProbe": _PROBE,
    "securityContext": _obj({"runAsNonRoot": {"type": "boolean"}, "runAsUser": _INT,
                             "allowPrivilegeEscalation": {"type": "boolean"},
                             "readOnlyRootFilesystem": {"type": "boolean"}}),
}, ("name", "image"))
DEPLOYMENT = _obj({
    "apiVersion": {"const": "apps/v1"}, "kind": {"const": "Deployment"}, "metadata": _META,
    "spec": _obj({
        "replicas": _INT, "revisionHistoryLimit": _INT,
        "selector": _obj({"matchLabels": _LABELS}, ("matchLabels",)),
        "strategy": _obj({"type": {"enum": ["RollingUpdate", "Recreate"]},
                          "rollingUpdate": _obj({"maxSurge": _PORT, "maxUnavailable": {"type": ["integer", "string"]}})}),
        "template": _obj({
            "metadata": _obj({"labels": _LABELS, "annotations": _LABELS}),
            "spec": _obj({"terminationGracePeriodSeconds": _INT,
                          "containers": {"type": "array", "minItems": 1, "items": _CONTAINER}}, ("containers",)),
        }, ("metadata", "spec")),
    }, ("selector", "template")),
}, ("apiVersion", "kind", "metadata", "spec"))
SERVICE = _obj({
    "apiVersion": {"const": "v1"}, "kind": {"const": "Service"}, "metadata": _META,
    "spec": _obj({"type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]}, "selector": _LABELS,
                  "ports": {"type": "array", "minItems": 1, "items": _obj({
                      "name": _STR, "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                      "targetPort": _PORT, "protocol": {"enum": ["TCP", "UDP", "SCTP"]}}, ("port",))}},
                 ("selector", "ports")),
}, ("apiVersion", "kind", "metadata", "spec"))
_TARGET = _obj({"type": {"enum": ["Utilization", "Value", "AverageValue"]}, "averageUtilization": _INT,
                "averageValue": _QTY, "value": _QTY}, ("type",))
_POLICY = _obj({"stabilizationWindowSeconds": _INT, "policies": {"type": "array", "items": _obj(
    {"type": {"enum": ["Pods", "Percent"]}, "value": _INT, "periodSeconds": _INT}, ("type", "value", "periodSeconds"))}})
HPA = _obj({
    "apiVersion": {"const": "autoscaling/v2"}, "kind": {"const": "HorizontalPodAutoscaler"}, "metadata": _META,
    "spec": _obj({
        "scaleTargetRef": _obj({"apiVersion": _STR, "kind": _STR, "name": _STR}, ("kind", "name")),
        "minReplicas": {"type": "integer", "minimum": 1}, "maxReplicas": {"type": "integer", "minimum": 1},
        "metrics": {"type": "array", "items": _obj({
            "type": {"enum": ["Resource", "Pods", "Object", "External"]},
            "resource": _obj({"name": {"enum": ["cpu", "memory"]}, "target": _TARGET}, ("name", "target")),
            "pods": _obj({"metric": _obj({"name": _STR}, ("name",)), "target": _TARGET}, ("metric", "target")),
        }, ("type",))},
        "behavior": _obj({"scaleUp": _POLICY, "scaleDown": _POLICY}),
    }, ("scaleTargetRef", "maxReplicas")),
}, ("apiVersion", "kind", "metadata", "spec"))
SCHEMAS = {"Deployment": DEPLOYMENT, "Service": SERVICE, "HorizontalPodAutoscaler": HPA}


def _docs() -> dict[str, dict[str, Any]]:
    docs: dict[str, dict[str, Any]] = {}
    for path in sorted(DEPLOY.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs[doc["kind"]] = doc
    return docs


def test_every_manifest_validates() -> None:
    docs = _docs()
    assert set(docs) == set(SCHEMAS)
    for kind, doc in docs.items():
        jsonschema.validate(doc, SCHEMAS[kind])


def test_the_schema_catches_a_misspelt_field() -> None:
    doc = _docs()["Deployment"]
    doc["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/", "port": 1}}
    with pytest.raises(jsonschema.ValidationError, match="readinesProbe"):
        jsonschema.validate(doc, DEPLOYMENT)


def test_manifests_agree_with_each_other_and_the_server() -> None:
    docs = _docs()
    dep, svc, hpa = docs["Deployment"], docs["Service"], docs["HorizontalPodAutoscaler"]
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    [container] = dep["spec"]["template"]["spec"]["containers"]
    port_names = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert svc["spec"]["ports"][0]["targetPort"] in port_names
    args = container["args"]
    assert args[0] == "serve" and args[args.index("--port") + 1] == str(port_names["http"])
    assert args[args.index("--host") + 1] == "0.0.0.0"
    routes = set(openapi_document()["paths"])
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready" in routes
    assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live" in routes
    assert (hpa["spec"]["scaleTargetRef"]["kind"], hpa["spec"]["scaleTargetRef"]["name"]) == (
        "Deployment", dep["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert "cpu" in container["resources"]["requests"]  # CPU utilisation needs a request to be measured
