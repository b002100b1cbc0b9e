"""The Kubernetes manifests in deploy/: valid against the Kubernetes API's own schemas, and consistent."""

from __future__ import annotations

import dataclasses
import json
import os
import re
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


# ---- deploy/ agrees with the code: environment, probes, metrics, the image --------------------------------

REPO = DEPLOY.parent


def _container() -> dict[str, Any]:
    [container] = _docs()["Deployment"]["spec"]["template"]["spec"]["containers"]
    return container


def _env_names_the_code_reads() -> set[str]:
    """Every ``MODELMILL_*`` name the package reads: literal names, and ``MODELMILL_<BACKEND KEY>``."""
    from modelmill.config import BACKEND_KEYS

    names = {f"MODELMILL_{key.upper()}" for key in BACKEND_KEYS}
    for path in (REPO / "src" / "modelmill").rglob("*.py"):
        names |= set(re.findall(r"[\"'](MODELMILL_[A-Z_]+)[\"']", path.read_text()))
    return names


def test_every_environment_variable_of_the_deployment_and_image_is_one_the_code_reads() -> None:
    known = _env_names_the_code_reads()
    assert {"MODELMILL_DB", "MODELMILL_ONLINE", "MODELMILL_HOME"} <= known
    used = {e["name"] for e in _container()["env"]} | set(_dockerfile().env)
    ours = {n for n in used if n.startswith("MODELMILL_")}
    assert ours and not ours - known, f"not read by modelmill: {sorted(ours - known)}"
    assert {*ours, "MODELMILL_ONLNE"} - known == {"MODELMILL_ONLNE"}  # the check finds a misspelt name


def test_the_deployments_environment_reaches_the_settings(tmp_path: Path) -> None:
    """Load settings from exactly the Deployment's variables (secrets given sample values): each one is read."""
    from modelmill.config import load_settings

    samples = {"db": "postgresql://modelmill@db:5432/modelmill", "online": "redis://redis:6379/0",
               "cache": "redis://redis:6379/1"}
    env = {}
    for e in _container()["env"]:
        if "value" in e:
            env[e["name"]] = e["value"]
        else:
            env[e["name"]] = samples[e["valueFrom"]["secretKeyRef"]["key"]]
    settings = load_settings(cwd=tmp_path, env=env)
    for name, value in env.items():
        key = name.removeprefix("MODELMILL_").lower()
        assert getattr(settings, key) == value, name


def _app_client() -> Any:
    from starlette.testclient import TestClient

    from modelmill.serving import FunctionModel, ModelServer, StaticSource, create_app
    from modelmill.serving.server import ServerConfig

    src = StaticSource([FunctionModel("m", 1, ["x"], lambda X: X[:, 0] * 2.0)], aliases={"m@production": 1})
    server = ModelServer(src, config=ServerConfig(models=["m@production"], log_predictions=False))
    return TestClient(create_app(server))


def test_the_probes_and_the_scrape_path_answer_on_a_running_server() -> None:
    container = _container()
    annotations = _docs()["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == container["ports"][0]["containerPort"]
    with _app_client() as client:
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            get = container[probe]["httpGet"]
            assert get["port"] in {p["name"] for p in container["ports"]}
            assert client.get(get["path"]).status_code == 200, probe
        assert client.post("/v2/models/m/infer", json={"inputs": [
            {"name": "x", "shape": [1], "datatype": "FP64", "data": [1.5]}]}).status_code == 200
        scrape = client.get(annotations["prometheus.io/path"])
        assert scrape.status_code == 200 and "modelmill_requests_total" in scrape.text


def test_the_metrics_the_autoscaler_reads_are_exported() -> None:
    """The names the adapter rules read (deploy/prometheus-adapter) are in a scrape of a running server."""
    from prometheus_client.parser import text_string_to_metric_families

    adapter = yaml.safe_load((DEPLOY / "prometheus-adapter" / "values.yaml").read_text())
    read = [r[k] for rules in adapter["rules"].values() if isinstance(rules, list) for r in rules
            for k in ("seriesQuery", "metricsQuery")]
    wanted = set().union(*(re.findall(r"\b(modelmill_[a-z0-9_]+)\b", q) for q in read))
    assert {"modelmill_requests_total", "modelmill_request_latency_seconds_bucket",
            "modelmill_latency_slo_seconds"} <= wanted
    with _app_client() as client:
        client.post("/v2/models/m/infer", json={"inputs": [{"name": "x", "shape": [1], "datatype": "FP64",
                                                            "data": [1.0]}]})
        text = client.get("/metrics").text
    exported = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    assert wanted <= exported, f"read by the adapter but not exported: {sorted(wanted - exported)}"


@dataclasses.dataclass
class Dockerfile:
    """The instructions of a Dockerfile, by stage (``FROM`` starts one), continuation lines joined."""

    stages: list[list[tuple[str, str]]]
    env: dict[str, str]

    def final(self, op: str) -> list[str]:
        return [arg for o, arg in self.stages[-1] if o == op]


def _dockerfile() -> Dockerfile:
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    stages: list[list[tuple[str, str]]] = []
    env: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        op, _, arg = line.partition(" ")
        op = op.upper()
        if op == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((op, " ".join(arg.split())))
        if op == "ENV":
            env.update(dict(re.findall(r"(\w+)=(\S+)", arg)))
    return Dockerfile(stages, env)


def _healthcheck_command() -> list[str]:
    [health] = _dockerfile().final("HEALTHCHECK")
    assert " CMD " in f" {health} "
    return list(json.loads(health.split(" CMD ", 1)[1]))


def test_the_dockerfile_is_multi_stage_non_root_and_agrees_with_the_deployment() -> None:
    df = _dockerfile()
    assert len(df.stages) >= 2, "a build stage and a runtime stage"
    container = _container()
    port = container["ports"][0]["containerPort"]
    [user] = df.final("USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "a numeric non-root user (runAsNonRoot can only check a number)"
    security = container["securityContext"]
    assert security["runAsNonRoot"] and security["runAsUser"] == int(uid)
    assert df.final("EXPOSE") == [str(port)]
    health = " ".join(_healthcheck_command())
    assert f"127.0.0.1:{port}{container['readinessProbe']['httpGet']['path']}" in health
    [cmd] = df.final("CMD")
    args = json.loads(cmd)
    assert args[0] == "serve" and args[args.index("--port") + 1] == str(port)
    assert json.loads(df.final("ENTRYPOINT")[0]) == container["command"]
    # the runtime stage copies the build stage's environment and nothing from the context
    assert [c for c in df.final("COPY") if not c.startswith("--from=")] == []
    # every file the build stage copies exists, and .dockerignore lets it into the context
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    build = df.stages[0]
    copied = [arg.split()[:-1] for op, arg in build if op == "COPY"]
    for sources in copied:
        for src in sources:
            assert (REPO / src).exists(), src
            assert src.rstrip("/") in allowed, f"{src} is excluded by .dockerignore"
    runs = " ".join(arg for op, arg in build if op == "RUN")
    assert "modelmill-install /opt/modelmill" in runs
    assert any("deploy/docker/install.sh" in s for sources in copied for s in sources)


@pytest.mark.slow
def test_the_images_install_step_builds_a_venv_that_serves(tmp_path: Path) -> None:
    """What the image's build stage runs (deploy/docker/install.sh), in a fresh venv; then the server from
    that venv, answered by the image's HEALTHCHECK command (its port replaced by the test's)."""
    import subprocess
    import sys
    import time

    from tests.serving.conftest import free_port, make_project

    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    out = subprocess.run(["sh", str(DEPLOY / "docker" / "install.sh"), str(venv), str(REPO)],
                         env={**env, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    # the image has the serving extra only: no torch
    probe = subprocess.run([str(venv / "bin" / "python"), "-c", "import importlib.util as u, modelmill, grpc; "
                            "print(u.find_spec('torch') is None, modelmill.__file__)"],
                           env=env, capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split()[0] == "True" and str(venv) in probe.stdout, probe.stdout
    root = make_project(tmp_path / "proj")
    port = free_port()
    health = _healthcheck_command()
    assert health[0] == "python"
    check = [str(venv / "bin" / "python"), *health[1:]]
    check = [a.replace("127.0.0.1:8080/", f"127.0.0.1:{port}/") for a in check]
    env.pop("MODELMILL_HOME", None)
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen([str(venv / "bin" / "modelmill"), "serve", "--host", "127.0.0.1", "--port", str(port),
                             "--model", "clf@production"], cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        rc = 1
        while time.monotonic() < deadline and proc.poll() is None:
            rc = subprocess.run(check, env=env, capture_output=True, timeout=30).returncode
            if rc == 0:
                break
            time.sleep(0.5)
        assert rc == 0, (tmp_path / "serve.log").read_text()[-3000:]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    assert subprocess.run(check, env=env, capture_output=True, timeout=30).returncode != 0  # stopped: unhealthy
