"""uvicorn's httptools protocol, hardened against slow and simple clients.

Three things the stock protocol does not do, each bounded by :class:`~modelmill.serving.limits.Limits`:

- **A header-read timeout.** uvicorn closes idle kept-alive connections, but a client that
  opens a connection and drips its request head a byte at a time holds it for ever (300 such
  connections stayed open for 25 s). Here a request's head must arrive within
  ``header_timeout_s`` of the connection opening or of the request's first byte; otherwise
  the answer is a JSON 408 and the connection is closed.
- **Draining an unread body.** When the server answers before reading the whole body (a 413
  for a body over ``max_body_bytes``) on a connection the client asked to close (Python's
  urllib always does), uvicorn closes the socket at once. Unread bytes in a closed socket make
  the kernel send a reset, which throws away the answer too: the client, still writing, sees
  a broken pipe instead of the 413. Here up to ``drain_bytes`` more of the body are read and
  discarded (for at most ``request_timeout_s``) before the connection is closed.
- **JSON for malformed framing.** A request the HTTP parser refuses (a bad chunk size,
  conflicting Content-Length) gets ``{"error": ...}`` like every other 400, not plain text.

``modelmill serve`` runs uvicorn with ``http="modelmill.serving.protocol:HttpProtocol"``. The
limits are the served app's own (``[serving]`` in modelmill.toml); an app that is not a
modelmill app gets the defaults.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from modelmill.serving.limits import Limits

__all__ = ["UVICORN", "HttpProtocol", "limits_of"]

# How ``modelmill serve`` runs uvicorn (tests that start one in a thread use the same). uvloop and
# this protocol over httptools: the default asyncio/h11 stack with several workers leaves
# TCP_NODELAY unset and adds ~40 ms to every kept-alive request.
UVICORN: dict[str, Any] = {"loop": "uvloop", "http": "modelmill.serving.protocol:HttpProtocol",
                           "access_log": False, "lifespan": "on"}


def limits_of(app: Any) -> Limits:
    """The :class:`Limits` of a served app, looked for through the middlewares uvicorn wraps it in."""
    for _ in range(8):
        server = getattr(getattr(app, "state", None), "server", None)
        limits = getattr(getattr(server, "config", None), "limits", None)
        if isinstance(limits, Limits):
            return limits
        app = getattr(app, "app", None)
        if app is None:
            break
    return Limits()


def _answer(status: int, message: str) -> bytes:
    """A whole HTTP/1.1 response with a JSON error body that closes the connection."""
    body = orjson.dumps({"error": message})
    return b"".join([STATUS_LINE[status], b"content-type: application/json\r\n",
                     b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body), body])


class _DrainingClose:
    """The transport a request's response cycle writes to; its ``close`` waits for the rest of the body."""

    __slots__ = ("_protocol", "_transport")

    def __init__(self, protocol: HttpProtocol, transport: asyncio.Transport) -> None:
        self._protocol = protocol
        self._transport = transport

    def write(self, data: bytes) -> None:
        self._transport.write(data)

    def is_closing(self) -> bool:
        return self._transport.is_closing() or self._protocol.draining

    def close(self) -> None:
        self._protocol.close_after_body()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class HttpProtocol(HttpToolsProtocol):
    """:class:`HttpToolsProtocol` with a header-read timeout, a bounded drain and JSON parser errors."""

    def __init__(self, config: Any, server_state: Any, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits_of(self.app)
        self.draining = False
        self._drained = 0
        self._header_timer: asyncio.TimerHandle | None = None
        self._drain_timer: asyncio.TimerHandle | None = None

    # ---- the header-read timeout -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()  # a connection that never sends a byte is bounded too

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.draining:  # a pipelined request behind a refused body is not started
            self.transport.close()
            return
        if self._header_timer is None:  # the clock runs from the connection's start, not the first byte
            self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        super().on_headers_complete()
        if self.cycle is not None and self.cycle.scope is self.scope:
            self.cycle.transport = _DrainingClose(self, self.transport)  # type: ignore[assignment]

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.limits.header_timeout_s, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined request head is late behind a response still being written: finish that
            # one, read no more, and close.
            self.cycle.keep_alive = False
            self.flow.pause_reading()
            return
        self.transport.write(_answer(408, f"the request head (request line and headers) did not arrive within "
                                          f"{self.limits.header_timeout_s} s (serving.header_timeout_s); send it "
                                          "at once"))
        self.transport.close()

    # ---- draining an unread body ------------------------------------------------------------------

    def close_after_body(self) -> None:
        """Close now, or once the rest of the request body has been read and dropped (bounded)."""
        cycle = self.cycle
        if self.draining or self.transport.is_closing():
            return
        if cycle is None or not cycle.more_body or cycle.disconnected or self.limits.drain_bytes == 0:
            self.transport.close()
            return
        self.draining = True
        self._drained = len(cycle.body)
        cycle.body.clear()
        self._drain_timer = self.loop.call_later(self.limits.request_timeout_s, self.transport.close)
        self.flow.resume_reading()

    def on_response_complete(self) -> None:
        # Answered before the body ended on a kept-alive connection: uvicorn would read and drop the
        # rest for as long as the client sends it (a Content-Length of 1 TB). Drain it bounded, then close.
        if self.cycle is not None and self.cycle.more_body and not self.cycle.disconnected:
            self.close_after_body()
        super().on_response_complete()

    def data_received(self, data: bytes) -> None:
        if self.draining:
            self._drained += len(data)
            if self._drained > self.limits.drain_bytes:
                self.transport.close()
                return
        super().data_received(data)

    def on_body(self, body: bytes) -> None:
        if not self.draining:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self.draining:
            self.transport.close()
            return
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None
        super().connection_lost(exc)

    # ---- malformed requests -----------------------------------------------------------------------

    def send_400_response(self, msg: str) -> None:
        self._cancel_header_timer()
        self.transport.write(_answer(400, f"malformed HTTP request ({msg.rstrip('.')}): check the request line, "
                                          "Content-Length and chunked framing"))
        self.transport.close()
