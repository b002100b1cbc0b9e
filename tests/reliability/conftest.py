"""Fault-suite fixtures: throwaway Redis, NATS and PostgreSQL servers of the test's own, on free loopback ports.

The machine's shared servers (Redis 6379, NATS 4222, PostgreSQL 5432) are never stopped: each test that
breaks a server starts its own in a temporary folder, breaks it, and removes it afterwards.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import need, port_open
from tests.processes import kill_process, stop_process
from tests.serving.conftest import free_port, serve

__all__ = ["NatsServer", "PgCluster", "RedisServer", "nats_server", "pg_cluster", "redis_server", "serve",
           "wait_for"]

# scripts/services.sh (run by .ci/run) installs what is missing from Debian
INSTALL = "install it with scripts/services.sh (apt-get install redis-server nats-server postgresql)"


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise TimeoutError(f"{what} did not happen within {timeout} s")


class _Process:
    """A server subprocess on ``port``; ``kill()`` is a crash (SIGKILL), ``start()`` brings it back."""

    name = "server"

    def __init__(self, port: int, folder: Path) -> None:
        self.port = port
        self.folder = folder
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = folder / f"{self.name}.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen(self.command(), stdout=fh, stderr=subprocess.STDOUT, cwd=self.folder)
        wait_for(lambda: port_open("127.0.0.1", self.port, 0.2), 20, f"{self.name} listening on {self.port}")

    def kill(self) -> None:
        kill_process(self.proc)
        wait_for(lambda: not port_open("127.0.0.1", self.port, 0.2), 10, f"{self.name} gone from {self.port}")

    def stop(self) -> None:
        stop_process(self.proc)


class RedisServer(_Process):
    """``redis-server`` without persistence except an explicit ``SAVE`` (so a restart keeps what was saved)."""

    name = "redis"

    def command(self) -> list[str]:
        return ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--daemonize", "no", "--dir", str(self.folder), "--dbfilename", "dump.rdb"]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"


def nats_binary() -> str | None:
    """nats-server on PATH, or where Debian's package puts it (/usr/sbin, not on every user's PATH)."""
    return shutil.which("nats-server") or shutil.which("nats-server", path="/usr/sbin")


class NatsServer(_Process):
    """``nats-server`` with JetStream, its store in the test's folder (so it survives a restart)."""

    name = "nats"

    def command(self) -> list[str]:
        return [nats_binary() or "nats-server", "-a", "127.0.0.1", "-p", str(self.port), "-js",
                "-sd", str(self.folder / "js")]

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"


def pg_bin() -> Path:
    """The newest PostgreSQL server's programs (initdb, pg_ctl) as Debian installs them."""
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    return Path(bins[-1]) if bins else Path("/nonexistent")


class PgCluster:
    """A PostgreSQL cluster of the test's own (initdb as the ``postgres`` user), restarted with pg_ctl."""

    def __init__(self, port: int, folder: Path) -> None:
        self.port = port
        self.folder = folder
        self.data = folder / "data"
        self.bin = pg_bin()

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 60) -> None:
        cmd = [str(a) for a in args]
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise subprocess.SubprocessError(f"{' '.join(cmd)} failed: {done.stdout}{done.stderr}")

    def init(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.folder.parent.chmod(0o755)
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        self._run(self.bin / "initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    def _ctl(self, action: str, *extra: str) -> None:
        self._run(self.bin / "pg_ctl", "-D", str(self.data), "-l", str(self.folder / "pg.log"), "-w", "-t", "30",
                  "-o", f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off", action, *extra)

    def start(self) -> None:
        self._ctl("start")

    def restart(self) -> None:
        self._ctl("restart", "-m", "fast")

    def stop(self) -> None:
        self._ctl("stop", "-m", "immediate")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    need(shutil.which("redis-server"), "redis-server is not installed", INSTALL)
    server = RedisServer(free_port(), tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    need(nats_binary(), "nats-server is not installed", INSTALL)
    server = NatsServer(free_port(), tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def pg_cluster() -> Iterator[PgCluster]:
    need((pg_bin() / "initdb").exists(), f"PostgreSQL server binaries (initdb) are not in {pg_bin()}", INSTALL)
    # Not under pytest's tmp folder: that one is private to this user, and the server runs as postgres.
    folder = Path(tempfile.mkdtemp(prefix="modelmill-pg-")) / "cluster"
    cluster = PgCluster(free_port(), folder)
    cluster.init()
    cluster.start()
    yield cluster
    try:
        cluster.stop()
    except subprocess.SubprocessError:
        pass
    shutil.rmtree(folder.parent, ignore_errors=True)
