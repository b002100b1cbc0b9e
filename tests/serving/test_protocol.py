"""Slow and simple clients against a real uvicorn server (loopback): a head dripped a byte at a time is cut
off with a JSON 408, a client that writes its whole body before reading gets the 413, malformed framing and
raw non-ASCII header bytes get a JSON 400."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from modelmill.serving import FunctionModel, Limits, ModelServer, ServerConfig, StaticSource, create_app
from modelmill.serving.protocol import UVICORN, HttpProtocol, limits_of
from tests.serving.conftest import free_port, make_project

HEADER_TIMEOUT_S = 0.5
ROW = {"inputs": [{"name": "a", "shape": [1], "datatype": "FP64", "data": [1]},
                  {"name": "b", "shape": [1], "datatype": "FP64", "data": [2]}]}


class ThreadServer:
    """uvicorn, as ``modelmill serve`` runs it, serving ``app`` from a thread on a loopback port."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    **UVICORN))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def live() -> Iterator[ThreadServer]:
    model = FunctionModel("sum", 3, ["a", "b"], lambda X: X.sum(axis=1))
    limits = Limits(max_body_bytes=64 * 1024, header_timeout_s=HEADER_TIMEOUT_S, drain_bytes=32 * 1024 * 1024)
    server = ModelServer(StaticSource([model], aliases={"sum@production": 3}),
                         config=ServerConfig(models=["sum@production"], log_predictions=False, limits=limits))
    with ThreadServer(create_app(server)) as live:
        yield live


def _connect(live: ThreadServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", live.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def test_the_protocol_reads_the_limits_of_the_app_it_serves(live: ThreadServer) -> None:
    assert limits_of(live.server.config.loaded_app).header_timeout_s == HEADER_TIMEOUT_S
    assert limits_of(object()) == Limits()
    assert live.server.config.http_protocol_class is HttpProtocol


def test_connections_dripping_their_head_are_closed_with_a_json_408(live: ThreadServer) -> None:
    head = b"POST /v2/models/sum/infer HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 250
    socks = [_connect(live) for _ in range(20)]
    closed_at: dict[int, int] = {}
    # One byte per connection every 20 ms: the head never completes. A server without a header
    # timeout keeps every connection open until the whole head has been dripped (6 s); this one closes
    # each of them after HEADER_TIMEOUT_S, so sending soon fails. The loop stops at the first of the two.
    for i in range(len(head)):
        for n, sock in enumerate(socks):
            if n in closed_at:
                continue
            try:
                sock.sendall(head[i:i + 1])
            except OSError:
                closed_at[n] = i
        if len(closed_at) == len(socks):
            break
        time.sleep(0.02)
    assert len(closed_at) == len(socks), f"{len(socks) - len(closed_at)} connections were never closed"
    assert max(closed_at.values()) < len(head) // 2
    for sock in socks:  # what the server wrote before closing: a 408 with a JSON body naming the limit
        sock.settimeout(5)
        try:
            raw = _read_all(sock)
        except ConnectionResetError:
            continue  # unread bytes of ours reset the connection; the close itself is what matters here
        finally:
            sock.close()
        if raw:
            status, headers, body = _response(raw)
            assert status == 408 and headers["content-type"] == "application/json"
            assert "header_timeout_s" in json.loads(body)["error"]


def test_a_connection_that_sends_nothing_is_closed_too(live: ThreadServer) -> None:
    with _connect(live) as sock:
        sock.settimeout(10 * HEADER_TIMEOUT_S + 10)
        status, _, body = _response(_read_all(sock))
    assert status == 408 and "did not arrive" in json.loads(body)["error"]


def test_a_complete_head_is_not_cut_off_by_the_header_timeout(live: ThreadServer) -> None:
    body = json.dumps(ROW).encode()
    with _connect(live) as sock:
        sock.sendall(b"POST /v2/models/sum/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body))
        time.sleep(2 * HEADER_TIMEOUT_S)  # the body may take longer: request_timeout_s bounds that part
        sock.sendall(body + b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        sock.settimeout(10)
        raw = _read_all(sock)
    assert raw.startswith(b"HTTP/1.1 200") and raw.count(b"HTTP/1.1 200") == 2


@pytest.mark.parametrize("megabytes", [1, 24])
def test_urllib_writing_its_whole_body_before_reading_gets_the_413(live: ThreadServer, megabytes: int) -> None:
    body = b"x" * (megabytes * 1024 * 1024)  # urllib always sends "Connection: close"
    request = urllib.request.Request(f"{live.url}/v2/models/sum/infer", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    assert caught.value.code == 413
    assert json.loads(caught.value.read())["error"].startswith("body: is too large")


def test_a_chunked_body_over_the_limit_is_drained_too(live: ThreadServer) -> None:
    chunk = b"x" * 65536
    with _connect(live) as sock:
        sock.sendall(b"POST /v2/models/sum/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                     b"Connection: close\r\n\r\n")
        for _ in range(64):  # 4 MB, written before anything is read
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        sock.sendall(b"0\r\n\r\n")
        status, headers, body = _response(_read_all(sock))
    assert status == 413 and headers["content-type"] == "application/json"
    assert json.loads(body)["error"].startswith("body: is too large")


def test_the_drain_is_bounded(live: ThreadServer) -> None:
    # past drain_bytes the server stops reading and closes: the client cannot make it read for ever
    chunk = b"x" * (1024 * 1024)
    with _connect(live) as sock:
        sock.sendall(b"POST /v2/models/sum/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (1 << 40))
        sent = 0
        with pytest.raises(OSError):
            while sent < 256 * len(chunk):
                sock.sendall(chunk)
                sent += len(chunk)
    assert sent < 256 * len(chunk)


@pytest.mark.parametrize("request_bytes", [
    b"POST /v2/models/sum/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n",
    b"POST /v2/models/sum/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nabcde",
    b"POST /v2/models/sum/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 5x\r\n\r\nabcde",
    b"GET /v2 HTTP/9.9\r\nHost: x\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS client hello sent to the plain-HTTP port
])
def test_malformed_framing_gets_a_json_400(live: ThreadServer, request_bytes: bytes) -> None:
    with _connect(live) as sock:
        sock.sendall(request_bytes)
        status, headers, body = _response(_read_all(sock))
    assert status == 400 and headers["content-type"] == "application/json"
    assert json.loads(body)["error"].startswith("malformed HTTP request")


@pytest.mark.parametrize("value", [b"\xb2", b"\xd9\xa3", b"1\xb2"])
def test_a_raw_non_ascii_header_byte_is_a_400_naming_the_header(live: ThreadServer, value: bytes) -> None:
    body = json.dumps(ROW).encode()
    with _connect(live) as sock:
        sock.sendall(b"POST /v2/models/sum/infer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     b"Inference-Header-Content-Length: " + value + b"\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body)
        status, headers, raw = _response(_read_all(sock))
    assert status == 400 and headers["content-type"] == "application/json", raw
    assert json.loads(raw)["error"].startswith("inference-header-content-length")


def test_modelmill_serve_runs_the_hardened_protocol(tmp_path: Path, serve: Any) -> None:
    root = make_project(tmp_path / "proj", "header_timeout_s = 0.5\n")
    proc = serve(root, "--model", "clf@production")
    request = urllib.request.Request(f"{proc.url}/v2/models/clf/infer", data=b"x" * (24 * 1024 * 1024),
                                     method="POST", headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=60)
    assert caught.value.code == 413
    with socket.create_connection(("127.0.0.1", proc.port), timeout=30) as sock:
        sock.sendall(b"GET /v2 HTTP/1.1\r\nHost: x\r\n")  # and never the blank line that ends the head
        status, _, body = _response(_read_all(sock))
    assert status == 408 and "0.5 s" in json.loads(body)["error"]
