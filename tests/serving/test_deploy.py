"""The Kubernetes manifests in deploy/: valid against the Kubernetes API's own schemas, and consistent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from modelmill.serving.openapi import openapi_document

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"

# The release whose OpenAPI schemas (shipped by kubernetes-validate, pinned in constraints.txt) the manifests
# must satisfy. Strict schemas close every object, so a misspelt field fails here instead of being dropped
# silently by the API server.
KUBERNETES_VERSION = "1.33.0"
KINDS = {"Deployment", "Service", "HorizontalPodAutoscaler"}


def _validate(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def _docs() -> dict[str, dict[str, Any]]:
    docs: dict[str, dict[str, Any]] = {}
    for path in sorted(DEPLOY.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs[doc["kind"]] = doc
    return docs


def test_every_manifest_validates() -> None:
    docs = _docs()
    assert set(docs) == KINDS
    for doc in docs.values():
        _validate(doc)


@pytest.mark.parametrize(("kind", "path", "value", "message"), [
    ("Deployment", ["spec", "template", "spec", "containers", 0, "readinesProbe"],
     {"httpGet": {"path": "/", "port": 1}}, "readinesProbe"),  # misspelt: closed objects refuse it
    ("Deployment", ["spec", "template", "spec", "containers", 0, "ports", 0, "containerPort"], "8000",
     "is not of type 'integer'"),
    ("Service", ["spec", "type"], 7, "is not of type 'string'"),
    ("HorizontalPodAutoscaler", ["spec", "maxReplica"], 20, "maxReplica"),
    ("HorizontalPodAutoscaler", ["spec", "scaleTargetRef", "name"], None, "'name' is a required property"),
])
def test_the_schemas_catch_a_wrong_field(kind: str, path: list[Any], value: Any, message: str) -> None:
    doc = _docs()[kind]
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    if value is None:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    with pytest.raises(kubernetes_validate.ValidationError, match=message):
        _validate(doc)


def test_fields_the_manifests_do_not_use_yet_are_valid_too() -> None:
    # A hand-written subset refused these, though the API server takes them: the schema is the whole API.
    doc = _docs()["Deployment"]
    pod = doc["spec"]["template"]["spec"]
    pod["volumes"] = [{"name": "models", "emptyDir": {"sizeLimit": "1Gi"}}]
    container = pod["containers"][0]
    container["volumeMounts"] = [{"name": "models", "mountPath": "/models", "readOnly": True}]
    container["resources"].setdefault("limits", {})["nvidia.com/gpu"] = 1
    container["livenessProbe"] = {"tcpSocket": {"port": "http"}, "periodSeconds": 10}
    _validate(doc)


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
