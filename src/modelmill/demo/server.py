"""The real HTTP server the demo talks to: ``modelmill serve`` in a child process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from modelmill.config import Settings
from modelmill.errors import BackendUnavailable

__all__ = ["ServerProcess", "free_port"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``modelmill serve`` on a free loopback port, with the project's backends in its environment."""

    def __init__(self, settings: Settings, *, models: list[str], workers: int = 1, log: Path | None = None,
                 extra_args: list[str] | None = None) -> None:
        self.settings = settings
        self.models = models
        self.workers = workers
        self.log = log
        self.extra_args = extra_args or []
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODELMILL_")}
        env["MODELMILL_HOME"] = str(self.settings.home)
        for key, value in self.settings.as_dict(masked=False).items():
            if key != "home":
                env[f"MODELMILL_{key.upper()}"] = value
        return env

    def start(self, timeout: float = 60.0) -> ServerProcess:
        self.port = free_port()
        args = [sys.executable, "-m", "modelmill", "serve", "--port", str(self.port), "--workers", str(self.workers)]
        for ref in self.models:
            args += ["--model", ref]
        out: Any = open(self.log, "ab") if self.log else subprocess.DEVNULL  # noqa: SIM115 - lives with the child
        self._proc = subprocess.Popen([*args, *self.extra_args], env=self.env(), stdout=out, stderr=out,
                                      cwd=self.settings.home.parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BackendUnavailable("model server", self.url, f"exited with code {self._proc.returncode}"
                                         + (f"; see {self.log}" if self.log else ""))
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise BackendUnavailable("model server", self.url, f"not ready after {timeout:.0f} s")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        self._proc = None

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
