"""Bounded inputs: body size, rows per request and time per request, each refused with a clear 4xx.

    >>> Limits(max_body_bytes=1024).max_body_bytes
    1024
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from types import TracebackType
from typing import Any

from modelmill.errors import ConfigError, InputError

__all__ = ["BodyTooLarge", "Deadlines", "Limits", "TooManyRows", "client_id", "read_body"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Limits:
    """``max_body_bytes`` -> 413, ``max_batch_rows`` -> 413, ``request_timeout_s`` -> 408, ``max_id_chars`` -> 400,
    ``max_labels`` -> 413.

    ``max_id_chars`` bounds a client's request ``id``, which is stored with every prediction.
    ``max_labels`` bounds the labels of one ``POST /v1/models/{name}/labels`` (each batch is checked
    against the prediction log and the stored labels in one query, so its cost grows with its size).
    The connection-level two are applied by :mod:`modelmill.serving.protocol`:
    ``header_timeout_s`` -> 408 for a request head that has not fully arrived in time, and
    ``drain_bytes``, how much of a body the server reads and drops after answering early (a
    413) so that a client writing its whole body before reading still gets the answer (0: none).
    """

    max_body_bytes: int = 4 * 1024 * 1024
    max_batch_rows: int = 4096
    request_timeout_s: float = 10.0
    max_id_chars: int = 256
    max_labels: int = 10_000
    header_timeout_s: float = 10.0
    drain_bytes: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        for key in ("max_body_bytes", "max_batch_rows", "max_id_chars", "max_labels", "drain_bytes"):
            value = getattr(self, key)
            least = 0 if key == "drain_bytes" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"serving.{key}", value, f"a whole number of at least {least}")
        for key in ("request_timeout_s", "header_timeout_s"):
            t = getattr(self, key)
            if isinstance(t, bool) or not isinstance(t, int | float) or not t > 0:
                raise ConfigError(f"serving.{key}", t, "a number of seconds above 0")

    @classmethod
    def from_section(cls, section: Any) -> Limits:
        keys = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in dict(section).items() if k in keys})


class BodyTooLarge(InputError):
    """The request body is larger than ``max_body_bytes`` (HTTP 413)."""

    def __init__(self, limit: int, size: int | None = None) -> None:
        got = f"{size} bytes" if size is not None else f"more than {limit} bytes"
        super().__init__("body", f"is too large ({got}); the limit is {limit} bytes; send fewer rows per request")


class TooManyRows(InputError):
    """A request carries more rows than ``max_batch_rows`` (HTTP 413)."""

    def __init__(self, field: str, limit: int, rows: int) -> None:
        super().__init__(field, f"has {rows} rows; the limit is {limit} per request; split the batch")


def client_id(value: Any, field: str, limit: int) -> str | None:
    """A client's request ``id`` (None when it sent none), which becomes the prediction's id; or an InputError.

    >>> client_id("order-7", "id", 256), client_id(None, "id", 256)
    ('order-7', None)
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise InputError(field, "must be a string", value)
    if len(value) > limit:  # it is logged with every prediction
        raise InputError(field, f"has {len(value)} characters; the limit is {limit} (serving.max_id_chars)")
    return value


async def read_body(receive: Any, headers: Any, limit: int) -> bytes:
    """Read an ASGI request body, refusing it as soon as it passes ``limit`` bytes."""
    declared = headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise InputError("content-length", "must be a whole number", declared) from None
        if size > limit:
            raise BodyTooLarge(limit, size)
    chunks: list[bytes] = []
    total = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        if chunk:
            total += len(chunk)
            if total > limit:
                raise BodyTooLarge(limit)
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class Deadlines:
    """``async with deadlines:`` bounds the time of the current task, like ``asyncio.timeout``, for less.

    ``asyncio.timeout`` schedules and cancels a timer per request; here entering and leaving
    record the task's start time in a dict, and one watchdog task per event loop cancels the
    tasks that ran past ``timeout_s``, checking every ``timeout_s / 4`` (at most 50 ms). A
    task cancelled that way leaves the block with ``TimeoutError``; any other cancellation
    passes through. One instance serves every request of a server.
    """

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.interval = min(0.05, timeout_s / 4)
        self._started: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()
        self._watchdog: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"Deadlines(timeout_s={self.timeout_s})"

    async def __aenter__(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._started[task] = time.monotonic()
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = asyncio.get_running_loop().create_task(self._watch())

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        task = asyncio.current_task()
        assert task is not None
        del self._started[task]
        if task in self._expired:
            self._expired.discard(task)
            if exc_type is not None and issubclass(exc_type, asyncio.CancelledError) and task.uncancel() == 0:
                raise TimeoutError(f"no answer within {self.timeout_s} s") from exc

    async def _watch(self) -> None:
        while self._started:
            await asyncio.sleep(self.interval)
            late = time.monotonic() - self.timeout_s
            for task, started in list(self._started.items()):
                if started <= late and task not in self._expired:
                    self._expired.add(task)
                    task.cancel()
