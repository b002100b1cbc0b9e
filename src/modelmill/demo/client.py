"""A lean HTTP/1.1 keep-alive client for the demo's request stream.

The demo asks for hundreds of thousands of predictions on the same two cores
the server uses; a general-purpose client spends more CPU per request than
the server does. This one writes a prepared request and reads one
``Content-Length`` response per connection turn, nothing else.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

__all__ = ["KeepAliveClient", "Response"]


class _Closed(Exception):
    """The server closed the connection before answering."""


class Response:
    __slots__ = ("body", "seconds", "status")

    def __init__(self, status: int, body: bytes, seconds: float) -> None:
        self.status = status
        self.body = body
        self.seconds = seconds


class KeepAliveClient:
    """``connections`` persistent connections to ``url``; :meth:`post_many` spreads requests over them."""

    def __init__(self, url: str, *, connections: int = 16, timeout: float = 30.0) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.connections = connections
        self.timeout = timeout
        self._pool: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def __aenter__(self) -> KeepAliveClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for _, writer in self._pool:
            writer.close()
        self._pool.clear()

    async def post(self, path: str, body: bytes) -> Response:
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        started = time.perf_counter()
        # A kept-alive connection may have been closed by the server while idle (uvicorn closes after
        # 5 s): such a request is sent again once on a new connection.
        if self._pool:
            try:
                return await self._exchange(self._pool.pop(), head + body, started)
            except (ConnectionError, asyncio.IncompleteReadError, _Closed):
                started = time.perf_counter()
        return await self._exchange(await asyncio.open_connection(self.host, self.port), head + body, started)

    async def _exchange(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], request: bytes,
                        started: float) -> Response:
        reader, writer = conn
        try:
            writer.write(request)
            status_line = await asyncio.wait_for(reader.readline(), self.timeout)
            if not status_line:
                raise _Closed
            status = int(status_line.split(b" ", 2)[1])
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            data = await reader.readexactly(length)
        except BaseException:
            writer.close()
            raise
        self._pool.append(conn)
        return Response(status, data, time.perf_counter() - started)

    async def post_many(self, path: str, bodies: Sequence[bytes]) -> list[Response]:
        """Send every body, at most ``connections`` at a time; responses in the bodies' order."""
        gate = asyncio.Semaphore(self.connections)

        async def one(body: bytes) -> Response:
            async with gate:
                return await self.post(path, body)

        return list(await asyncio.gather(*(one(b) for b in bodies)))
