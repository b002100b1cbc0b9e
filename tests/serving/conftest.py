"""Serving fixtures: small real models, a registry-backed project folder, and a real `modelmill serve` process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from modelmill.config import load_settings
from modelmill.project import Project
from modelmill.registry import Field, Registry, Signature, clear_cache

N_FEATURES = 20
COLUMNS = [f"f{i}" for i in range(N_FEATURES)]


def train_lr(seed: int) -> Any:
    """A logistic regression on 20 features (the issue's benchmark model), fixed seed."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    X = rng.normal(size=(400, N_FEATURES))
    w = rng.normal(size=N_FEATURES)
    y = (X @ w + rng.normal(scale=0.5, size=400) > 0).astype(int)
    return LogisticRegression(max_iter=500).fit(X, y)


def signature() -> Signature:
    return Signature(inputs=[Field(c, "float64") for c in COLUMNS], outputs=[Field("probability")])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_project(root: Path, serving: str = "") -> Path:
    """A project folder (modelmill.toml) with model ``clf``: v1 and v2 (different seeds), production -> 1."""
    root.mkdir(parents=True)
    (root / "modelmill.toml").write_text('home = ".modelmill"\n\n[serving]\nreload_interval_s = 0.25\n'
                                         f"log_flush_interval_s = 0.2\n{serving}")
    clear_cache()
    project = Project(load_settings(cwd=root))
    reg = Registry(project)
    reg.register("clf", train_lr(0), flavor="sklearn", signature=signature())
    reg.register("clf", train_lr(1), flavor="sklearn", signature=signature())
    reg.set_alias("clf", "production", 1)
    project.close()
    clear_cache()
    return root


@pytest.fixture
def project_dir(tmp_path: Path) -> Path:
    return make_project(tmp_path / "proj")


def open_project_at(root: Path) -> Project:
    return Project(load_settings(cwd=root))


class ServeProcess:
    """``modelmill serve`` in a subprocess, in ``cwd``, waited on until ``/v2/health/ready`` answers 200."""

    def __init__(self, cwd: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = cwd / f"serve-{self.port}.log"
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        full_env.pop("MODELMILL_HOME", None)
        self._fh = self.log.open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "modelmill", "serve", "--port", str(self.port), *args],
                                     cwd=cwd, env=full_env, stdout=self._fh, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 60.0) -> ServeProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"modelmill serve exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"modelmill serve was not ready in {timeout} s:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._fh.close()


@pytest.fixture
def serve() -> Iterator[Callable[..., ServeProcess]]:
    """Start ``modelmill serve`` processes; every one is stopped at the end of the test."""
    started: list[ServeProcess] = []

    def start(cwd: Path, *args: str, env: dict[str, str] | None = None) -> ServeProcess:
        proc = ServeProcess(cwd, *args, env=env)
        started.append(proc)
        return proc.wait_ready()

    yield start
    for proc in started:
        proc.stop()


def infer_body(X: np.ndarray) -> dict[str, Any]:
    """An OIP request with one named FP64 tensor per column."""
    return {"inputs": [{"name": c, "shape": [len(X)], "datatype": "FP64", "data": X[:, i].tolist()}
                       for i, c in enumerate(COLUMNS)]}
