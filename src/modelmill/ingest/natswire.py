"""A minimal, blocking NATS client for the two hot paths of ingestion: pull-fetching and publishing.

nats-py parses the wire protocol message by message through asyncio queues, which
caps a pull consumer near 30k messages/s on one core. Ingestion needs an order of
magnitude more, and only a sliver of the protocol (NATS client protocol,
https://docs.nats.io/reference/reference-protocols/nats-protocol): ``CONNECT``,
``PUB``, ``SUB``, ``PING``/``PONG`` and the ``MSG``/``HMSG`` frames, plus the
JetStream JSON API (``$JS.API.*``) over request/reply. Frames are parsed in
bulk from one receive buffer, and a batch of acks is one ``sendall``.
"""

from __future__ import annotations

import json
import secrets
import socket
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from modelmill.config import mask_url
from modelmill.errors import BackendUnavailable, StoreError

__all__ = ["JetStreamError", "NatsWire"]

_CRLF = b"\r\n"


class JetStreamError(StoreError):
    """The JetStream API answered with an error (``code``, ``err_code``, ``description``)."""

    def __init__(self, subject: str, error: dict[str, Any]) -> None:
        super().__init__(f"JetStream {subject.split('.')[2:4]} failed: {error.get('description', error)}",
                         code=error.get("code"), err_code=error.get("err_code"))
        self.code = int(error.get("code") or 0)
        self.err_code = int(error.get("err_code") or 0)


class NatsWire:
    """One blocking connection. Not thread-safe: give each thread its own.

    ``timeout`` bounds the connect and each JetStream API request. It is 15 s: a file-backed stream's create
    on a loaded host took over 5 s (the demo then stopped with "timed out waiting for the server"), and a server
    that is down refuses the connection at once anyway.
    """

    def __init__(self, url: str, *, timeout: float = 15.0) -> None:
        self.url = url
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buf = bytearray()
        self._inbox = "_INBOX." + secrets.token_hex(8)
        self._seq = 0
        self.info: dict[str, Any] = {}
        # messages for JetStream deliveries that arrived while waiting for something else
        self._early: list[tuple[bytes, bytes]] = []
        self._replies: dict[str, bytes | None] = {}
        self._collect: dict[str, list[bytes]] = {}
        self._pull_key: str | None = None
        self._pull_start = self._pull_size = self._delivered = 0  # JetStream deliveries counted
        self._pull_expires = 0.0
        self._ended: set[str] = set()

    # ---- connection ----------------------------------------------------------------------

    def connect(self) -> NatsWire:
        if self._sock is not None:
            return self
        parts = urlsplit(self.url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 4222
        try:
            sock = socket.create_connection((host, port), timeout=self.timeout)
        except OSError as exc:
            raise BackendUnavailable("nats", mask_url(self.url), str(exc)) from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self._sock = sock
        line = self._read_line(time.monotonic() + self.timeout)
        if not line.startswith(b"INFO "):
            self.close()
            raise BackendUnavailable("nats", mask_url(self.url), f"unexpected greeting {line[:40]!r}")
        self.info = json.loads(line[5:])
        opts: dict[str, Any] = {"verbose": False, "pedantic": False, "headers": True, "no_responders": True,
                                "lang": "python-modelmill", "version": "0.1", "protocol": 1}
        if parts.username:
            opts.update(user=parts.username, **({"pass": parts.password} if parts.password else {}))
        self._send(b"CONNECT " + json.dumps(opts).encode() + _CRLF + f"SUB {self._inbox}.> 1".encode() + _CRLF)
        self.ping()
        return self

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None
                self._buf.clear()

    @property
    def max_payload(self) -> int:
        return int(self.info.get("max_payload", 1 << 20))

    def _send(self, data: bytes) -> None:
        if self._sock is None:
            raise StoreError("the NATS connection is closed", url=mask_url(self.url))
        try:
            self._sock.sendall(data)
        except OSError as exc:
            self.close()
            raise BackendUnavailable("nats", mask_url(self.url), str(exc)) from exc

    def ping(self, timeout: float | None = None) -> None:
        """Round trip: everything sent before has been processed by the server when this returns."""
        self._send(b"PING\r\n")
        self._pump(lambda: self._pong, timeout if timeout is not None else self.timeout, pong=True)

    # ---- receive loop --------------------------------------------------------------------------

    _pong = False

    def _fill(self, deadline: float) -> bool:
        """Read more bytes into the buffer; False when ``deadline`` passed first."""
        assert self._sock is not None
        wait = deadline - time.monotonic()
        if wait <= 0:
            return False
        self._sock.settimeout(wait)
        try:
            chunk = self._sock.recv(1 << 20)
        except TimeoutError:
            return False
        except OSError as exc:
            self.close()
            raise BackendUnavailable("nats", mask_url(self.url), str(exc)) from exc
        if not chunk:
            self.close()
            raise BackendUnavailable("nats", mask_url(self.url), "the server closed the connection")
        self._buf += chunk
        return True

    def _read_line(self, deadline: float) -> bytes:
        while True:
            end = self._buf.find(_CRLF)
            if end >= 0:
                line = bytes(self._buf[:end])
                del self._buf[:end + 2]
                return line
            if not self._fill(deadline):
                raise BackendUnavailable("nats", mask_url(self.url), "timed out waiting for the server")

    def _pump(self, done: Any, timeout: float, *, pong: bool = False) -> bool:
        """Parse frames until ``done()`` is true or ``timeout`` passes; returns ``done()``."""
        deadline = time.monotonic() + timeout
        if pong:
            self._pong = False
        while True:
            self._parse()
            if done():
                return True
            if not self._fill(deadline):
                self._parse()
                return bool(done())

    def _parse(self) -> None:
        """Consume every complete frame in the buffer."""
        data = bytes(self._buf)
        pos = 0
        n = len(data)
        early = self._early
        before = len(early)
        prefix = self._inbox.encode()
        find = data.find
        saw_pong = False
        while pos < n:
            end = find(_CRLF, pos)
            if end < 0:
                break
            op = data[pos:pos + 4]
            if op == b"MSG ":
                head = data[pos + 4:end].split(b" ")
                start = end + 2
                stop = start + int(head[-1])
                if stop + 2 > n:
                    break
                pos = stop + 2
                if len(head) == 4 and head[2].startswith(b"$JS.ACK."):
                    early.append((data[start:stop], head[2]))  # a JetStream delivery
                else:
                    self._route(head[0], head[2] if len(head) == 4 else b"", data[start:stop], None, prefix)
            elif op == b"HMSG":
                head = data[pos + 5:end].split(b" ")
                hdr_len, total = int(head[-2]), int(head[-1])
                start = end + 2
                if start + total + 2 > n:
                    break
                pos = start + total + 2
                reply = head[2] if len(head) == 5 else b""
                if reply.startswith(b"$JS.ACK."):
                    early.append((data[start + hdr_len:start + total], reply))
                else:
                    self._route(head[0], reply, data[start + hdr_len:start + total],
                                data[start:start + hdr_len], prefix)
            elif op == b"PING":
                self._send(b"PONG\r\n")
                pos = end + 2
            elif op == b"PONG":
                saw_pong = True
                pos = end + 2
            elif op == b"-ERR":
                message = data[pos + 5:end].decode(errors="replace")
                del self._buf[:end + 2]
                if "permissions" not in message.lower():
                    self.close()
                    raise BackendUnavailable("nats", mask_url(self.url), message)
                return
            else:  # +OK, INFO updates
                if op == b"INFO":
                    self.info.update(json.loads(data[pos + 5:end]))
                pos = end + 2
        self._delivered += len(early) - before
        if pos:
            del self._buf[:pos]
        if saw_pong:
            self._pong = True

    def _route(self, subject: bytes, reply: bytes, body: bytes, headers: bytes | None, prefix: bytes) -> None:
        if not subject.startswith(prefix):
            return
        key = subject[len(prefix) + 1:].decode()
        if key in self._collect:
            no_responders = headers is not None and headers[9:12] == b"503"
            self._collect[key].append(b'{"error": {"description": "no stream listens on this subject"}}'
                                      if no_responders else body)
            return
        if headers is not None and headers.startswith(b"NATS/1.0 ") and not body:
            status = headers[9:12]
            if key.startswith("f") and status in (b"404", b"408", b"409"):
                self._ended.add(key)  # the pull request is over: no messages, expired, or refused
                return
            if status == b"503":
                self._replies[key] = b'{"error": {"code": 503, "description": "no responders (JetStream off?)"}}'
                return
            if status == b"100":
                return
        self._replies[key] = body

    # ---- requests and publishing ----------------------------------------------------------------

    def _token(self, kind: str) -> str:
        self._seq += 1
        return f"{kind}{self._seq}"

    def request(self, subject: str, payload: bytes = b"", timeout: float | None = None) -> bytes:
        """Request/reply; returns the reply body."""
        key = self._token("r")
        self._send(f"PUB {subject} {self._inbox}.{key} {len(payload)}\r\n".encode() + payload + _CRLF)
        if not self._pump(lambda: key in self._replies, timeout if timeout is not None else self.timeout):
            raise BackendUnavailable("nats", mask_url(self.url), f"no reply to {subject}")
        body = self._replies.pop(key)
        return body or b""

    def api(self, subject: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        """A JetStream API call (``$JS.API.<subject>``); raises :class:`JetStreamError` on an error reply."""
        full = f"$JS.API.{subject}"
        reply = json.loads(self.request(full, json.dumps(payload).encode() if payload is not None else b""))
        if "error" in reply:
            raise JetStreamError(full, reply["error"])
        return dict(reply)

    def fetch(self, stream: str, consumer: str, batch: int, timeout: float) -> list[tuple[bytes, bytes]]:
        """Pull up to ``batch`` messages: (payload, ack subject) pairs, waiting at most ``timeout``.

        One pull request stays outstanding between calls, so the server streams the next batch
        while the caller writes this one. Messages it delivers after the caller stopped waiting are
        kept for the next call (or redelivered after ``ack_wait`` if the connection closes).
        """
        if not self._pull_open() and len(self._early) < batch:
            self._pull(stream, consumer, batch, timeout)
        if len(self._early) < batch:
            self._pump(lambda: len(self._early) >= batch or not self._pull_open(), timeout)
        out = self._early[:batch]
        del self._early[:batch]
        if not self._pull_open() and len(self._early) < batch:
            self._pull(stream, consumer, batch, timeout)  # prefetch the next batch
        return out

    def _pull_open(self) -> bool:
        """Whether the last pull request may still deliver (not all delivered, not expired)."""
        key = self._pull_key
        if key is None:
            return False
        # The server ends a request with a status message, but does not always send one (a request
        # it dropped, e.g. while redelivering to a closed connection): past its expiry it is over.
        if (key in self._ended or self._delivered - self._pull_start >= self._pull_size
                or time.monotonic() > self._pull_expires):
            self._ended.discard(key)
            self._pull_key = None
            return False
        return True

    def _pull(self, stream: str, consumer: str, batch: int, timeout: float) -> None:
        key = self._token("f")
        request = json.dumps({"batch": batch, "expires": int(max(timeout, 1.0) * 1e9)}).encode()
        self._send(f"PUB $JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer} {self._inbox}.{key} "
                   f"{len(request)}\r\n".encode() + request + _CRLF)
        self._pull_key, self._pull_start, self._pull_size = key, self._delivered, batch
        self._pull_expires = time.monotonic() + max(timeout, 1.0) + 0.25

    def ack(self, replies: Sequence[bytes], *, confirm: bool = True) -> None:
        """Acknowledge deliveries by their ack subjects; with ``confirm`` wait until the server has them."""
        chunk = 20_000
        for i in range(0, len(replies), chunk):
            self._send(b"".join(b"PUB " + r + b" 0\r\n\r\n" for r in replies[i:i + chunk]))
        if confirm:
            self.ping()

    def publish_acked(self, subject: str, payloads: Sequence[bytes], *, window: int = 5_000,
                      timeout: float = 10.0) -> int:
        """Publish to a JetStream subject and wait for every publish ack; returns how many were stored."""
        stored = 0
        for i in range(0, len(payloads), window):
            part = payloads[i:i + window]
            key = self._token("p")
            acks: list[bytes] = []
            self._collect[key] = acks  # every ack of the window comes to this one reply subject
            try:
                head = f"PUB {subject} {self._inbox}.{key} ".encode()
                self._send(b"".join(head + str(len(p)).encode() + _CRLF + p + _CRLF for p in part))
                self._pump(lambda a=acks, n=len(part): len(a) >= n, timeout)  # type: ignore[misc]
            finally:
                del self._collect[key]
            if len(acks) < len(part):
                raise BackendUnavailable("nats", mask_url(self.url),
                                         f"{len(part) - len(acks)} of {len(part)} publishes to {subject} "
                                         "were not acknowledged")
            for a in acks:
                if b'"error"' in a:
                    raise JetStreamError("$JS.API.PUB", json.loads(a)["error"])
            stored += len(acks)
        return stored
