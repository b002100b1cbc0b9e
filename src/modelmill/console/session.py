"""Who is looking at the console, and whether a change they send is really theirs.

The console takes the server's API tokens (``modelmill token create``): a ``read`` token views
every page, an ``admin`` token also acts (promote, roll back). A token arrives either as the header
``Authorization: Bearer <token>`` (scripts, tests) or in the cookie the sign-in page sets: HttpOnly
(no script reads it), ``SameSite=Strict`` (no other site's page sends it) and scoped to the console's
path.

Every state-changing request (each ``POST``) must also carry a CSRF token in its form field ``csrf``:
an HMAC of the caller's API token, so only a page the console rendered for that token knows it, and
the same value works in every worker. A request whose ``Origin`` names another host is refused too.

    >>> csrf_token("mm_abc") == csrf_token("mm_abc") != csrf_token("mm_abd")
    True
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.requests import Request

from modelmill.security import Authenticator, Token, allows

__all__ = ["COOKIE", "Denied", "Viewer", "csrf_token", "identify", "same_origin"]

#: The sign-in cookie: the API token itself, HttpOnly and SameSite=Strict.
COOKIE = "modelmill_console"
_CSRF_KEY = b"modelmill console csrf v1"


def csrf_token(presented: str) -> str:
    """The CSRF token of the pages rendered for the API token ``presented``."""
    return hmac.new(presented.encode(), _CSRF_KEY, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Viewer:
    """The caller: their token record, how it came (``header`` or ``cookie``) and its CSRF token."""

    token: Token
    via: str
    csrf: str

    @property
    def can_act(self) -> bool:
        """Whether this caller may change things (role ``admin``)."""
        return allows(self.token.role, "admin")

    @property
    def actor(self) -> str:
        """The audit trail's name for what this caller does: ``token:<name>``, as over ``/v1``."""
        return f"token:{self.token.name}"


class Denied(Exception):
    """The request may not go on: ``status`` 401 (no valid token) or 403 (role, CSRF, origin)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def identify(request: Request, auth: Authenticator, role: str = "read") -> Viewer:
    """The caller of ``request`` when their token has ``role``; :class:`Denied` otherwise."""
    header = request.headers.get("authorization")
    if header:
        presented, via = header[7:].strip() if header[:7].lower() == "bearer " else "", "header"
    else:
        presented, via = request.cookies.get(COOKIE, ""), "cookie"
    if not presented:
        raise Denied(401, "sign in with an API token (create one with modelmill token create --role read)")
    token = auth.authenticate(f"Bearer {presented}")
    if token is None:
        raise Denied(401, "the API token is unknown, revoked or malformed; check it with modelmill token list")
    if not allows(token.role, role):
        raise Denied(403, f"this needs a token with role {role}; token {token.name!r} has role {token.role}")
    return Viewer(token=token, via=via, csrf=csrf_token(presented))


def same_origin(request: Request) -> bool:
    """False when the request's ``Origin`` (or, lacking one, ``Referer``) names another host than it was sent to."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin or origin == "null":
        return origin != "null"
    return urlsplit(origin).netloc == request.headers.get("host", "")
