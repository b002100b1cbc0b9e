"""Tokens and the authenticator: the records, lookups, audit lines and answers that mutation testing found unchecked.

``make mutation`` showed these promises of ``security/tokens.py`` and ``security/auth.py`` held by no test; each
test here fails when one operator or constant of them changes (docs/mutation.md lists the survivors and why).
SQLite only: the PostgreSQL paths are the same statements, covered by tests/security/test_tokens.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from modelmill.config import Settings
from modelmill.errors import ConfigError, ConflictError, InputError, NotFoundError
from modelmill.project import Project
from modelmill.security import ROLES, Authenticator, TokenStore, parse_token
from modelmill.security.auth import actor
from modelmill.store.tables import audit_log
from modelmill.store.tables.security import api_tokens


@pytest.fixture
def store(tmp_path: Path) -> Iterator[TokenStore]:
    project = Project(Settings.defaults(home=tmp_path / ".modelmill"))
    yield TokenStore(project)
    project.close()


def _audit(store: TokenStore) -> list[dict[str, Any]]:
    with store.project.db.engine.connect() as conn:
        rows = conn.execute(sa.select(audit_log.c.actor, audit_log.c.action, audit_log.c.subject,
                                      audit_log.c.detail).order_by(audit_log.c.id))
        return [dict(r._mapping) for r in rows]


def test_a_token_record_as_shown_to_users_has_every_field_but_the_hash(store: TokenStore) -> None:
    token, _ = store.create("read", name="dash", actor="token:ops")
    assert token.as_dict() == {"id": token.id, "name": "dash", "role": "read", "created_at": token.created_at,
                               "created_by": "token:ops", "revoked_at": None, "revoked": False}
    revoked = store.revoke("dash")
    assert revoked.as_dict() == {**token.as_dict(), "revoked_at": revoked.revoked_at, "revoked": True}
    assert "sha256" not in repr(token)
    # what the store reads back is the record it wrote, field for field
    assert store.get(token.id) == dataclasses.replace(token, revoked_at=revoked.revoked_at)


def test_creating_is_audited_as_the_cli_and_an_unknown_role_is_refused_naming_the_roles(store: TokenStore) -> None:
    token, _ = store.create("admin", name="root")
    assert token.created_by == "cli" and store.get("root").created_by == "cli"
    assert _audit(store) == [{"actor": "cli", "action": "token.create", "subject": f"token:{token.id}",
                              "detail": {"name": "root", "role": "admin"}}]
    with pytest.raises(InputError) as info:
        store.create("owner")
    assert (info.value.field, info.value.problem, info.value.value) == ("role", f"must be one of {', '.join(ROLES)}",
                                                                        "owner")
    assert "read, predict" in info.value.problem and "admin" in info.value.problem


def test_a_bad_or_taken_name_is_refused_saying_why(store: TokenStore) -> None:
    with pytest.raises(InputError) as info:
        store.create("read", name="-starts-with-a-dash")
    assert (info.value.field, info.value.value) == ("name", "-starts-with-a-dash")
    assert info.value.problem == "must be 1-100 letters, digits or '_.@:-', starting with a letter or digit"
    store.create("read", name="web")
    with pytest.raises(ConflictError) as taken:
        store.create("admin", name="web")
    assert taken.value.message == "an active token named 'web' exists; revoke it first or pick another name"
    assert taken.value.context == {"name": "web"}


def test_a_secret_carries_32_random_bytes_and_an_overlong_token_is_malformed(store: TokenStore) -> None:
    token, secret = store.create("read", name="web")
    assert secret.startswith(f"mmt_{token.id}_")
    assert len(secret[len(f"mmt_{token.id}_"):]) == 43  # 32 bytes, base64url without padding
    overlong = f"mmt_{token.id}_" + "x" * 200
    assert parse_token(overlong) is None and store.verify(overlong) is None


def test_tokens_are_listed_oldest_first_and_ties_by_id(store: TokenStore) -> None:
    made = [store.create("read", name=f"t{i}")[0] for i in range(8)]
    assert [t.name for t in store.list()] == [f"t{i}" for i in range(8)]
    # two records stamped the same instant (two replicas) still list in one order: by id
    same = [dataclasses.replace(made[0], id=i, name=f"tie-{i}", created_at=1.0) for i in ("ffffffffffff", "000000000000")]
    with store.project.db.begin() as conn:
        for t in same:
            conn.execute(api_tokens.insert().values(**{f.name: getattr(t, f.name) for f in dataclasses.fields(t)}))
    assert [t.id for t in store.list()[:2]] == ["000000000000", "ffffffffffff"]


def test_revoking_from_the_cli_is_audited_as_the_cli_with_the_name_and_role(store: TokenStore) -> None:
    token, _ = store.create("predict", name="web")
    store.revoke(token.id)
    assert _audit(store)[-1] == {"actor": "cli", "action": "token.revoke", "subject": f"token:{token.id}",
                                 "detail": {"name": "web", "role": "predict"}}


def test_a_name_finds_the_active_token_else_the_newest_revoked_one(store: TokenStore) -> None:
    first, _ = store.create("read", name="web")
    store.revoke("web")
    second, _ = store.create("read", name="web")
    store.revoke("web")
    assert store.get("web").id == second.id  # both revoked: the newest
    # a revoked row stamped later (another replica whose clock runs ahead) does not hide the active token
    third, _ = store.create("admin", name="web")
    ahead = dataclasses.replace(second, id="0123456789ab", created_at=time.time() + 3600, revoked_at=time.time())
    with store.project.db.begin() as conn:
        conn.execute(api_tokens.insert().values(**{f.name: getattr(ahead, f.name) for f in dataclasses.fields(ahead)}))
    assert store.get("web").id == third.id
    assert store.get(first.id).id == first.id  # an id always finds its own record


def test_an_unknown_token_is_not_found_with_a_hint(store: TokenStore) -> None:
    with pytest.raises(NotFoundError) as info:
        store.get("nope")
    assert (info.value.kind, info.value.name) == ("token", "nope")
    assert info.value.message == "token 'nope' not found; see the ids and names with: modelmill token list"


def _app(auth: Authenticator) -> TestClient:
    async def whoami(request: Request) -> Response:
        return JSONResponse({"token": request.state.token.name, "actor": actor(request)})

    async def open_actor(request: Request) -> Response:
        return JSONResponse({"actor": actor(request)})

    return TestClient(Starlette(routes=[
        Route("/admin", auth.guard(whoami, "admin"), methods=["GET", "PUT"]),
        Route("/read", auth.guard(whoami, "read")),
        Route("/data", auth.guard_data(open_actor, "predict")),
    ]))


def _seeded(store: TokenStore, mode: str = "control") -> tuple[Authenticator, dict[str, str]]:
    secrets = {role: store.create(role, name=f"{role}-bot")[1] for role in ("read", "predict", "admin")}
    auth = Authenticator(store, mode=mode)
    auth.refresh()
    return auth, secrets


def test_a_valid_token_reaches_the_endpoint_which_sees_who_called(store: TokenStore) -> None:
    auth, secrets = _seeded(store)
    client = _app(auth)
    answer = client.get("/admin", headers={"Authorization": f"Bearer {secrets['admin']}"})
    assert (answer.status_code, answer.json()) == (200, {"token": "admin-bot", "actor": "token:admin-bot"})
    # the scheme is case-insensitive and surrounding blanks are ignored (RFC 7235)
    for header in (f"bearer {secrets['read']}", f"BEARER   {secrets['read']}  "):
        assert client.get("/read", headers={"Authorization": header}).json()["token"] == "read-bot"


def test_no_token_a_bad_token_and_a_weak_token_get_401_401_and_403_with_their_own_messages(
        store: TokenStore) -> None:
    auth, secrets = _seeded(store)
    client = _app(auth)
    missing = client.put("/admin")
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == 'Bearer realm="modelmill"'
    assert missing.json() == {"error": "PUT /admin needs an API token: send the header Authorization: Bearer "
                                       "<token> (create one with modelmill token create)"}
    wrong_secret = secrets["admin"][:-4] + ("aaaa" if not secrets["admin"].endswith("aaaa") else "bbbb")
    unknown_id = "mmt_ffffffffffff_" + secrets["admin"].split("_", 2)[2]
    for bad in (f"Bearer {wrong_secret}", f"Bearer {unknown_id}", "Bearer mmt_nonsense", "Basic dXNlcjpwdw==",
                secrets["admin"]):
        denied = client.get("/admin", headers={"Authorization": bad})
        assert denied.status_code == 401 and denied.headers["www-authenticate"] == 'Bearer realm="modelmill"', bad
        assert denied.json() == {"error": "GET /admin: the API token is unknown, revoked or malformed; check it "
                                          "with modelmill token list"}, bad
    weak = client.get("/admin", headers={"Authorization": f"Bearer {secrets['predict']}"})
    assert weak.status_code == 403 and "www-authenticate" not in weak.headers
    assert weak.json() == {"error": "GET /admin needs a token with role admin; token 'predict-bot' has role predict"}


def test_the_data_plane_is_open_in_control_mode_and_guarded_in_required_mode(store: TokenStore) -> None:
    control, secrets = _seeded(store)
    assert not control.required
    assert _app(control).get("/data").json() == {"actor": "api"}
    required = Authenticator(store, mode="required")
    required.refresh()
    assert required.required
    client = _app(required)
    assert client.get("/data").status_code == 401
    assert client.get("/data", headers={"Authorization": f"Bearer {secrets['read']}"}).status_code == 403
    assert client.get("/data", headers={"Authorization": f"Bearer {secrets['predict']}"}).json() == \
        {"actor": "token:predict-bot"}


def test_refresh_drops_revoked_tokens_and_stamps_the_time_and_an_unknown_mode_is_refused(
        store: TokenStore) -> None:
    auth, secrets = _seeded(store)
    assert time.time() - 60 < auth.refreshed_at <= time.time()
    assert auth.authenticate(f"Bearer {secrets['read']}") is not None
    store.revoke("read-bot")
    auth.refresh()
    assert auth.authenticate(f"Bearer {secrets['read']}") is None
    assert repr(auth) == "Authenticator(mode='control', tokens=2)"
    admin = store.get("admin-bot")
    seeded_only = Authenticator(tokens={admin.id: admin})
    seeded_only.refresh()  # no store: nothing to read, and no error; the seeded tokens stay
    assert seeded_only.refreshed_at == 0.0
    assert seeded_only.authenticate(f"Bearer {secrets['admin']}") == admin
    assert seeded_only.authenticate(f"Bearer {secrets['read']}") is None
    with pytest.raises(ConfigError) as info:
        Authenticator(store, mode="open")
    assert (info.value.key, info.value.value, info.value.accepted) == ("serving.auth", "open",
                                                                       "one of 'control', 'required'")


# --- the tokens' small helpers, pinned (mutmut's survivors of a full run, third session) --------------------

def test_a_misspelt_role_on_a_route_is_a_key_error_naming_it_and_the_roles() -> None:
    from modelmill.security.tokens import allows

    with pytest.raises(KeyError) as err:
        allows("admin", "amdin")
    assert err.value.args == ("unknown role 'amdin'; roles are read, predict, label, admin",)


def test_a_token_with_a_lone_surrogate_hashes_instead_of_raising() -> None:
    # an HTTP header decoded with surrogateescape can carry one; hashing must not turn a bad token into a 500
    from modelmill.security.tokens import hash_token

    odd = hash_token("mmt_0123456789ab_\ud800")
    assert len(odd) == 64 and odd != hash_token("mmt_0123456789ab_") and odd == hash_token("mmt_0123456789ab_\ud800")
    assert odd == hashlib.sha256("mmt_0123456789ab_\ud800".encode("utf-8", "surrogatepass")).hexdigest()


def test_parse_token_takes_up_to_200_characters_and_needs_a_secret() -> None:
    from modelmill.security.tokens import parse_token

    head = "mmt_0123456789ab_"
    assert parse_token(head + "s" * (200 - len(head))) == "0123456789ab"  # exactly 200: parsed
    assert parse_token(head + "s" * (201 - len(head))) is None  # 201: refused before any lookup
    assert parse_token(head) is None  # a separator but no secret
    assert parse_token("mmt_0123456789ab") is None  # no separator


def test_check_role_returns_the_role() -> None:
    from modelmill.security.tokens import check_role

    assert [check_role(r) for r in ("read", "predict", "label", "admin")] == ["read", "predict", "label", "admin"]
