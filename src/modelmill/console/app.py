"""The web console as one Starlette app: mounted at ``/ui`` by ``modelmill serve``, alone by ``modelmill ui``.

``create_console(project, auth)`` builds it; ``project`` is the project itself or a callable giving it
(the server hands over its own). Every page needs a ``read`` token and every action an ``admin`` one
(:mod:`modelmill.console.session`); actions are plain HTML forms posted with the page's CSRF token, and
call the same control-plane functions as ``POST /v1/rollouts/{name}/promote|rollback``, audited as
``token:<name>``. Assets (one stylesheet, one small script) are served from the package.

    >>> import tempfile
    >>> from starlette.testclient import TestClient
    >>> from modelmill.config import Settings
    >>> from modelmill.project import Project
    >>> from modelmill.security import Authenticator
    >>> project = Project(Settings.defaults(home=tempfile.mkdtemp()))
    >>> client = TestClient(create_console(project, Authenticator(tokens={})))
    >>> client.get("/", follow_redirects=False).headers["location"]
    '/signin?next=/'
    >>> project.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from modelmill import control
from modelmill.console import pages
from modelmill.console.layout import esc, page
from modelmill.console.session import COOKIE, Denied, Viewer, identify, same_origin
from modelmill.errors import InputError, ModelmillError
from modelmill.registry import check_version
from modelmill.security import Authenticator

__all__ = ["STATIC", "create_console"]

log = logging.getLogger(__name__)

#: How long the monitoring page, which reads the prediction log and joins the labels, is reused.
MONITORING_TTL_S = 10.0
#: The packaged assets: name -> media type.
STATIC = {"console.css": "text/css; charset=utf-8", "console.js": "text/javascript; charset=utf-8"}
_SECURITY_HEADERS = {
    # Only this origin's own script, style and images; no frame, no form posting elsewhere.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
                               "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _status(exc: BaseException) -> int:
    from modelmill.serving.responses import status_of

    return status_of(exc)


def create_console(project: Any, auth: Authenticator, *, after_change: Callable[[], Awaitable[None]] | None = None,
                   refresh_s: float | None = None) -> Starlette:
    """The console app over ``project`` (or a callable returning it), checking tokens with ``auth``.

    ``after_change`` runs after an action changed traffic (the server reloads its routes).
    ``refresh_s`` re-reads the tokens that often (standalone; under ``serve`` the server refreshes them).
    """
    get_project: Callable[[], Any] = project if callable(project) else (lambda: project)
    assets = {name: resources.files("modelmill.console").joinpath("assets", name).read_bytes() for name in STATIC}

    def base_of(request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    def html(body: str, status: int = 200, headers: dict[str, str] | None = None) -> HTMLResponse:
        return HTMLResponse(body, status, headers={**_SECURITY_HEADERS, **(headers or {})})

    def error_page(request: Request, status: int, message: str, viewer: Viewer | None = None) -> HTMLResponse:
        base = base_of(request)
        title = {400: "Bad request", 401: "Sign in needed", 403: "Not allowed", 404: "Not found",
                 409: "Conflict", 503: "Unavailable"}.get(status, "Error")
        extra = f' <a href="{esc(base)}/signin">Sign in</a>' if status == 401 else ""
        body = f'<p class="error" role="alert">{esc(message)}{extra}</p>'
        return html(page(base, title, body, viewer=viewer), status)

    cache: dict[tuple[str, str, bool], tuple[float, pages.View]] = {}

    def view(render: Callable[[pages.Context, Request], pages.View], *,
             ttl_s: float | None = None) -> Callable[[Request], Awaitable[Response]]:
        """A page endpoint; with ``ttl_s``, a rendered page is reused that long (the same query, the same
        role), and says when it was read."""
        async def endpoint(request: Request) -> Response:
            base = base_of(request)
            try:
                viewer = identify(request, auth, "read")
            except Denied as exc:
                if exc.status == 401 and "authorization" not in request.headers:
                    target = request.url.path[len(base):] or "/"
                    if request.url.query:
                        target += f"?{request.url.query}"
                    return RedirectResponse(f"{base}/signin?next={quote(target, safe='/')}", 303)
                return error_page(request, exc.status, exc.message)
            ctx = pages.Context(project=None, base=base, can_act=viewer.can_act, csrf=viewer.csrf)

            key = (request.url.path, str(sorted(request.query_params.multi_items())), viewer.can_act)

            def run() -> pages.View:
                if ttl_s is not None:
                    hit = cache.get(key)
                    if hit is not None and time.monotonic() - hit[0] < ttl_s:
                        return hit[1]
                v = render(pages.Context(get_project(), base, ctx.can_act, ctx.csrf), request)
                if ttl_s is not None:
                    read_at = time.strftime("%H:%M:%S UTC", time.gmtime())
                    v = dataclasses.replace(v, body=f'<p class="muted">Read at {read_at}; this page is read again '
                                                    f"at most every {ttl_s:.0f} s.</p>{v.body}")
                    if len(cache) > 256:
                        cache.clear()
                    cache[key] = (time.monotonic(), v)
                return v

            try:
                v = await asyncio.to_thread(run)
            except ModelmillError as exc:
                return error_page(request, _status(exc), exc.message, viewer)
            except Exception as exc:  # a page must never be a traceback
                log.error("console page %s failed", request.url.path, exc_info=exc)
                return error_page(request, 500, f"internal error: {type(exc).__name__}", viewer)
            flash = request.query_params.get("done")
            return html(page(base, v.title, v.body, viewer=viewer, active=v.active, poll=v.poll,
                             flash=flash[:300] if flash else None))
        return endpoint

    # ---- pages -----------------------------------------------------------------------------------

    def name_of(request: Request) -> str:
        return request.path_params["name"]

    routes = [
        Route("/", view(lambda ctx, r: pages.overview(ctx)), methods=["GET"]),
        Route("/runs", view(lambda ctx, r: pages.runs(ctx, r.query_params.get("filter", ""),
                                                      r.query_params.getlist("experiment"),
                                                      [o for o in r.query_params.getlist("order_by") if o])),
              methods=["GET"]),
        Route("/runs/compare", view(lambda ctx, r: pages.runs_compare(ctx, r.query_params.getlist("run"))),
              methods=["GET"]),
        Route("/models/{name}", view(lambda ctx, r: pages.model(ctx, name_of(r))), methods=["GET"]),
        Route("/models/{name}/versions/{version}",
              view(lambda ctx, r: pages.version(ctx, name_of(r), check_version(r.path_params["version"]))),
              methods=["GET"]),
        Route("/rollouts", view(lambda ctx, r: pages.rollouts(ctx)), methods=["GET"]),
        Route("/rollouts/{name}", view(lambda ctx, r: pages.rollout(ctx, name_of(r), _optional_id(r))),
              methods=["GET"]),
        Route("/experiments", view(lambda ctx, r: pages.experiments(ctx)), methods=["GET"]),
        Route("/experiments/{name}", view(lambda ctx, r: pages.experiment(ctx, name_of(r),
                                                                          r.query_params.get("view") or "cumulative",
                                                                          r.query_params.get("window") or None,
                                                                          r.query_params.get("test") or None),
                                          ttl_s=MONITORING_TTL_S), methods=["GET"]),
        Route("/monitoring", view(lambda ctx, r: pages.monitoring(ctx, r.query_params.get("model") or None,
                                                                  _window(r.query_params.get("window", "1h")),
                                                                  r.query_params.get("clock") or None),
                                  ttl_s=MONITORING_TTL_S),
              methods=["GET"]),
        Route("/ingestion", view(lambda ctx, r: pages.ingestion(ctx)), methods=["GET"]),
        Route("/ingestion/dead-letters/{id}", view(lambda ctx, r: pages.dead_letter(ctx, _id(r.path_params["id"]))),
              methods=["GET"]),
    ]

    # ---- actions ---------------------------------------------------------------------------------

    async def act(request: Request, role: str = "admin") -> tuple[Viewer, dict[str, str]] | Response:
        """The caller and form of a state-changing request, or the 400/401/403 page refusing it."""
        try:
            viewer = identify(request, auth, role)
        except Denied as exc:
            return error_page(request, exc.status, exc.message)
        if not same_origin(request):
            return error_page(request, 403, "refused: the request came from another site (Origin)", viewer)
        fields = await _form(request)
        if fields is None:
            return error_page(request, 400, _FORM_ERROR, viewer)
        if fields.get("csrf") != viewer.csrf:
            return error_page(request, 403, "refused: the form's CSRF token is missing or stale; reload the page "
                                            "and try again", viewer)
        return viewer, fields

    def transition(fn: Callable[..., dict[str, Any]], default: str) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            checked = await act(request)
            if isinstance(checked, Response):
                return checked
            viewer, form = checked
            name = name_of(request)
            reason = (form.get("reason") or "").strip() or default
            if len(reason) > 1000:
                return error_page(request, 400, "reason: must be at most 1000 characters", viewer)

            def run() -> dict[str, Any]:
                return fn(get_project(), name, actor=viewer.actor, reason=reason)

            try:
                step = await asyncio.to_thread(run)
            except ModelmillError as exc:
                return error_page(request, _status(exc), exc.message, viewer)
            if after_change is not None:
                try:
                    await after_change()
                except Exception:  # the change is stored; the next periodic reload applies it
                    pass
            base = base_of(request)
            done = f"{step.get('action', 'done')}: {step.get('reason', '')}"
            return RedirectResponse(f"{base}/rollouts/{quote(name, safe='')}?done={quote(done)}", 303)
        return endpoint

    routes += [
        Route("/rollouts/{name}/promote", transition(control.promote_rollout, "promoted by hand (console)"),
              methods=["POST"]),
        Route("/rollouts/{name}/rollback", transition(control.rollback_rollout, "rolled back by hand (console)"),
              methods=["POST"]),
    ]

    # ---- sign-in, static -------------------------------------------------------------------------

    async def signin_page(request: Request) -> Response:
        base = base_of(request)
        nxt = _next(request.query_params.get("next", "/"))
        body = (f'<form method="post" action="{esc(base)}/signin" class="signin">'
                f'<input type="hidden" name="next" value="{esc(nxt)}">'
                f'<label for="token">API token</label> <input id="token" name="token" type="password" size="48" '
                f'autocomplete="off" required autofocus> <button type="submit">Sign in</button></form>'
                "<p class='muted'>A read token shows every page; an admin token also promotes and rolls back. "
                "Create one with <code>modelmill token create --role read</code>. The token is kept in an "
                "HttpOnly, SameSite=Strict cookie of this console only.</p>")
        return html(page(base, "Sign in", body))

    async def signin(request: Request) -> Response:
        base = base_of(request)
        if not same_origin(request):
            return error_page(request, 403, "refused: the request came from another site (Origin)")
        form = await _form(request)
        if form is None:
            return error_page(request, 400, _FORM_ERROR)
        presented = str(form.get("token") or "").strip()
        token = auth.authenticate(f"Bearer {presented}") if presented else None
        if token is None:
            return error_page(request, 401, "token: unknown, revoked or malformed; check it with modelmill token list")
        response = RedirectResponse(f"{base}{_next(str(form.get('next') or '/'))}", 303)
        response.set_cookie(COOKIE, presented, max_age=12 * 3600, path=f"{base}/", httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")
        return response

    async def signout(request: Request) -> Response:
        checked = await act(request, "read")
        if isinstance(checked, Response):
            return checked
        base = base_of(request)
        response = RedirectResponse(f"{base}/signin", 303)
        response.delete_cookie(COOKIE, path=f"{base}/", httponly=True, samesite="strict")
        return response

    async def static(request: Request) -> Response:
        name = request.path_params["file"]
        if name not in assets:
            return Response("not found", 404, media_type="text/plain")
        return Response(assets[name], 200, media_type=STATIC[name],
                        headers={"Cache-Control": "max-age=300", "X-Content-Type-Options": "nosniff"})

    routes += [
        Route("/signin", signin_page, methods=["GET"]),
        Route("/signin", signin, methods=["POST"]),
        Route("/signout", signout, methods=["POST"]),
        Route("/static/{file}", static, methods=["GET"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        task = None
        if refresh_s:
            async def refresh() -> None:
                while True:
                    try:
                        await asyncio.to_thread(auth.refresh)
                    except Exception as exc:  # the last tokens read keep working
                        log.warning("console: could not re-read the API tokens: %s", exc)
                    await asyncio.sleep(refresh_s)

            task = asyncio.create_task(refresh())
        try:
            yield
        finally:
            if task is not None:
                task.cancel()

    async def not_found(request: Request, exc: Exception) -> Response:
        return error_page(request, 404, f"{request.url.path}: no such page of the console")

    async def not_allowed(request: Request, exc: Exception) -> Response:
        return error_page(request, 405, f"{request.method} {request.url.path}: not allowed here")

    return Starlette(routes=routes, lifespan=lifespan, exception_handlers={404: not_found, 405: not_allowed})


_FORM_ERROR = "the request body must be a form (application/x-www-form-urlencoded) of at most 16 KiB"
_MAX_FORM = 16 * 1024


async def _form(request: Request) -> dict[str, str] | None:
    """The fields of a small urlencoded form (the console's forms are a few short fields), or None."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in ("application/x-www-form-urlencoded", ""):
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_FORM:
            return None
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False, max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        return None
    return dict(pairs)


def _next(target: str) -> str:
    """A console path to go back to after signing in: never another site (``//evil``, ``https://...``)."""
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return "/"
    return target


def _id(raw: str) -> int:
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise InputError("id", "must be an id: ASCII digits", raw)
    return int(raw)


def _optional_id(request: Request) -> int | None:
    raw = request.query_params.get("id")
    return None if raw is None else _id(raw)


def _window(raw: str) -> str:
    from modelmill.monitoring.performance import parse_duration

    seconds = parse_duration(raw)
    if not 60 <= seconds <= 31 * 86400:
        raise InputError("window", "must be from 1m to 31d, e.g. 1h", raw)
    return raw



