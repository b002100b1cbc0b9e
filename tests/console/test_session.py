"""The console's sign-in, roles and CSRF protection, through Starlette's TestClient over a real project."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient

from modelmill import control
from modelmill.console.app import create_console
from modelmill.console.session import COOKIE, csrf_token
from modelmill.project import Project
from modelmill.registry import Registry
from modelmill.rollout import RolloutController
from modelmill.security import Authenticator, TokenStore
from modelmill.store.tables import audit_log
from tests.serving.conftest import signature, train_lr


@pytest.fixture
def console(project: Project) -> Iterator[tuple[TestClient, dict[str, str]]]:
    registry = Registry(project)
    for seed in range(2):
        registry.register("m", train_lr(seed), flavor="sklearn", signature=signature())
    registry.set_alias("m", "production", 1, actor="test", reason="first")
    control.start_rollout(project, "m", 2, actor="test", plan="shadow,50,100", stage_seconds=3600)
    store = TokenStore(project)
    secrets = {role: store.create(role, name=f"{role}-user")[1] for role in ("read", "admin")}
    auth = Authenticator(store)
    auth.refresh()
    app = Starlette(routes=[Mount("/ui", app=create_console(project, auth))])
    with TestClient(app, base_url="http://127.0.0.1:8080") as client:
        yield client, secrets


def _bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def _stage(project: Project) -> str:
    return str(RolloutController(project).get("m").current)


def test_no_token_goes_to_sign_in_and_a_bad_one_is_401(console: tuple[TestClient, dict[str, str]]) -> None:
    client, _ = console
    r = client.get("/ui/rollouts/m?x=1", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/ui/signin?next=/rollouts/m%3Fx%3D1"
    bad = client.get("/ui/", headers=_bearer("mmt_000000000000_nope"))
    assert bad.status_code == 401 and "unknown, revoked or malformed" in bad.text
    assert "Traceback" not in bad.text


def test_read_token_sees_no_button_and_a_forged_post_is_403(console: tuple[TestClient, dict[str, str]],
                                                            project: Project) -> None:
    client, secrets = console
    page = client.get("/ui/rollouts/m", headers=_bearer(secrets["read"]))
    assert page.status_code == 200 and "v2" in page.text
    assert "<button" not in page.text.split("<main", 1)[1].replace("Sign out", "")
    assert "needs an admin token" in page.text
    for verb in ("promote", "rollback"):
        forged = client.post(f"/ui/rollouts/m/{verb}", headers=_bearer(secrets["read"]),
                             data={"csrf": csrf_token(secrets["read"])})
        assert forged.status_code == 403 and "role admin" in forged.text
    assert _stage(project) == "shadow"


def test_admin_acts_only_with_the_page_s_csrf_token(console: tuple[TestClient, dict[str, str]],
                                                     project: Project) -> None:
    client, secrets = console
    signed = client.post("/ui/signin", data={"token": secrets["admin"], "next": "/rollouts/m"}, follow_redirects=False)
    assert signed.status_code == 303 and signed.headers["location"] == "/ui/rollouts/m"
    cookie = signed.headers["set-cookie"]
    assert f"{COOKIE}=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui/" in cookie
    page = client.get("/ui/rollouts/m")  # the cookie alone, no header
    assert page.status_code == 200
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
    assert csrf is not None and 'data-confirm="Promote m v2' in page.text
    # No CSRF token, a wrong one, or a post from another site: refused, nothing changes.
    assert client.post("/ui/rollouts/m/promote", data={}).status_code == 403
    assert client.post("/ui/rollouts/m/promote", data={"csrf": "0" * 64}).status_code == 403
    cross = client.post("/ui/rollouts/m/promote", data={"csrf": csrf.group(1)},
                        headers={"Origin": "http://evil.example"})
    assert cross.status_code == 403 and "another site" in cross.text
    assert _stage(project) == "shadow"
    done = client.post("/ui/rollouts/m/promote", data={"csrf": csrf.group(1), "reason": "looks good"},
                       headers={"Origin": "http://127.0.0.1:8080"}, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"].startswith("/ui/rollouts/m?done=")
    assert _stage(project) == "50"
    ctl = RolloutController(project)
    [moved] = [e for e in ctl.events(ctl.get("m").id) if e["to"] == "50"]
    assert moved["actor"] == "token:admin-user" and moved["detail"]["manual"] is True
    with project.db.engine.connect() as conn:
        audited = {(r.actor, r.subject) for r in conn.execute(audit_log.select().where(
            audit_log.c.action.like("rollout.%")))}
    assert ("token:admin-user", "m@2") in audited
    after = client.get(done.headers["location"])
    assert re.search(r"<p class=\"flash\" role=\"status\">[a-z_]+: looks good</p>", after.text)
    client.post("/ui/signout", data={"csrf": csrf.group(1)})
    assert client.get("/ui/", follow_redirects=False).status_code == 303


def test_sign_in_refuses_bad_tokens_and_foreign_redirects(console: tuple[TestClient, dict[str, str]]) -> None:
    client, secrets = console
    assert client.post("/ui/signin", data={"token": "nope"}).status_code == 401
    for target in ("//evil.example/x", "https://evil.example/", "javascript:alert(1)"):
        r = client.post("/ui/signin", data={"token": secrets["read"], "next": target}, follow_redirects=False)
        assert r.headers["location"] == "/ui/", target
    assert client.post("/ui/signin", data={"token": secrets["read"]},
                       headers={"Origin": "http://evil.example"}).status_code == 403


def test_bad_input_is_a_4xx_page_and_values_are_escaped(console: tuple[TestClient, dict[str, str]]) -> None:
    client, secrets = console
    h = _bearer(secrets["read"])
    for path, status, says in (("/ui/models/m/versions/abc", 400, "version"),
                               ("/ui/models/nobody", 404, "nobody"),
                               ("/ui/monitoring?window=zz", 400, "window"),
                               ("/ui/ingestion/dead-letters/x1", 400, "id"),
                               ("/ui/runs/compare?run=only-one", 400, "run"),
                               ("/ui/no-such-page", 404, "no such page")):
        r = client.get(path, headers=h)
        assert r.status_code == status and says in r.text and "Traceback" not in r.text, path
    evil = client.get("/ui/runs", params={"filter": "<script>alert(1)</script>"}, headers=h)
    assert "<script>alert(1)" not in evil.text and "&lt;script&gt;alert(1)" in evil.text
    assert "default-src 'self'" in evil.headers["content-security-policy"]


def test_every_page_renders_on_an_empty_part_of_the_project(console: tuple[TestClient, dict[str, str]]) -> None:
    client, secrets = console
    h = _bearer(secrets["read"])
    for path in ("/ui/", "/ui/runs", "/ui/rollouts", "/ui/rollouts/m", "/ui/experiments", "/ui/monitoring",
                 "/ui/ingestion", "/ui/models/m", "/ui/models/m/versions/2"):
        r = client.get(path, headers=h)
        assert r.status_code == 200, (path, r.text[-500:])
        if path in ("/ui/monitoring", "/ui/ingestion"):  # nothing monitored or ingested: said, never a pass
            assert "no data" in r.text and "pass" not in r.text.split("<main", 1)[1], path
    home = client.get("/ui/", headers=h).text
    assert "production" in home and "v1" in home and "v2" in home
    assert client.get("/ui/static/console.js").status_code == 200
    assert client.get("/ui/static/../app.py").status_code == 404


def test_the_monitoring_page_is_reused_for_a_while_and_says_when_it_was_read(
        console: tuple[TestClient, dict[str, str]]) -> None:
    client, secrets = console
    h = _bearer(secrets["read"])
    first = client.get("/ui/monitoring", headers=h).text
    stamp = re.search(r"Read at (\d\d:\d\d:\d\d UTC); this page is read again at most every 10 s", first)
    assert stamp is not None
    assert stamp.group(0) in client.get("/ui/monitoring", headers=h).text
    other = client.get("/ui/monitoring", params={"window": "2h"}, headers=h).text  # another query: read anew
    assert "2h windows" in other and "1h windows" not in other
