"""Ground truth over HTTP: ``POST /v1/models/{name}/labels`` (role ``label`` or ``admin``).

Request::

    {"labels": [{"id": "req-1", "label": 1, "ts": "2026-12-01T10:00:00Z"}]}   # ts optional

Response::

    {"accepted": 1, "duplicates": 0, "unknown": 0}

``id`` is the prediction's id: the ``request_id`` a prediction answered with,
which is the client's own ``id`` when it sent one (OIP infer and the feature
route). The labels are checked against the task of the model's newest version
(:func:`modelmill.store.feedback.label_task`: binary 0/1, multiclass classes,
regression numbers) and stored by :func:`modelmill.store.feedback.write_labels`,
the one label writer, so HTTP, ``modelmill labels ingest`` and ``modelmill labels
consume`` validate and count accepted, duplicate and unknown labels by the same
rule. A batch holds at most ``serving.max_labels`` labels (413 past it); a bad
label is a 400 naming it (``labels[3].label``) and stores nothing; a model nobody
registered is a 404, one whose recorded task modelmill does not know a 409.
Every answered POST is audited with the token's name.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from modelmill.errors import BackendUnavailable, InputError
from modelmill.security import actor
from modelmill.serving.admin import _object as json_object
from modelmill.serving.limits import TooManyRows, read_body
from modelmill.serving.responses import error_response, json_response
from modelmill.serving.server import ModelServer
from modelmill.store.feedback import LabelTask, model_task, write_labels

__all__ = ["LabelRoute", "parse_labels"]


def parse_labels(body: bytes, limit: int) -> list[Any]:
    """The ``labels`` array of a request body, bounded by ``limit``; rows are validated by the writer.

    >>> parse_labels(b'{"labels": [{"id": "r1", "label": 1}]}', 10)
    [{'id': 'r1', 'label': 1}]
    >>> parse_labels(b'{"labels": []}', 10)
    Traceback (most recent call last):
    ...
    modelmill.errors.InputError: labels: must be a non-empty array of {"id", "label", "ts"} (got [])
    """
    req = json_object(body)
    unknown = sorted(set(req) - {"labels"})
    if unknown:
        raise InputError(unknown[0], 'is not a field of a labels request; send {"labels": [...]}')
    rows = req.get("labels")
    if not isinstance(rows, list) or not rows:
        raise InputError("labels", 'must be a non-empty array of {"id", "label", "ts"}', rows)
    if len(rows) > limit:
        raise TooManyRows("labels", limit, len(rows))
    return rows


class LabelRoute:
    """``POST /v1/models/{name}/labels`` over one :class:`ModelServer` (its offline store and project)."""

    def __init__(self, server: ModelServer) -> None:
        self.server = server

    def _project(self) -> Any:
        return self.server.project("audit a label write")  # its database keeps the audit trail

    def _task(self, name: str) -> LabelTask:
        """The task of the model's newest version: one the registry knows, served or not (labels may come
        after it stopped serving); NotFoundError (404) for a model nobody registered."""
        return model_task(self.server.source, name)

    async def post(self, request: Request) -> Response:
        name = request.path_params["name"]
        limits = self.server.config.limits
        try:
            body = await read_body(request.receive, request.headers, limits.max_body_bytes)
            rows = parse_labels(body, limits.max_labels)
        except Exception as exc:
            return error_response(exc)
        who = actor(request)

        def run() -> dict[str, int]:
            offline = self.server.offline
            if offline is None:
                raise BackendUnavailable("offline store", "(not configured)",
                                         "this server has no offline store to keep labels in")
            task = self._task(name)
            db = self._project().db
            counts = write_labels(offline, name, rows, task=task)
            # After the write: a retry of a POST whose audit line failed stores nothing twice (duplicates).
            with db.begin() as conn:
                db.audit(conn, actor=who, action="labels.post", subject=name,
                         detail={"labels": len(rows), **counts.as_dict()})
            return counts.as_dict()

        try:
            return json_response(await asyncio.to_thread(run))  # blocking I/O: the offline store and the database
        except Exception as exc:
            return error_response(exc)
