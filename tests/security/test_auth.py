"""Role checks on every HTTP route: 401 without a valid token, 403 without the role, JSON bodies; the
control plane (routes, aliases) works and is audited; predictions are guarded only when configured."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from starlette.routing import Route
from starlette.testclient import TestClient

from modelmill.project import Project
from modelmill.registry import Registry
from modelmill.security import Authenticator, TokenStore
from modelmill.serving import RouteTable, ServerConfig, build_server, create_app
from modelmill.serving.oip import OipRoutes
from modelmill.serving.openapi import openapi_document
from modelmill.store.tables import audit_log
from tests.serving.conftest import N_FEATURES, infer_body, make_project, open_project_at

X = np.random.default_rng(3).normal(size=(2, N_FEATURES))

# (method, path, body, role needed)
CONTROL = [
    ("GET", "/v1/routes", None, "read"),
    ("GET", "/v1/routes/clf", None, "read"),
    ("PUT", "/v1/routes/clf", {"variants": [{"name": "a", "version": 1}]}, "admin"),
    ("DELETE", "/v1/routes/clf", None, "admin"),
    ("GET", "/v1/models/clf/aliases", None, "read"),
    ("PUT", "/v1/models/clf/aliases/canary", {"version": 2}, "admin"),
    ("DELETE", "/v1/models/clf/aliases/canary", None, "admin"),
]
DATA = [
    ("POST", "/v2/models/clf/infer", infer_body(X), "predict"),
    ("POST", "/v2/models/clf/versions/1/infer", infer_body(X), "predict"),
    ("GET", "/v2/models/clf", None, "read"),
    ("GET", "/v2/models/clf/ready", None, "read"),
    ("GET", "/metrics", None, "read"),
]
OPEN = [("GET", "/v2/health/live"), ("GET", "/v2/health/ready"), ("GET", "/v2"), ("GET", "/openapi.json")]


@pytest.fixture(scope="module")
def project_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_project(tmp_path_factory.mktemp("auth") / "proj")


@pytest.fixture
def app_for(project_root: Path) -> Iterator[Callable[[str], tuple[TestClient, Project, dict[str, str]]]]:
    """A server over the project in ``mode``, and one token per role (headers ready to send)."""
    opened: list[tuple[TestClient, Project]] = []

    def make(mode: str) -> tuple[TestClient, Project, dict[str, str]]:
        project = open_project_at(project_root)
        store = TokenStore(project)
        for t in store.list(include_revoked=False):
            store.revoke(t.id)
        secrets = {role: store.create(role)[1] for role in ("read", "predict", "admin")}
        config = ServerConfig(models=["clf@production"], reload_interval_s=0.1, log_predictions=False, auth=mode)
        app = create_app(build_server(project, config), auth=Authenticator(store, mode=mode))
        client = TestClient(app).__enter__()
        opened.append((client, project))
        return client, project, secrets

    yield make
    for client, project in opened:
        client.__exit__(None, None, None)
        with project.db.begin() as conn:
            conn.execute(sa.text("DELETE FROM serving_routes"))
        project.close()


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def call(client: TestClient, method: str, path: str, body: Any, headers: dict[str, str] | None = None) -> Any:
    return client.request(method, path, json=body, headers=headers)


@pytest.mark.parametrize("mode", ["control", "required"])
def test_every_guarded_route_answers_401_then_403_then_works(app_for: Any, mode: str) -> None:
    client, _, secrets = app_for(mode)
    ranks = ["read", "predict", "admin"]
    guarded = CONTROL + (DATA if mode == "required" else [])
    for method, path, body, needed in guarded:
        for headers in (None, bearer("mmt_0123456789ab_nope"), {"Authorization": "Basic abc"}):
            r = call(client, method, path, body, headers)
            assert r.status_code == 401, (method, path, r.text)
            assert r.headers["content-type"] == "application/json" and r.json()["error"]
            assert r.headers["www-authenticate"].startswith("Bearer")
        for role in ranks:
            r = call(client, method, path, body, bearer(secrets[role]))
            if ranks.index(role) < ranks.index(needed):
                assert r.status_code == 403, (method, path, role, r.text)
                assert needed in r.json()["error"] and role in r.json()["error"]
            else:
                assert r.status_code not in (401, 403), (method, path, role, r.text)
                if method == "PUT":  # leave the state for the DELETE that follows
                    assert r.status_code == 200, r.text
                break
    if mode == "control":  # predictions and metadata answer without a token
        for method, path, body, _ in DATA:
            assert call(client, method, path, body).status_code == 200, path
    for method, path in OPEN:  # health checks and the document never need one
        assert call(client, method, path, None).status_code == 200, path


def test_predictions_cost_nothing_when_auth_is_not_required(app_for: Any) -> None:
    client, _, _ = app_for("control")
    endpoint = {r.path: r.endpoint for r in client.app.routes if isinstance(r, Route) and "POST" in (r.methods or ())}
    # the hot routes are the OIP handler itself, not a wrapper around it
    assert getattr(endpoint["/v2/models/{name}/infer"], "__self__", None).__class__ is OipRoutes
    assert not hasattr(endpoint["/v2/models/{name}/infer"], "__wrapped__")
    required, _, _ = app_for("required")
    endpoint = {r.path: r.endpoint for r in required.app.routes if isinstance(r, Route)}
    assert hasattr(endpoint["/v2/models/{name}/infer"], "__wrapped__")


def test_openapi_declares_the_security_it_enforces() -> None:
    control, required = openapi_document(), openapi_document(auth_required=True)
    assert "security" in control["paths"]["/v1/routes/{name}"]["put"]
    assert "401" in control["paths"]["/v1/routes/{name}"]["put"]["responses"]
    assert "security" not in control["paths"]["/v2/models/{name}/infer"]["post"]
    assert "security" in required["paths"]["/v2/models/{name}/infer"]["post"]
    assert "security" not in required["paths"]["/v2/health/ready"]["get"]


def test_routes_and_aliases_change_through_the_api_and_are_audited(app_for: Any) -> None:
    client, project, secrets = app_for("control")
    started = time.time()
    admin, read = bearer(secrets["admin"]), bearer(secrets["read"])
    assert client.get("/v1/routes/clf", headers=read).status_code == 404
    body = {"variants": [{"name": "stable", "version": "production", "weight": 90},
                         {"name": "canary", "version": 2, "weight": 10}], "reason": "try v2"}
    r = client.put("/v1/routes/clf", json=body, headers=admin)
    assert r.status_code == 200, r.text
    assert [v["name"] for v in r.json()["variants"]] == ["canary", "stable"]
    assert r.json() == client.get("/v1/routes/clf", headers=read).json()
    assert client.get("/v1/routes", headers=read).json()["routes"] == [r.json()]
    assert RouteTable(project).get("clf").as_dict() == r.json()
    # this worker serves the new route at once: both versions answer
    versions = {client.post("/v2/models/clf/infer", json=infer_body(X), headers={"x-routing-key": f"u{i}"})
                .json()["model_version"] for i in range(60)}
    assert versions == {"1", "2"}
    # a route the registry cannot serve is refused, not written
    bad = client.put("/v1/routes/clf", json={"variants": [{"name": "x", "version": 9}]}, headers=admin)
    assert bad.status_code == 404 and "9" in bad.json()["error"]
    for body, field in [({"variants": []}, "variants"), ({"variants": [{"name": "x", "version": 1, "w": 1}]}, "w"),
                        ({"variants": [{"name": "x", "version": 1, "shadow": True}]}, "variants"),
                        ({"variants": [{"name": "x", "version": 0}]}, "version")]:
        r = client.put("/v1/routes/clf", json=body, headers=admin)
        assert r.status_code == 400 and field in r.json()["error"], r.text
    assert client.delete("/v1/routes/clf", headers=admin).json() == {"model": "clf", "deleted": True}
    assert client.delete("/v1/routes/clf", headers=admin).status_code == 404
    # aliases
    assert client.get("/v1/models/clf/aliases", headers=read).json() == {"name": "clf",
                                                                         "aliases": {"production": 1}}
    r = client.put("/v1/models/clf/aliases/production", json={"version": 2, "reason": "ship"}, headers=admin)
    assert r.status_code == 200 and r.json() == {"name": "clf", "alias": "production", "version": 2}
    assert client.post("/v2/models/clf/infer", json=infer_body(X)).json()["model_version"] == "2"
    assert client.put("/v1/models/clf/aliases/production", json={"version": 7}, headers=admin).status_code == 404
    assert client.put("/v1/models/clf/aliases/Bad!", json={"version": 1}, headers=admin).status_code == 400
    assert client.get("/v1/models/nope/aliases", headers=read).status_code == 404
    client.put("/v1/models/clf/aliases/production", json={"version": 1}, headers=admin)
    history = Registry(project).alias_history("clf", "production")
    assert [(h.version, h.reason) for h in history[-2:]] == [(2, "ship"), (1, "")]
    token_name = TokenStore(project).verify(secrets["admin"]).name  # type: ignore[union-attr]
    assert history[-1].actor == f"token:{token_name}"
    with project.db.engine.connect() as conn:
        actors = {r.actor for r in conn.execute(sa.select(audit_log).where(
            audit_log.c.action.like("serving.route%"), audit_log.c.at >= started))}
    assert actors == {f"token:{token_name}"}


def test_revoked_and_new_tokens_are_picked_up_by_the_periodic_reload(app_for: Any) -> None:
    client, project, secrets = app_for("required")
    store = TokenStore(project)
    headers = bearer(secrets["predict"])
    assert client.post("/v2/models/clf/infer", json=infer_body(X), headers=headers).status_code == 200
    store.revoke(store.verify(secrets["predict"]).id)  # type: ignore[union-attr]
    _, fresh = store.create("predict", name="fresh")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # reload_interval_s = 0.1
        old = client.post("/v2/models/clf/infer", json=infer_body(X), headers=headers).status_code
        new = client.post("/v2/models/clf/infer", json=infer_body(X), headers=bearer(fresh)).status_code
        if (old, new) == (401, 200):
            break
        time.sleep(0.05)
    assert (old, new) == (401, 200)
