"""A real two-node Ray cluster on this machine, for tests and benchmarks: a head and a worker node, each its own process.

    with RayCluster(tmp_dir) as cluster:           # ray start --head ... --block, then ray start --address ... --block
        cluster.address                            # "127.0.0.1:PORT", for a driver on this machine
        cluster.client_address                     # "ray://127.0.0.1:PORT", Ray Client
        with cluster.driver_env():                 # the settings a driver of this cluster needs (and children)
            ray.init(cluster.address)
    # both nodes stopped: each ``ray start --block`` process is sent SIGTERM and stops the processes it started

Each node is ``ray start ... --block`` run as a child of this process in a session of its own, so stopping the
cluster stops exactly these nodes (never ``ray stop``, which would stop every Ray on the machine). The nodes get
``--num-cpus`` each, a small object store, and a temporary folder of their own; nothing is left behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

__all__ = ["RayCluster", "free_port", "ray_program"]

MiB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ray_program() -> str | None:
    """The ``ray`` command beside this interpreter (the one whose Ray the driver imports), or None."""
    beside = Path(sys.executable).with_name("ray")
    return str(beside) if beside.exists() else None


class RayCluster:
    """Head plus ``workers`` worker nodes (default one), started on enter and stopped on exit."""

    def __init__(self, work_dir: str | os.PathLike[str] | None = None, *, num_cpus: int = 1, workers: int = 1,
                 object_store_mib: int = 200, start_timeout: float = 300.0) -> None:
        program = ray_program()
        if program is None:
            raise RuntimeError(f"no 'ray' program beside {sys.executable}: pip install 'modelmill[ray]'")
        self.program = program
        # Ray's unix sockets live under the temporary folder and their paths must stay short (107 bytes)
        self.temp_dir = Path(tempfile.mkdtemp(prefix="mmray-", dir="/tmp"))
        self.log_dir = Path(work_dir) if work_dir is not None else self.temp_dir
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.num_cpus, self.workers, self.object_store_mib = num_cpus, workers, object_store_mib
        self.start_timeout = start_timeout
        self.port = free_port()
        self.client_port = free_port()
        self.host = "127.0.0.1"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.watchdog: subprocess.Popen[bytes] | None = None
        # Token authentication off for this throwaway cluster: Ray's default token (~/.ray/auth_token) is one
        # file shared by every cluster on the machine, written by the first head to start, and Ray Client
        # connections did not get through with a token of the cluster's own. Drivers use :attr:`env`.
        self.env = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def client_address(self) -> str:
        return f"ray://{self.host}:{self.client_port}"

    def _start(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        env = dict(os.environ, RAY_ENABLE_UV_RUN_RUNTIME_ENV="0", **self.env)
        env.pop("RAY_ADDRESS", None)
        env.pop("RAY_AUTH_TOKEN_PATH", None)
        log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115 - the child holds it
        try:
            proc = subprocess.Popen(
                [self.program, "start", "--block", "--disable-usage-stats", "--node-ip-address", self.host,
                 "--num-cpus", str(self.num_cpus), "--num-gpus", "0",
                 "--object-store-memory", str(self.object_store_mib * MiB),
                 "--dashboard-agent-listen-port", str(free_port()), "--metrics-export-port", str(free_port()),
                 *args],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        finally:
            log.close()
        self.procs.append(proc)
        return proc

    def start(self) -> RayCluster:
        self._start("head", ["--head", "--port", str(self.port), "--ray-client-server-port", str(self.client_port),
                             "--include-dashboard", "false", "--dashboard-port", str(free_port()),
                             "--temp-dir", str(self.temp_dir)])
        try:
            self._wait_started("head")
            for i in range(self.workers):
                self._start(f"worker{i}", ["--address", self.address])
            for i in range(self.workers):
                self._wait_started(f"worker{i}")
            self._watch()
        except BaseException:
            self.stop()
            raise
        return self

    def _watch(self) -> None:
        """A watchdog process that stops the nodes if this process dies without stopping them (killed, or
        aborted by Ray's own fatal errors, so no ``finally`` runs): it kills their process groups and folder."""
        code = ("import os, shutil, signal, sys, time\n"
                "parent, temp, groups = int(sys.argv[1]), sys.argv[2], [int(g) for g in sys.argv[3:]]\n"
                "while True:\n"
                "    try:\n"
                "        os.kill(parent, 0)\n"
                "    except ProcessLookupError:\n"
                "        break\n"
                "    time.sleep(1)\n"
                "for g in groups:\n"
                "    try:\n"
                "        os.killpg(g, signal.SIGKILL)\n"
                "    except OSError:\n"
                "        pass\n"
                "shutil.rmtree(temp, ignore_errors=True)\n")
        self.watchdog = subprocess.Popen([sys.executable, "-c", code, str(os.getpid()), str(self.temp_dir),
                                          *(str(p.pid) for p in self.procs)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def _wait_started(self, name: str) -> None:
        """Until the node's ``ray start`` says its runtime started (its raylet registered with the head)."""
        log = self.log_dir / f"{name}.log"
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"a Ray node exited with {proc.returncode}: {self.logs()[-3000:]}")
            if "Ray runtime started" in log.read_text(errors="replace") and _port_open(self.host, self.port):
                return
            time.sleep(0.5)
        raise RuntimeError(f"the Ray node {name} did not start within {self.start_timeout:.0f} s: "
                           f"{self.logs()[-3000:]}")

    @contextlib.contextmanager
    def driver_env(self) -> Iterator[None]:
        """This process's environment set for a driver of this cluster (its token), restored afterwards."""
        saved = {k: os.environ.get(k) for k in (*self.env, "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN")}
        os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
        os.environ.pop("RAY_AUTH_TOKEN", None)
        os.environ.update(self.env)
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("*.log")))

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to each node's ``ray start --block`` (workers first), which stops what it started; then kill."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in reversed(self.procs):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
            # whatever of this node's session is left (a process the node started that outlived it)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        self.procs.clear()
        if self.watchdog is not None and self.watchdog.poll() is None:
            self.watchdog.kill()
            self.watchdog.wait(5)
        self.watchdog = None
        _remove_tree(self.temp_dir)

    def __enter__(self) -> RayCluster:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def _port_open(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1.0).close()
        return True
    except OSError:
        return False


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
