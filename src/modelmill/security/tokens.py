"""API tokens: a random secret shown once, stored as its sha256, checked in constant time.

A token reads ``mmt_<id>_<secret>``: ``id`` (12 hex digits) finds its row,
``secret`` (32 random bytes) is what proves it. Only the sha256 of the whole
token is stored, so a copy of the database grants nothing. Roles grant
(:data:`GRANTS`): ``read`` looks; ``predict`` also predicts; ``label`` also
posts ground truth (``POST /v1/models/{name}/labels``) but may not predict,
so a labelling job's token cannot be used to query the model; ``admin`` may
do everything.

    >>> import tempfile
    >>> from modelmill.config import Settings
    >>> from modelmill.project import Project
    >>> p = Project(Settings.defaults(home=tempfile.mkdtemp()))
    >>> store = TokenStore(p)
    >>> token, secret = store.create("predict", name="web")
    >>> secret.startswith("mmt_"), token.role, store.verify(secret).name
    (True, 'predict', 'web')
    >>> allows(token.role, "read"), allows(token.role, "admin"), allows(token.role, "label")
    (True, False, False)
    >>> store.revoke("web").revoked
    True
    >>> store.verify(secret) is None
    True
    >>> p.close()
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
import secrets
import time
from typing import Any

import sqlalchemy as sa

from modelmill.errors import ConflictError, InputError, NotFoundError
from modelmill.store.tables.security import api_tokens

__all__ = ["GRANTS", "PREFIX", "ROLES", "Token", "TokenStore", "allows", "hash_token", "parse_token"]

#: The roles a token may have, from least to most.
ROLES = ("read", "predict", "label", "admin")
#: What each role may call: a route needs one of these names. ``label`` and ``predict`` are siblings, not
#: ranks: a feedback job posting labels has no business predicting, nor a client predicting labelling.
GRANTS: dict[str, frozenset[str]] = {
    "read": frozenset({"read"}),
    "predict": frozenset({"read", "predict"}),
    "label": frozenset({"read", "label"}),
    "admin": frozenset(ROLES),
}
PREFIX = "mmt_"

_ID = re.compile(r"^[0-9a-f]{12}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@:\-]{0,99}$")


def allows(role: str, needed: str) -> bool:
    """Whether a token of ``role`` may call something that needs ``needed`` (one of :data:`ROLES`)."""
    if needed not in GRANTS:  # a route guarded by a misspelt role is a bug, not a route nobody may call
        raise KeyError(f"unknown role {needed!r}; roles are {', '.join(ROLES)}")
    return needed in GRANTS.get(role, frozenset())


def hash_token(token: str) -> str:
    """The sha256 (hex) under which a token is stored."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def parse_token(token: str) -> str | None:
    """The id of a well-formed token, or None (so a malformed one costs no lookup)."""
    if not token.startswith(PREFIX) or len(token) > 200:
        return None
    token_id, sep, secret = token[len(PREFIX):].partition("_")
    if not sep or not secret or not _ID.fullmatch(token_id):
        return None
    return token_id


def check_role(role: Any) -> str:
    if role not in GRANTS:
        raise InputError("role", f"must be one of {', '.join(ROLES)}", role)
    return str(role)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Token:
    """One token's record (never its secret)."""

    id: str
    name: str
    role: str
    sha256: str = dataclasses.field(repr=False)
    created_at: float
    created_by: str
    revoked_at: float | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def matches(self, token: str) -> bool:
        """Whether ``token`` is this token's secret; constant time in what it compares."""
        return hmac.compare_digest(hash_token(token), self.sha256)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "role": self.role, "created_at": self.created_at,
                "created_by": self.created_by, "revoked_at": self.revoked_at, "revoked": self.revoked}


class TokenStore:
    """Tokens in the project's metadata database (table ``api_tokens``); every change is audited."""

    def __init__(self, project: Any) -> None:
        self.project = project

    def __repr__(self) -> str:
        return f"TokenStore({self.project!r})"

    def create(self, role: str, *, name: str | None = None, actor: str = "cli") -> tuple[Token, str]:
        """A new token of ``role``; returns its record and its secret (shown once, never stored)."""
        check_role(role)
        token_id = secrets.token_hex(6)
        if name is None:
            name = f"{role}-{token_id}"
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise InputError("name", "must be 1-100 letters, digits or '_.@:-', starting with a letter or digit",
                             name)
        secret = f"{PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
        record = Token(id=token_id, name=name, role=role, sha256=hash_token(secret), created_at=time.time(),
                       created_by=actor)
        db = self.project.db
        with db.begin() as conn:
            taken = conn.execute(sa.select(api_tokens.c.id).where(
                api_tokens.c.name == name, api_tokens.c.revoked_at.is_(None))).first()
            if taken is not None:
                raise ConflictError(f"an active token named {name!r} exists; revoke it first or pick another name",
                                    name=name)
            conn.execute(api_tokens.insert().values(**{f.name: getattr(record, f.name)
                                                       for f in dataclasses.fields(record)}))
            db.audit(conn, actor=actor, action="token.create", subject=f"token:{token_id}",
                     detail={"name": name, "role": role})
        return record, secret

    def list(self, *, include_revoked: bool = True) -> list[Token]:
        """Every token, oldest first."""
        query = sa.select(api_tokens).order_by(api_tokens.c.created_at, api_tokens.c.id)
        if not include_revoked:
            query = query.where(api_tokens.c.revoked_at.is_(None))
        with self.project.db.engine.connect() as conn:
            return [_token(r) for r in conn.execute(query)]

    def active(self) -> dict[str, Token]:
        """The tokens that are not revoked, by id: what a server caches."""
        return {t.id: t for t in self.list(include_revoked=False)}

    def get(self, ref: str) -> Token:
        """A token by id, or by name (the active one with that name, else the newest)."""
        with self.project.db.engine.connect() as conn:
            row = conn.execute(sa.select(api_tokens).where(api_tokens.c.id == ref)).first()
            if row is None:
                row = conn.execute(sa.select(api_tokens).where(api_tokens.c.name == ref).order_by(
                    api_tokens.c.revoked_at.is_not(None), api_tokens.c.created_at.desc())).first()
        if row is None:
            raise NotFoundError("token", ref, "see the ids and names with: modelmill token list")
        return _token(row)

    def revoke(self, ref: str, *, actor: str = "cli") -> Token:
        """Revoke a token (by id or name); servers refuse it after their next reload. Idempotent."""
        token = self.get(ref)
        if token.revoked:
            return token
        now = time.time()
        db = self.project.db
        with db.begin() as conn:
            conn.execute(api_tokens.update().where(api_tokens.c.id == token.id, api_tokens.c.revoked_at.is_(None))
                         .values(revoked_at=now))
            db.audit(conn, actor=actor, action="token.revoke", subject=f"token:{token.id}",
                     detail={"name": token.name, "role": token.role})
        return dataclasses.replace(token, revoked_at=now)

    def verify(self, token: str) -> Token | None:
        """The active token ``token`` is the secret of, or None (one database read; servers cache)."""
        token_id = parse_token(token)
        if token_id is None:
            return None
        with self.project.db.engine.connect() as conn:
            row = conn.execute(sa.select(api_tokens).where(api_tokens.c.id == token_id,
                                                           api_tokens.c.revoked_at.is_(None))).first()
        if row is None:
            return None
        record = _token(row)
        return record if record.matches(token) else None


def _token(row: Any) -> Token:
    return Token(id=row.id, name=row.name, role=row.role, sha256=row.sha256, created_at=row.created_at,
                 created_by=row.created_by, revoked_at=row.revoked_at)
