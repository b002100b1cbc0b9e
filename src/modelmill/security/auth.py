"""Checking bearer tokens on HTTP routes: 401 without a valid token, 403 without the role.

An :class:`Authenticator` keeps the active tokens in memory and is refreshed
from the database by the server's periodic reload, so checking a request
costs one sha256 and one dictionary lookup, and a revoked token stops working
within one reload interval. When the database is unreachable the last tokens
read keep working. Routes are guarded one by one (:meth:`Authenticator.guard`);
a route that is not guarded costs nothing.

``mode`` says what is guarded: ``"control"`` (the default) guards the control
plane (routes, aliases, ``/metrics`` stays open), ``"required"`` guards
predictions and metadata too. Health checks and the OpenAPI document are never
guarded.

    >>> import asyncio
    >>> from starlette.applications import Starlette
    >>> from starlette.responses import PlainTextResponse
    >>> from starlette.routing import Route
    >>> from starlette.testclient import TestClient
    >>> auth = Authenticator(tokens={})
    >>> async def hello(request):
    ...     return PlainTextResponse(f"hello {request.state.token.name}")
    >>> app = Starlette(routes=[Route("/admin", auth.guard(hello, "admin"))])
    >>> TestClient(app).get("/admin").json()
    {'error': 'GET /admin needs an API token: send the header Authorization: Bearer <token> (create one with modelmill token create)'}
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from modelmill.errors import ConfigError
from modelmill.security.tokens import Token, TokenStore, allows, parse_token

__all__ = ["MODES", "Authenticator", "actor"]

log = logging.getLogger(__name__)

MODES = ("control", "required")

Endpoint = Callable[[Request], Awaitable[Response]]


def _deny(status: int, message: str) -> Response:
    headers = {"WWW-Authenticate": 'Bearer realm="modelmill"'} if status == 401 else None
    return Response(orjson.dumps({"error": message}), status, headers, "application/json")


class Authenticator:
    """Verifies ``Authorization: Bearer`` tokens against an in-memory copy of the active tokens.

    ``store`` (a :class:`TokenStore`) is what :meth:`refresh` reads; ``tokens`` seeds the
    copy (tests). ``mode`` is ``"control"`` or ``"required"`` (see the module docstring).
    """

    def __init__(self, store: TokenStore | None = None, *, mode: str = "control",
                 tokens: Mapping[str, Token] | None = None) -> None:
        if mode not in MODES:
            raise ConfigError("serving.auth", mode, f"one of {', '.join(repr(m) for m in MODES)}")
        self.store = store
        self.mode = mode
        self._tokens: dict[str, Token] = dict(tokens or {})
        self._lock = threading.Lock()
        self.refreshed_at = 0.0

    def __repr__(self) -> str:
        return f"Authenticator(mode={self.mode!r}, tokens={len(self._tokens)})"

    @property
    def required(self) -> bool:
        """Whether predictions and metadata need a token too."""
        return self.mode == "required"

    def refresh(self) -> None:
        """Re-read the active tokens (called from the server's reload; blocking I/O, run it off the loop)."""
        if self.store is None:
            return
        tokens = self.store.active()
        with self._lock:
            self._tokens = tokens
            self.refreshed_at = time.time()

    def authenticate(self, authorization: str | None) -> Token | None:
        """The active token an ``Authorization`` header value carries, or None."""
        if not authorization or authorization[:7].lower() != "bearer ":
            return None
        presented = authorization[7:].strip()
        token_id = parse_token(presented)
        if token_id is None:
            return None
        record = self._tokens.get(token_id)
        if record is None:
            return None
        return record if record.matches(presented) else None

    def check(self, request: Request, role: str) -> Response | None:
        """None when the request may go on; otherwise the 401 or 403 answer."""
        token = self.authenticate(request.headers.get("authorization"))
        where = f"{request.method} {request.url.path}"
        if token is None:
            if request.headers.get("authorization"):
                return _deny(401, f"{where}: the API token is unknown, revoked or malformed; "
                                  "check it with modelmill token list")
            return _deny(401, f"{where} needs an API token: send the header Authorization: Bearer <token> "
                              "(create one with modelmill token create)")
        if not allows(token.role, role):
            return _deny(403, f"{where} needs a token with role {role}; token {token.name!r} has role "
                              f"{token.role}")
        request.state.token = token
        return None

    def guard(self, endpoint: Endpoint, role: str) -> Endpoint:
        """``endpoint`` answering only callers whose token has ``role`` (or a higher one)."""
        check = self.check

        @functools.wraps(endpoint)
        async def guarded(request: Request) -> Response:
            denied = check(request, role)
            if denied is not None:
                return denied
            return await endpoint(request)

        return guarded

    def guard_data(self, endpoint: Endpoint, role: str) -> Endpoint:
        """``endpoint`` guarded only in ``"required"`` mode: the data plane stays free otherwise."""
        return self.guard(endpoint, role) if self.required else endpoint


def actor(request: Request) -> str:
    """Who made a control-plane call, for the audit trail: ``token:<name>``."""
    token: Any = getattr(request.state, "token", None)
    return f"token:{token.name}" if token is not None else "api"

