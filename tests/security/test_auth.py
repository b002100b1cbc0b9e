"""Role checks on every HTTP route: 401 without a valid token, 403 without the role, JSON bodies; the
control plane (routes, aliases) works and is audited; predictions are guarded only when configured."""

from __future__ import annotations

import threading
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
from modelmill.security import ROLES, Authenticator, TokenStore, allows
from modelmill.serving import RouteTable, ServerConfig, Variant, build_server, create_app
from modelmill.serving.oip import OipRoutes
from modelmill.serving.openapi import openapi_document
from modelmill.store.tables import audit_log
from tests.serving.conftest import N_FEATURES, infer_body, make_project, open_project_at

X = np.random.default_rng(3).normal(size=(2, N_FEATURES))

# Every route the app serves, by (method, path) as it declares them: who may call it, and what it answers then.
# "open" routes never need a token, "data" routes need one only with auth = "required", "control" routes always
# do. The tests walk the app's own route table and fail on a route this table does not list.
PARAMS = {"name": "clf", "version": "1", "alias": "canary", "id": "1"}
FEATURE_BODY = {"entities": {}, "features": {f"f{i}": float(v) for i, v in enumerate(X[0])}}
ROUTE = {"variants": [{"name": "b", "version": 1}]}
LABELS = {"labels": [{"id": "no-such-prediction", "label": 1}]}
ROLLOUT = {"model": "clf", "version": 2, "plan": "shadow,100", "off": ["label_loss"]}
EXPERIMENT = {"name": "clf", "model": "clf", "metric": "output", "variants": [
    {"name": "control", "version": 1, "weight": 1}, {"name": "treatment", "version": 2, "weight": 1}]}
EXPECTED: dict[tuple[str, str], tuple[str, str | None, Any, int]] = {
    ("POST", "/v2/models/{name}/infer"): ("data", "predict", infer_body(X), 200),
    ("POST", "/v2/models/{name}/versions/{version}/infer"): ("data", "predict", infer_body(X), 200),
    ("POST", "/v1/models/{name}/predict"): ("data", "predict", FEATURE_BODY, 200),
    ("GET", "/v2/models/{name}"): ("data", "read", None, 200),
    ("GET", "/v2/models/{name}/ready"): ("data", "read", None, 200),
    ("GET", "/v2/models/{name}/versions/{version}"): ("data", "read", None, 200),
    ("GET", "/v2/models/{name}/versions/{version}/ready"): ("data", "read", None, 200),
    ("GET", "/metrics"): ("data", "read", None, 200),
    # Triton's extensions (tritonclient calls them): configuration and statistics are reads of the data plane;
    # the repository's index too, while loading and unloading a model change what a worker serves: admin.
    ("GET", "/v2/models/stats"): ("data", "read", None, 200),
    ("GET", "/v2/models/{name}/config"): ("data", "read", None, 200),
    ("GET", "/v2/models/{name}/stats"): ("data", "read", None, 200),
    ("GET", "/v2/models/{name}/versions/{version}/config"): ("data", "read", None, 200),
    ("GET", "/v2/models/{name}/versions/{version}/stats"): ("data", "read", None, 200),
    ("POST", "/v2/repository/index"): ("data", "read", {}, 200),
    ("POST", "/v2/repository/models/{name}/load"): ("control", "admin", None, 200),
    ("POST", "/v2/repository/models/{name}/unload"): ("control", "admin", None, 200),
    ("GET", "/v1/routes"): ("control", "read", None, 200),
    ("GET", "/v1/routes/{name}"): ("control", "read", None, 200),
    ("PUT", "/v1/routes/{name}"): ("control", "admin", ROUTE, 200),
    ("DELETE", "/v1/routes/{name}"): ("control", "admin", None, 200),
    ("GET", "/v1/models/{name}/aliases"): ("control", "read", None, 200),
    ("PUT", "/v1/models/{name}/aliases/{alias}"): ("control", "admin", {"version": 2}, 200),
    ("DELETE", "/v1/models/{name}/aliases/{alias}"): ("control", "admin", None, 200),
    ("POST", "/v1/models/{name}/labels"): ("control", "label", LABELS, 200),
    # The control plane of modelmill.control: every read is walked before any change, so a model's rollout,
    # experiment and trigger are not there yet (404); the changes then start, promote and roll back a rollout,
    # create and stop an experiment (each 200); the project has no pipeline to trigger (404).
    ("GET", "/v1/models"): ("control", "read", None, 200),
    ("GET", "/v1/models/{name}/versions/{version}"): ("control", "read", None, 200),
    ("GET", "/v1/rollouts"): ("control", "read", None, 200),
    ("GET", "/v1/rollouts/{name}"): ("control", "read", None, 404),
    ("GET", "/v1/experiments/{name}"): ("control", "read", None, 404),
    ("GET", "/v1/pipelines/{name}/runs/{id}"): ("control", "read", None, 404),
    ("GET", "/v1/monitoring"): ("control", "read", None, 200),
    ("GET", "/v1/webhooks/deliveries"): ("control", "read", None, 200),
    ("POST", "/v1/rollouts"): ("control", "admin", ROLLOUT, 200),
    ("POST", "/v1/rollouts/{name}/promote"): ("control", "admin", None, 200),
    ("POST", "/v1/rollouts/{name}/rollback"): ("control", "admin", None, 200),
    ("POST", "/v1/experiments"): ("control", "admin", EXPERIMENT, 200),
    ("POST", "/v1/experiments/{name}/stop"): ("control", "admin", None, 200),
    ("POST", "/v1/pipelines/{name}/runs"): ("control", "admin", {"reason": "auth test"}, 404),
    ("GET", "/v2/health/live"): ("open", None, None, 200),
    ("GET", "/v2/health/ready"): ("open", None, None, 200),
    ("GET", "/v2"): ("open", None, None, 200),
    ("GET", "/openapi.json"): ("open", None, None, 200),
}
_ORDER = ("GET", "POST", "PUT", "DELETE")  # a change is made before it is undone


def app_routes(app: Any) -> list[tuple[str, str]]:
    """(method, path) of every route ``app`` serves, reads before changes (HEAD is Starlette's, beside each GET)."""
    found = [(m, r.path) for r in app.routes if isinstance(r, Route) for m in sorted((r.methods or set()) - {"HEAD"})]
    return sorted(found, key=lambda mp: _ORDER.index(mp[0]))


def stored_state(project: Project) -> tuple[Any, ...]:
    """What a control-plane change writes: the route table, the model's aliases, the audit trail's length."""
    with project.db.engine.connect() as conn:
        audited = conn.execute(sa.select(sa.func.count()).select_from(audit_log)).scalar_one()
    routes = {m: r.as_dict() for m, r in RouteTable(project).all().items()}
    return routes, Registry(project).aliases("clf"), audited


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
        secrets = {role: store.create(role)[1] for role in ROLES}
        config = ServerConfig(models=["clf@production"], reload_interval_s=0.1, log_predictions=False, auth=mode)
        app = create_app(build_server(project, config), auth=Authenticator(store, mode=mode))
        client = TestClient(app).__enter__()
        opened.append((client, project))
        return client, project, secrets

    yield make
    for client, project in opened:
        client.__exit__(None, None, None)
        with project.db.begin() as conn:  # each mode's walk starts from the same state
            for table in ("serving_routes", "rollout_events", "rollouts", "experiment_exposures", "experiments"):
                conn.execute(sa.text(f"DELETE FROM {table}"))
        project.close()


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def call(client: TestClient, method: str, path: str, body: Any, headers: dict[str, str] | None = None) -> Any:
    return client.request(method, path, json=body, headers=headers)


@pytest.mark.parametrize("mode", ["control", "required"])
def test_every_route_of_the_app_answers_401_then_403_then_its_status(app_for: Any, mode: str) -> None:
    client, project, secrets = app_for(mode)
    routes = app_routes(client.app)
    assert sorted(routes) == sorted(EXPECTED), "a route of the app is missing from EXPECTED, or the reverse"
    RouteTable(project).set("clf", [Variant("a", 1)])  # so reading the route answers 200, and deleting it too
    for method, template in routes:
        plane, needed, body, status = EXPECTED[method, template]
        path = template.format(**PARAMS)
        if plane == "open" or (plane == "data" and mode == "control"):
            r = call(client, method, path, body)
            assert r.status_code == status, (method, path, r.text)
            continue
        assert needed is not None
        before = stored_state(project)
        refusals: list[tuple[dict[str, str] | None, str | None]] = [
            (h, None) for h in (None, bearer("mmt_0123456789ab_nope"), {"Authorization": "Basic abc"})]
        refusals += [(bearer(secrets[role]), role) for role in ROLES if not allows(role, needed)]
        for headers, role in refusals:
            r = call(client, method, path, body, headers)
            assert r.status_code == (401 if role is None else 403), (method, path, headers, r.text)
            assert r.headers["content-type"] == "application/json" and r.json()["error"]
            if role is None:
                assert r.headers["www-authenticate"].startswith("Bearer")
            else:
                assert f"role {needed}" in r.json()["error"] and f"has role {role}" in r.json()["error"], r.text
            # a refused call wrote nothing: not the route table, not the aliases, not the audit trail
            assert stored_state(project) == before, (method, path, headers)
        r = call(client, method, path, body, bearer(secrets[needed]))
        assert r.status_code == status, (method, path, needed, r.text)
        if method in ("PUT", "DELETE"):  # an allowed change is written and audited once: the check above can see one
            after = stored_state(project)
            assert after[:2] != before[:2] and after[2] == before[2] + 1, (method, path)
        elif template == "/v1/models/{name}/labels":  # posted labels leave routes and aliases alone, audited once
            after = stored_state(project)
            assert after[:2] == before[:2] and after[2] == before[2] + 1, (method, path)
        elif method == "POST" and plane == "control":  # a change of the control plane is audited, a 404 writes nothing
            after = stored_state(project)
            assert (after[2] > before[2]) == (status == 200), (method, path)
        if plane == "control" and needed != "admin":  # and admin may do what any other role may
            assert call(client, method, path, body, bearer(secrets["admin"])).status_code == status, (method, path)


def test_predictions_cost_nothing_when_auth_is_not_required(app_for: Any) -> None:
    client, _, _ = app_for("control")
    endpoint = {r.path: r.endpoint for r in client.app.routes if isinstance(r, Route) and "POST" in (r.methods or ())}
    # the hot routes are the OIP handler itself, not a wrapper around it
    assert getattr(endpoint["/v2/models/{name}/infer"], "__self__", None).__class__ is OipRoutes
    assert not hasattr(endpoint["/v2/models/{name}/infer"], "__wrapped__")
    # ... and a prediction never reaches Starlette at all: the ASGI app dispatches it straight to that handler.
    reached: list[str] = []
    starlette = client.app.app

    async def spy(scope: Any, receive: Any, send: Any) -> None:
        reached.append(scope["path"])
        await starlette(scope, receive, send)

    client.app.app = spy
    try:
        assert client.post("/v2/models/clf/infer", json=infer_body(X)).status_code == 200
        assert client.post("/v2/models/clf/versions/1/infer", json=infer_body(X)).status_code == 200
        assert client.get("/v2/models/clf").status_code == 200
    finally:
        client.app.app = starlette
    assert reached == ["/v2/models/clf"]
    required, _, _ = app_for("required")
    endpoint = {r.path: r.endpoint for r in required.app.routes if isinstance(r, Route)}
    assert hasattr(endpoint["/v2/models/{name}/infer"], "__wrapped__")


def test_openapi_declares_the_security_it_enforces() -> None:
    control, required = openapi_document(), openapi_document(auth_required=True)
    for (method, path), (plane, _, _, _) in EXPECTED.items():
        declared = ["security" in doc["paths"][path][method.lower()] for doc in (control, required)]
        assert declared == {"open": [False, False], "data": [False, True], "control": [True, True]}[plane], path
        if plane != "open":
            assert "401" in required["paths"][path][method.lower()]["responses"], path


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


def test_a_revoked_token_is_refused_from_the_first_reload_after_the_revocation(app_for: Any) -> None:
    client, project, secrets = app_for("required")
    server = client.app.state.server
    store = TokenStore(project)
    old, infer = bearer(secrets["predict"]), infer_body(X)

    def status(headers: dict[str, str]) -> int:
        return int(client.post("/v2/models/clf/infer", json=infer, headers=headers).status_code)

    # A reload runs its hooks in order: `hold` before the token refresh, `count` after it. Holding one reload at
    # `hold` while the token is revoked fixes the order: the revocation lands before that reload reads the tokens.
    held, release, armed = threading.Event(), threading.Event(), threading.Event()
    reads = threading.Semaphore(0)

    def hold() -> None:
        if armed.is_set():
            held.set()
            release.wait(30)

    server.reload_hooks.insert(0, hold)
    server.reload_hooks.append(reads.release)
    try:
        assert status(old) == 200
        armed.set()
        assert held.wait(30), "no reload started"  # reloads run every reload_interval_s (0.1 s here)
        store.revoke(store.verify(secrets["predict"]).id)  # type: ignore[union-attr]
        fresh = bearer(store.create("predict", name="fresh")[1])
        # until a reload reads the tokens, the server answers from the ones it has (one dict lookup a request)
        assert (status(old), status(fresh)) == (200, 401)
        while reads.acquire(blocking=False):  # forget the reads that finished before the revocation
            pass
        armed.clear()
        release.set()
        assert reads.acquire(timeout=30), "the held reload never finished"
        # the first reload to read the tokens after the revocation refuses the revoked token, and knows the new one
        assert (status(old), status(fresh)) == (401, 200)
    finally:
        armed.clear()
        release.set()
