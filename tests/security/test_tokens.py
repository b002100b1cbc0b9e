"""API tokens: shown once, stored only as a sha256, verified in constant time, revocable; SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from modelmill.config import Settings
from modelmill.errors import ConflictError, InputError, NotFoundError
from modelmill.project import Project
from modelmill.security import ROLES, Authenticator, TokenStore, allows, parse_token
from modelmill.store.tables import audit_log
from modelmill.store.tables.security import api_tokens

compare_digest = hmac.compare_digest  # the real one, before a test spies on it


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TokenStore]:
    settings = Settings.defaults(home=tmp_path / ".modelmill")
    if request.param == "postgresql":
        settings = settings.replace(db=request.getfixturevalue("pg_url"))
    project = Project(settings)
    yield TokenStore(project)
    project.close()


def test_secret_is_shown_once_and_only_its_sha256_is_stored(store: TokenStore) -> None:
    token, secret = store.create("admin", name="ci")
    assert secret.startswith("mmt_") and len(secret) > 40 and parse_token(secret) == token.id
    with store.project.db.engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(sa.select(api_tokens))]
    assert len(rows) == 1
    row = rows[0]
    assert row["sha256"] == hashlib.sha256(secret.encode()).hexdigest()
    secret_part = secret.split("_", 2)[2]  # mmt_<id>_<random part, which may itself hold '_'>
    assert not any(secret_part in str(v) for v in row.values())  # the secret itself is nowhere
    assert "sha256" not in repr(token) and secret_part not in repr(token)
    verified = store.verify(secret)
    assert verified is not None and (verified.name, verified.role) == ("ci", "admin")


def test_wrong_secret_unknown_id_and_malformed_tokens_are_refused(store: TokenStore) -> None:
    token, secret = store.create("read")
    wrong = secret[:-4] + ("AAAA" if not secret.endswith("AAAA") else "BBBB")
    for bad in (wrong, f"mmt_{'0' * 12}_{secret.split('_', 2)[2]}", "", "Bearer x", "mmt_", "mmt_xyz_abc",
                secret + "x", "mmt_" + token.id):
        assert store.verify(bad) is None, bad


def test_the_secret_is_checked_by_compare_digest_on_equal_lengths(store: TokenStore,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # What is checked: every verification, by the store and by a server's Authenticator, right or wrong secret of
    # any length, is decided by hmac.compare_digest on two sha256 digests of equal length (compare_digest's time
    # depends only on the length). Its timing itself is not measured.
    token, secret = store.create("read")
    calls: list[tuple[Any, Any]] = []
    verdict: list[bool | None] = [None]  # None: compare_digest decides; True or False: it is overruled

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        real = compare_digest(a, b)
        return real if verdict[0] is None else verdict[0]

    monkeypatch.setattr(hmac, "compare_digest", spy)
    auth = Authenticator(store)
    auth.refresh()
    header = f"Bearer {secret}"
    wrong = [secret[:-1] + ("A" if secret[-1] != "A" else "B"), secret + "x" * 50, f"mmt_{token.id}_x"]
    assert store.verify(secret) is not None and auth.authenticate(header) is not None
    assert all(store.verify(w) is None and auth.authenticate(f"Bearer {w}") is None for w in wrong)
    assert len(calls) == 2 + 2 * len(wrong)
    assert all(isinstance(a, str) and isinstance(b, str) and len(a) == len(b) == 64 for a, b in calls), calls
    verdict[0] = False  # the right secret is refused when compare_digest says no: nothing else decides
    assert store.verify(secret) is None and auth.authenticate(header) is None
    verdict[0] = True  # and a wrong one passes when it says yes (so there is no other comparison before it)
    assert store.verify(wrong[0]) is not None and auth.authenticate(f"Bearer {wrong[0]}") is not None


def test_roles_nest_and_unknown_roles_are_refused(store: TokenStore) -> None:
    assert ROLES == ("read", "predict", "label", "admin")
    assert allows("admin", "read") and allows("predict", "read") and not allows("read", "predict")
    # label and predict are siblings: each reads, neither may do the other's job; admin does both
    assert allows("label", "label") and allows("label", "read") and allows("admin", "label")
    assert not allows("label", "predict") and not allows("predict", "label") and not allows("label", "admin")
    assert not allows("nobody", "read")
    with pytest.raises(InputError, match="role"):
        store.create("root")
    with pytest.raises(InputError, match="name"):
        store.create("read", name="has spaces")


def test_revoke_by_name_or_id_is_idempotent_and_audited(store: TokenStore) -> None:
    a, secret_a = store.create("predict", name="web")
    b, secret_b = store.create("read")
    with pytest.raises(ConflictError):
        store.create("read", name="web")  # one active token per name
    assert store.revoke("web").revoked
    assert store.revoke(a.id).revoked  # again, by id: no error, no second audit line
    assert store.verify(secret_a) is None and store.verify(secret_b) is not None
    assert [t.name for t in store.list(include_revoked=False)] == [b.name]
    assert {t.id: t.revoked for t in store.list()} == {a.id: True, b.id: False}
    assert set(store.active()) == {b.id}
    new, _ = store.create("admin", name="web")  # the name is free again
    assert store.get("web").id == new.id
    with pytest.raises(NotFoundError):
        store.revoke("nope")
    with store.project.db.engine.connect() as conn:
        actions = [r.action for r in conn.execute(sa.select(audit_log).where(audit_log.c.subject.like("token:%"))
                                                  .order_by(audit_log.c.id))]
    assert actions == ["token.create", "token.create", "token.revoke", "token.create"]
