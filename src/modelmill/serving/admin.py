"""The control plane over HTTP: traffic routes and registry aliases, guarded by API token roles.

Routes (``read`` to look, ``admin`` to change; see :mod:`modelmill.security`)::

    GET    /v1/routes                          every stored route
    GET    /v1/routes/{name}                   one model's route
    PUT    /v1/routes/{name}                   {"variants": [{"name", "version", "weight", "shadow"}], "salt", "reason"}
    DELETE /v1/routes/{name}                   back to the configured reference
    GET    /v1/models/{name}/aliases           {"name", "aliases": {alias: version}}
    PUT    /v1/models/{name}/aliases/{alias}   {"version": 3, "reason": "..."}
    DELETE /v1/models/{name}/aliases/{alias}

A route is checked before it is stored: every variant must resolve in the
registry, so a route the servers cannot serve is refused (404), not written.
Every change is audited with the token's name as the actor, and takes effect
in this worker at once, in the others at their next reload.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from modelmill.errors import BackendUnavailable, InputError, NotFoundError
from modelmill.registry import check_version
from modelmill.security import actor
from modelmill.serving.limits import read_body
from modelmill.serving.responses import error_response, json_response
from modelmill.serving.routing import Route, Variant
from modelmill.serving.server import ModelServer

__all__ = ["AdminRoutes", "parse_object", "parse_route_request"]

_VARIANT_KEYS = {"name", "version", "weight", "shadow"}


def _reason(req: dict[str, Any]) -> str:
    reason = req.get("reason", "")
    if not isinstance(reason, str) or len(reason) > 1000:
        raise InputError("reason", "must be a string of at most 1000 characters", reason)
    return reason


def parse_object(body: bytes) -> dict[str, Any]:
    """A request body that must be one JSON object; an :class:`InputError` naming ``body`` otherwise."""
    try:
        req = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InputError("body", f"is not valid JSON ({exc})") from None
    if not isinstance(req, dict):
        raise InputError("body", "must be a JSON object")
    return req


_object = parse_object  # the name serving.labels imports


def parse_route_request(model: str, body: bytes) -> tuple[Route, str]:
    """The route a ``PUT /v1/routes/{name}`` body describes, and the reason given.

    >>> route, reason = parse_route_request("m", b'{"variants": [{"name": "a", "version": 1}], "reason": "x"}')
    >>> [v.name for v in route.variants], route.salt, reason
    (['a'], 'm', 'x')
    """
    req = parse_object(body)
    variants = req.get("variants")
    if not isinstance(variants, list) or not variants:
        raise InputError("variants", "is required: a non-empty array of {name, version, weight, shadow}", variants)
    parsed = []
    for i, v in enumerate(variants):
        where = f"variants[{i}]"
        if not isinstance(v, dict):
            raise InputError(where, "must be an object {name, version, weight, shadow}", v)
        unknown = sorted(set(v) - _VARIANT_KEYS)
        if unknown:
            raise InputError(f"{where}.{unknown[0]}", f"is not a variant field; use {', '.join(sorted(_VARIANT_KEYS))}")
        shadow = v.get("shadow", False)
        if not isinstance(shadow, bool):
            raise InputError(f"{where}.shadow", "must be true or false", shadow)
        try:
            parsed.append(Variant(v.get("name"), v.get("version"), v.get("weight", 1.0), shadow))  # type: ignore[arg-type]
        except InputError as exc:
            raise InputError(f"{where}: {exc.field}", exc.problem, exc.value) from None
    salt = req.get("salt", "")
    if not isinstance(salt, str) or len(salt) > 200:
        raise InputError("salt", "must be a string of at most 200 characters", salt)
    return Route(model, sorted(parsed, key=lambda v: v.name), salt), _reason(req)


def _version_number(req: dict[str, Any]) -> int:
    version = req.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise InputError("version", "is required: a version number (a JSON integer)", version)
    return check_version(version)


class AdminRoutes:
    """The control-plane endpoints over one :class:`ModelServer` (its route table and registry)."""

    def __init__(self, server: ModelServer) -> None:
        self.server = server

    def _table(self) -> Any:
        if self.server.routes is None:
            raise BackendUnavailable("route table", "(not configured)",
                                     "this server was built without a project; routes are read-only config")
        return self.server.routes

    def _registry(self) -> Any:
        source = self.server.source
        if not hasattr(source, "aliases") or not hasattr(source, "delete_alias"):
            raise BackendUnavailable("registry", "(not configured)", "this server's models do not come from a "
                                     "registry, so it has no aliases to show or move")
        return source

    def _servable(self, ref: str) -> None:
        """Resolve and load ``ref`` as the servers would (its artifact's checksum included), or raise."""
        source = self.server.source
        source.load(source.resolve(ref))

    async def _answer(self, fn: Any, *args: Any) -> Response:
        try:
            return json_response(await asyncio.to_thread(fn, *args))
        except Exception as exc:
            return error_response(exc)

    # ---- routes --------------------------------------------------------------------------------

    async def list_routes(self, request: Request) -> Response:
        def run() -> dict[str, Any]:
            return {"routes": [r.as_dict() for _, r in sorted(self._table().all().items())]}

        return await self._answer(run)

    async def get_route(self, request: Request) -> Response:
        name = request.path_params["name"]

        def run() -> dict[str, Any]:
            return dict(self._table().get(name).as_dict())

        return await self._answer(run)

    async def put_route(self, request: Request) -> Response:
        name = request.path_params["name"]
        try:
            body = await read_body(request.receive, request.headers, self.server.config.limits.max_body_bytes)
            route, reason = parse_route_request(name, body)
        except Exception as exc:
            return error_response(exc)
        who = actor(request)

        def run() -> dict[str, Any]:
            table = self._table()
            for v in route.variants:  # refuse what no server could serve (unknown, corrupt), before writing it
                self._servable(f"{name}@{v.target}")
            return dict(table.set(name, route.variants, salt=route.salt, actor=who, reason=reason).as_dict())

        response = await self._answer(run)
        if response.status_code == 200:
            await self._reload()
        return response

    async def delete_route(self, request: Request) -> Response:
        name = request.path_params["name"]
        who = actor(request)

        def run() -> dict[str, Any]:
            if not self._table().delete(name, actor=who, reason="DELETE /v1/routes"):
                raise NotFoundError("route", name, "nothing to delete")
            return {"model": name, "deleted": True}

        response = await self._answer(run)
        if response.status_code == 200:
            await self._reload()
        return response

    # ---- aliases -------------------------------------------------------------------------------

    async def get_aliases(self, request: Request) -> Response:
        name = request.path_params["name"]

        def run() -> dict[str, Any]:
            registry = self._registry()
            registry.resolve(name)  # an unknown model is a 404, not an empty map
            return {"name": name, "aliases": dict(registry.aliases(name))}

        return await self._answer(run)

    async def put_alias(self, request: Request) -> Response:
        name, alias = request.path_params["name"], request.path_params["alias"]
        try:
            body = await read_body(request.receive, request.headers, self.server.config.limits.max_body_bytes)
            req = parse_object(body)
            version, reason = _version_number(req), _reason(req)
        except Exception as exc:
            return error_response(exc)
        who = actor(request)

        def run() -> dict[str, Any]:
            registry = self._registry()
            self._servable(f"{name}@{version}")  # an alias to a version no server can load is refused
            registry.set_alias(name, alias, version, actor=who, reason=reason)
            return {"name": name, "alias": alias, "version": version}

        response = await self._answer(run)
        if response.status_code == 200:
            await self._reload()
        return response

    async def delete_alias(self, request: Request) -> Response:
        name, alias = request.path_params["name"], request.path_params["alias"]
        who = actor(request)

        def run() -> dict[str, Any]:
            self._registry().delete_alias(name, alias, actor=who, reason="DELETE /v1/models/{name}/aliases")
            return {"name": name, "alias": alias, "deleted": True}

        response = await self._answer(run)
        if response.status_code == 200:
            await self._reload()
        return response

    async def _reload(self) -> None:
        try:
            await self.server.reload()
        except Exception:  # the periodic reload tries again; the change itself is stored
            pass
