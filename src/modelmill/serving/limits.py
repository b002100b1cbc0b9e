"""Bounded inputs: body size, rows per request and time per request, each refused with a clear 4xx.

    >>> Limits(max_body_bytes=1024).max_body_bytes
    1024
"""

from __future__ import annotations

import dataclasses
from typing import Any

from modelmill.errors import ConfigError, InputError

__all__ = ["BodyTooLarge", "Limits", "TooManyRows", "read_body"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Limits:
    """``max_body_bytes`` -> 413, ``max_batch_rows`` -> 413, ``request_timeout_s`` -> 408."""

    max_body_bytes: int = 4 * 1024 * 1024
    max_batch_rows: int = 4096
    request_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        for key in ("max_body_bytes", "max_batch_rows"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"serving.{key}", value, "a whole number of at least 1")
        t = self.request_timeout_s
        if isinstance(t, bool) or not isinstance(t, int | float) or not t > 0:
            raise ConfigError("serving.request_timeout_s", t, "a number of seconds above 0")

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
