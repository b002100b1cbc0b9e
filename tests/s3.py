"""An S3 API server for tests: moto's server mode on loopback, started by scripts/moto.sh.

Reusable outside the object-store tests: ``start_moto(host, port)`` starts (or finds) a server and returns
its URL; the ``s3_server`` fixture (session) does so on 127.0.0.1:5555 unless ``MODELMILL_TEST_S3`` names
another endpoint, and points the whole process (and its children) at it through the standard variables
``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``.
``s3_bucket`` gives each test a fresh bucket, emptied and deleted afterwards.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import need, port_open

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "moto.sh"
S3_URL = os.environ.get("MODELMILL_TEST_S3", "")
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "modelmill-test", "AWS_SECRET_ACCESS_KEY": "modelmill-test",
               "AWS_DEFAULT_REGION": "us-east-1"}


@dataclasses.dataclass
class MotoServer:
    """A moto server at ``url``; ``started``: this process started it (so ``stop`` stops it)."""

    url: str
    host: str
    port: int
    started: bool
    log: str = ""

    def env(self) -> dict[str, str]:
        """The variables that point boto/s3fs (and so modelmill) at this server."""
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": self.url}

    def stop(self) -> None:
        if self.started:
            subprocess.run(["bash", str(SCRIPT), "stop"], env={**os.environ, **_script_env(self.host, self.port)},
                           capture_output=True, timeout=30)
            self.started = False


def _script_env(host: str, port: int) -> dict[str, str]:
    return {"MOTO_HOST": host, "MOTO_PORT": str(port)}


def start_moto(host: str = "127.0.0.1", port: int = 5555, *, timeout: float = 300) -> MotoServer:
    """Start moto on ``host:port`` with scripts/moto.sh (installing it the first time) unless it answers.

    Raises ``RuntimeError`` with the script's output when it cannot; the caller decides to skip or fail.
    """
    if port_open(host, port):
        return MotoServer(url=f"http://{host}:{port}", host=host, port=port, started=False)
    done = subprocess.run(["bash", str(SCRIPT), "start"], env={**os.environ, **_script_env(host, port)},
                          capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0 or not port_open(host, port):
        raise RuntimeError(f"scripts/moto.sh exited {done.returncode}: {(done.stdout + done.stderr)[-800:]}")
    return MotoServer(url=f"http://{host}:{port}", host=host, port=port, started=True, log=done.stdout)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[MotoServer]:
    """The S3 API server of the session; the process's AWS_* variables point at it until the session ends."""
    if S3_URL:
        parts = urlsplit(S3_URL)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        need(port_open(host, port), f"the S3 server MODELMILL_TEST_S3={S3_URL} is not reachable")
        server = MotoServer(url=S3_URL, host=host, port=port, started=False)
    else:
        try:
            server = start_moto()
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
            need(False, f"moto (S3 API server) could not start: {exc}", "run scripts/moto.sh")
            raise  # unreachable: need() skipped or failed
    saved = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())
    try:
        yield server
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: MotoServer) -> Iterator[str]:
    """``s3://<fresh bucket>``, emptied and deleted after the test."""
    need(_has_s3fs(), "s3fs is not installed", "run scripts/moto.sh install")
    fs = _admin(s3_server.url)
    bucket = f"mm-{uuid.uuid4().hex[:12]}"
    fs.mkdir(bucket)
    yield f"s3://{bucket}"
    keys = fs.find(bucket)
    if keys:
        fs.rm(keys)
    fs.rmdir(bucket)


@functools.cache
def _admin(url: str) -> Any:
    """One s3fs client per server for creating and emptying buckets (a new client costs about a second)."""
    import s3fs

    return s3fs.S3FileSystem(endpoint_url=url, key=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                             secret=CREDENTIALS["AWS_SECRET_ACCESS_KEY"], skip_instance_cache=True,
                             use_listings_cache=False)


def _has_s3fs() -> bool:
    import importlib.util

    return importlib.util.find_spec("s3fs") is not None
