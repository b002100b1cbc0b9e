"""The ASGI application: Starlette routes over one :class:`ModelServer`.

``create_app(server)`` is the app for a server built in process (tests,
notebooks); ``app_from_env()`` is the factory ``modelmill serve`` gives
uvicorn: every worker opens the project of the working directory and builds
its own server from the registry, the route table and the feature store.

    >>> from starlette.testclient import TestClient
    >>> from modelmill.serving.models import FunctionModel, StaticSource
    >>> src = StaticSource([FunctionModel("m", 1, ["x"], lambda X: X[:, 0] * 2)], aliases={"m@production": 1})
    >>> app = create_app(ModelServer(src, config=ServerConfig(models=["m@production"])))
    >>> with TestClient(app) as client:
    ...     body = {"inputs": [{"name": "x", "shape": [2], "datatype": "FP64", "data": [1, 2]}]}
    ...     client.post("/v2/models/m/infer", json=body).json()["outputs"][0]["data"]
    [2.0, 4.0]
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.types import Receive, Scope, Send

from modelmill.security import Authenticator, TokenStore
from modelmill.serving import metrics
from modelmill.serving.admin import AdminRoutes
from modelmill.serving.control import ControlRoutes
from modelmill.serving.labels import LabelRoute
from modelmill.serving.oip import OipRoutes
from modelmill.serving.openapi import openapi_document, served_example
from modelmill.serving.predict import PredictRoute
from modelmill.serving.responses import JSON, json_response
from modelmill.serving.routing import RouteTable
from modelmill.serving.server import ModelServer, ServerConfig

__all__ = ["AUTH_ENV", "GRPC_ENV", "MODELS_ENV", "OPTIONS_ENV", "ServingApp", "app_from_env", "build_server", "create_app"]

log = logging.getLogger(__name__)

# Set by ``modelmill serve``: comma-separated model references, and a JSON object of
# ServerConfig settings that override ``[serving]``; read by every worker.
MODELS_ENV = "MODELMILL_SERVE_MODELS"
OPTIONS_ENV = "MODELMILL_SERVE_OPTIONS"
# Overrides ``[serving] auth`` ("control" or "required") for every worker.
AUTH_ENV = "MODELMILL_SERVING_AUTH"
# Set by ``modelmill serve --grpc-port``: a JSON object {"host", "port", "reuse_port"} where every
# worker also answers OIP over gRPC (see modelmill.serving.grpc).
GRPC_ENV = "MODELMILL_SERVE_GRPC"


def create_app(server: ModelServer, *, auth: Authenticator | None = None,
               grpc: dict[str, Any] | None = None) -> ServingApp:
    """The Starlette app; starting it (lifespan) starts ``server``, stopping it flushes the prediction log.

    ``auth`` checks API tokens (see :mod:`modelmill.security`); without one, the control plane
    refuses every call (there is no token to show) and predictions follow ``server.config.auth``.
    ``grpc`` (``host``, ``port``, ``reuse_port``) also serves OIP over gRPC on that port, started and
    stopped with the app, in its event loop (:func:`modelmill.serving.grpc.start_grpc`).
    """
    if auth is None:
        auth = Authenticator(mode=server.config.auth)
    server.reload_hooks.append(auth.refresh)
    oip = OipRoutes(server)
    predict = PredictRoute(server)
    admin = AdminRoutes(server)
    labels = LabelRoute(server)
    ctl = ControlRoutes(server)
    spec: list[bytes] = []
    data, guard = auth.guard_data, auth.guard

    async def openapi(request: Request) -> Response:
        if not spec:  # built on first use, once models are loaded: its examples name one
            doc = openapi_document(auth_required=auth.required, example=served_example(server))
            spec.append(orjson.dumps(doc))
        return Response(spec[0], 200, media_type=JSON)

    async def prometheus(request: Request) -> Response:
        metrics.REQUESTS.publish()
        body, content_type = metrics.render()
        return Response(body, 200, headers={"Content-Type": content_type})

    # Predictions and metadata need a token only with auth = "required" (otherwise they are not
    # wrapped at all: the hot path pays nothing); the control plane always does.
    routes = [  # the hot routes first: Starlette tries them in order
        Route("/v2/models/{name}/infer", data(oip.infer, "predict"), methods=["POST"]),
        Route("/v1/models/{name}/predict", data(predict.predict, "predict"), methods=["POST"]),
        Route("/v2/health/live", oip.live, methods=["GET"]),
        Route("/v2/health/ready", oip.ready, methods=["GET"]),
        Route("/v2", oip.server_metadata, methods=["GET"]),
        Route("/v2/models/stats", data(oip.model_stats, "read"), methods=["GET"]),  # before /v2/models/{name}
        Route("/v2/models/{name}", data(oip.model_metadata, "read"), methods=["GET"]),
        Route("/v2/models/{name}/versions/{version}", data(oip.model_metadata, "read"), methods=["GET"]),
        Route("/v2/models/{name}/ready", data(oip.model_ready, "read"), methods=["GET"]),
        Route("/v2/models/{name}/versions/{version}/ready", data(oip.model_ready, "read"), methods=["GET"]),
        Route("/v2/models/{name}/versions/{version}/infer", data(oip.infer, "predict"), methods=["POST"]),
        # Triton's extensions that tritonclient calls: configuration, statistics, the model repository.
        Route("/v2/models/{name}/config", data(oip.model_config, "read"), methods=["GET"]),
        Route("/v2/models/{name}/versions/{version}/config", data(oip.model_config, "read"), methods=["GET"]),
        Route("/v2/models/{name}/stats", data(oip.model_stats, "read"), methods=["GET"]),
        Route("/v2/models/{name}/versions/{version}/stats", data(oip.model_stats, "read"), methods=["GET"]),
        Route("/v2/repository/index", data(oip.repository_index, "read"), methods=["POST"]),
        Route("/v2/repository/models/{name}/load", guard(oip.load, "admin"), methods=["POST"]),
        Route("/v2/repository/models/{name}/unload", guard(oip.unload, "admin"), methods=["POST"]),
        Route("/v1/routes", guard(admin.list_routes, "read"), methods=["GET"]),
        Route("/v1/routes/{name}", guard(admin.get_route, "read"), methods=["GET"]),
        Route("/v1/routes/{name}", guard(admin.put_route, "admin"), methods=["PUT"]),
        Route("/v1/routes/{name}", guard(admin.delete_route, "admin"), methods=["DELETE"]),
        Route("/v1/models/{name}/aliases", guard(admin.get_aliases, "read"), methods=["GET"]),
        Route("/v1/models/{name}/aliases/{alias}", guard(admin.put_alias, "admin"), methods=["PUT"]),
        Route("/v1/models/{name}/aliases/{alias}", guard(admin.delete_alias, "admin"), methods=["DELETE"]),
        Route("/v1/models/{name}/labels", guard(labels.post, "label"), methods=["POST"]),
        Route("/v1/models", guard(ctl.list_models, "read"), methods=["GET"]),
        Route("/v1/models/{name}/versions/{version}", guard(ctl.get_version, "read"), methods=["GET"]),
        Route("/v1/rollouts", guard(ctl.list_rollouts, "read"), methods=["GET"]),
        Route("/v1/rollouts", guard(ctl.start_rollout, "admin"), methods=["POST"]),
        Route("/v1/rollouts/{name}", guard(ctl.get_rollout, "read"), methods=["GET"]),
        Route("/v1/rollouts/{name}/promote", guard(ctl.promote_rollout, "admin"), methods=["POST"]),
        Route("/v1/rollouts/{name}/rollback", guard(ctl.rollback_rollout, "admin"), methods=["POST"]),
        Route("/v1/experiments", guard(ctl.create_experiment, "admin"), methods=["POST"]),
        Route("/v1/experiments/{name}", guard(ctl.get_experiment, "read"), methods=["GET"]),
        Route("/v1/experiments/{name}/stop", guard(ctl.stop_experiment, "admin"), methods=["POST"]),
        Route("/v1/pipelines/{name}/runs", guard(ctl.trigger_run, "admin"), methods=["POST"]),
        Route("/v1/pipelines/{name}/runs/{id}", guard(ctl.get_run, "read"), methods=["GET"]),
        Route("/v1/monitoring", guard(ctl.monitoring, "read"), methods=["GET"]),
        Route("/v1/webhooks/deliveries", guard(ctl.webhook_deliveries, "read"), methods=["GET"]),
        Route("/metrics", data(prometheus, "read"), methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        # The web console (modelmill.console): the same tokens, the same control-plane functions.
        Mount("/ui", app=_console(server, auth)),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await server.start()
        grpc_server = None
        if grpc is not None:
            from modelmill.serving.grpc import start_grpc

            try:
                grpc_server = await start_grpc(server, auth, **grpc)
            except Exception as exc:
                log.error("OIP over gRPC could not start: %s", exc)
                await server.stop()
                raise
        # Everything loaded so far (libraries, models) lives as long as the process: move it out of
        # the collector's sight, so a full collection is not a ~50 ms pause in the middle of requests.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            if grpc_server is not None:
                await grpc_server.stop(2.0)
            await server.stop()

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return json_response({"error": f"{request.method} {request.url.path}: {exc.detail}"}, exc.status_code,
                             dict(exc.headers or {}))

    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error})
    app.state.server = server
    return ServingApp(app, infer=oip.infer, predict=predict.predict, direct=not auth.required)


def _console(server: ModelServer, auth: Authenticator) -> Any:
    """The console app over the server's project; an action reloads this worker's routes at once."""
    from modelmill.console.app import create_console

    async def reload() -> None:
        await server.reload()

    return create_console(lambda: server.project("show the web console"), auth, after_change=reload)


class _Incoming:
    """What a prediction endpoint reads of a request (a Starlette ``Request`` offers the same three)."""

    __slots__ = ("headers", "path_params", "receive")

    def __init__(self, scope: Scope, receive: Receive, path_params: dict[str, str]) -> None:
        self.path_params = path_params
        # ASGI header names are lower-case already; these endpoints read single-valued headers only.
        self.headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        self.receive = receive


class ServingApp:
    """The ASGI app: the two prediction routes are dispatched straight to their endpoints, the rest by Starlette.

    Starlette's router, its two exception middlewares, a ``Request`` and a
    ``Response.__call__`` cost about 8 us a request: a quarter of an OIP
    inference. The prediction endpoints catch their own errors and answer
    with a body already built, so for them that machinery does nothing; every
    other request, and every request when predictions need a token
    (``direct=False``), goes through Starlette unchanged.
    """

    def __init__(self, app: Starlette, *, infer: Any, predict: Any, direct: bool) -> None:
        self.app = app
        self.direct = direct
        self._infer = infer
        self._predict = predict

    def __repr__(self) -> str:
        return f"ServingApp(direct={self.direct})"

    @property
    def state(self) -> Any:
        return self.app.state

    @property
    def routes(self) -> list[Any]:
        return self.app.routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.direct and scope["type"] == "http" and scope["method"] == "POST":
            endpoint, params = self._match(scope["path"])
            if endpoint is not None:
                response = await endpoint(_Incoming(scope, receive, params))
                await send({"type": "http.response.start", "status": response.status_code,
                            "headers": response.raw_headers})
                await send({"type": "http.response.body", "body": response.body})
                return
        await self.app(scope, receive, send)

    def _match(self, path: str) -> tuple[Any, dict[str, str]]:
        """The endpoint and path parameters of a prediction route, as Starlette's routes would match them."""
        parts = path.split("/")  # "/v2/models/m/infer" -> ["", "v2", "models", "m", "infer"]
        n = len(parts)
        if n < 5 or parts[2] != "models" or not parts[3] or parts[0]:
            return None, {}
        if n == 5:
            if parts[4] == "infer" and parts[1] == "v2":
                return self._infer, {"name": parts[3]}
            if parts[4] == "predict" and parts[1] == "v1":
                return self._predict, {"name": parts[3]}
        elif n == 7 and parts[6] == "infer" and parts[4] == "versions" and parts[5] and parts[1] == "v2":
            return self._infer, {"name": parts[3], "version": parts[5]}
        return None, {}


def build_server(project: Any, config: ServerConfig) -> ModelServer:
    """A server over the project's registry, route table, offline store, cache and feature store."""
    from modelmill.registry import Registry

    return ModelServer(Registry(project), config=config, routes=RouteTable(project), offline=project.offline,
                       cache_store=project.cache, features=_feature_store(project))


def _feature_store(project: Any) -> Any:
    from modelmill.features import FeatureStore

    return FeatureStore(project)


def app_from_env() -> ServingApp:
    """The uvicorn factory of ``modelmill serve``: settings from modelmill.toml, ``MODELMILL_*`` and ``[serving]``."""
    from modelmill.project import open_project

    # Background threads (prediction log, route poll) hand the GIL back to the event loop after
    # 0.5 ms instead of 5 ms: the difference is the server's tail latency.
    sys.setswitchinterval(0.0005)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("modelmill").setLevel(os.environ.get("MODELMILL_LOG_LEVEL", "INFO"))
    project = open_project()
    section = dict(project.settings.section("serving"))
    if os.environ.get(AUTH_ENV):
        section["auth"] = os.environ[AUTH_ENV]
    section.update(orjson.loads(os.environ.get(OPTIONS_ENV) or "{}"))
    models = [m for m in os.environ.get(MODELS_ENV, "").split(",") if m]
    config = ServerConfig.from_section(section, models=models or None)
    grpc = orjson.loads(os.environ[GRPC_ENV]) if os.environ.get(GRPC_ENV) else None
    return create_app(build_server(project, config), auth=Authenticator(TokenStore(project), mode=config.auth),
                      grpc=grpc)
