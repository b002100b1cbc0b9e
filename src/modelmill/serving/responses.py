"""JSON responses and the one mapping from errors to HTTP statuses, shared by every route.

    >>> from modelmill.errors import NotFoundError
    >>> r = error_response(NotFoundError("model", "nope"))
    >>> r.status_code, r.body
    (404, b'{"error":"model \\'nope\\' not found"}')
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol

import orjson
from starlette.responses import Response
from starlette.types import Receive

from modelmill.errors import (
    ArtifactIntegrityError,
    BackendUnavailable,
    ConfigError,
    ConflictError,
    InputError,
    ModelmillError,
    NotFoundError,
    RolloutError,
)
from modelmill.serving.limits import BodyTooLarge, TooManyRows

__all__ = ["JSON", "Incoming", "ModelFailed", "error_response", "json_response", "status_of"]

log = logging.getLogger(__name__)

JSON = "application/json"


class Incoming(Protocol):
    """What a prediction endpoint reads of a request: a Starlette ``Request`` or the direct dispatch's own."""

    @property
    def path_params(self) -> Mapping[str, Any]: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def receive(self) -> Receive: ...


class ModelFailed(ModelmillError):
    """The model raised on this input (HTTP 422): the input is well-formed but the model rejects it."""


def json_response(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), status, headers, JSON)


def status_of(exc: BaseException) -> int:
    if isinstance(exc, BodyTooLarge | TooManyRows):
        return 413
    if isinstance(exc, InputError):
        return 400
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, ModelFailed):
        return 422
    if isinstance(exc, TimeoutError):
        return 408
    if isinstance(exc, BackendUnavailable | ConfigError):
        return 503  # the server's backends or its project's configuration, not the request, are at fault
    if isinstance(exc, ArtifactIntegrityError | ConflictError | RolloutError):
        return 409  # the request is sound, the state it names is not (a corrupt artifact, a finished rollout)
    return 500


def error_response(exc: BaseException, *, timeout_s: float | None = None) -> Response:
    """``{"error": "..."}`` with the status :func:`status_of` gives; unknown errors are logged."""
    status = status_of(exc)
    if isinstance(exc, ModelmillError):
        message = exc.message
    elif isinstance(exc, TimeoutError):
        message = f"the request took longer than {timeout_s} s and was abandoned; retry, or send fewer rows"
    else:
        log.error("unexpected error while answering a request", exc_info=exc)
        message = f"internal error: {type(exc).__name__}"
    return json_response({"error": message}, status)
