"""A fleet on real network separation: ``modelmill serve`` hosts in their own network namespaces behind HAProxy.

Layout (one run; every name carries the test process's pid, so parallel or aborted runs never collide)::

    root namespace                                  namespace mf<pid>x<n>-h1 (and -h2, -h3)
    ------------------------------------------      -----------------------------------------
    bridge mf<pid>x<n>br  10.A.B.1/24  <-- veth -->  10.A.B.11:8080  modelmill serve
    PostgreSQL (throwaway)  10.A.B.1:<port>
    Redis (throwaway)       10.A.B.1:<port>
    HAProxy 127.0.0.1:<port> -> 10.A.B.11-13:8080, health checks on /v2/health/ready

The hosts reach PostgreSQL and Redis only over their veth link to the bridge. The project folder (artifacts,
the offline store with the prediction log and labels) is one shared folder: the namespaces share the
filesystem. Nothing here imports pytest, so ``benchmarks/fleet.py`` drives the same machinery; the tests'
fixtures are in ``conftest.py``.

Needs root (``ip netns``), ``haproxy`` (scripts/install-haproxy.sh) and PostgreSQL's server programs and
``redis-server`` (scripts/services.sh). :meth:`Fleet.close` always removes the namespaces, links and processes
it made, and :func:`remove_stale` removes those of runs whose process is gone (a SIGKILLed pytest).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from tests.processes import kill_process, stop_process
from tests.reliability.conftest import PgCluster, RedisServer, pg_bin, wait_for
from tests.serving.conftest import free_port

__all__ = ["HOST_PORT", "Balancer", "Fleet", "Host", "haproxy_binary", "haproxy_config", "missing_tools",
           "remove_stale"]

REPO = Path(__file__).resolve().parents[2]
HOST_PORT = 8080  # every host listens on the same port, each on its own address
_RUN = itertools.count()
_NAME = re.compile(r"^mf(\d+)x\d+")


def haproxy_binary() -> str | None:
    """haproxy on PATH, or where Debian puts it (/usr/sbin, not on every user's PATH)."""
    return shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")


def missing_tools() -> str | None:
    """What this machine lacks to build a fleet (None when nothing)."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    if shutil.which("ip") is None and not Path("/usr/sbin/ip").exists():
        return "the ip program (iproute2) is not installed"
    if haproxy_binary() is None:
        return "haproxy is not installed; install it with scripts/install-haproxy.sh"
    if not (pg_bin() / "initdb").exists():
        return "PostgreSQL's server programs (initdb) are not installed; install them with scripts/services.sh"
    if shutil.which("redis-server") is None:
        return "redis-server is not installed; install it with scripts/services.sh"
    return None


def haproxy_config(servers: Sequence[tuple[str, str]], *, bind: str = "127.0.0.1:8000",
                   stats_socket: str | None = None, check_interval_ms: int = 500) -> str:
    """An HAProxy configuration for ``servers`` (name, host:port), the one docs/howto/fleet.md shows.

    Health checks ask each server's ``/v2/health/ready``; two failed checks take a server out of the pool, two
    passed ones bring it back. A request whose connection to a server fails (refused: the server is gone) is
    retried on another server (``option redispatch 1``); a request a server accepted and then dropped is not
    (it may have run), so it fails with a 502. ``X-Served-By`` names the server that answered.
    """
    lines = ["global", "    maxconn 4096"]
    if stats_socket:
        lines.append(f"    stats socket {stats_socket} mode 600 level admin")
    lines += [
        "",
        "defaults",
        "    mode http",
        "    timeout connect 2s",
        "    timeout client 30s",
        "    timeout server 30s",
        "    retries 2",
        "    option redispatch 1",
        "",
        "frontend modelmill",
        f"    bind {bind}",
        "    default_backend serve",
        "",
        "backend serve",
        "    balance roundrobin",
        "    option httpchk GET /v2/health/ready",
        "    http-check expect status 200",
        f"    default-server inter {check_interval_ms}ms fall 2 rise 2",
        "    http-response set-header X-Served-By %[srv_name]",
    ]
    lines += [f"    server {name} {address} check" for name, address in servers]
    return "\n".join(lines) + "\n"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")
    return done


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale() -> list[str]:
    """Delete the namespaces and links left by fleet runs whose process is gone; returns their names."""
    removed: list[str] = []
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = _NAME.match(name)
        if m and not _alive(int(m.group(1))):
            _ip("netns", "del", name, check=False)
            removed.append(name)
    for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
        parts = line.split(":")
        if len(parts) < 2:
            continue
        name = parts[1].strip().split("@")[0]
        m = _NAME.match(name)
        if m and not _alive(int(m.group(1))):
            _ip("link", "del", name, check=False)
            removed.append(name)
    return removed


class BridgePg(PgCluster):
    """A throwaway PostgreSQL cluster listening on loopback and the bridge address, trusting the fleet's subnet."""

    def __init__(self, port: int, folder: Path, address: str, subnet: str) -> None:
        super().__init__(port, folder)
        self.address = address
        self.subnet = subnet

    @property
    def fleet_url(self) -> str:
        return f"postgresql://postgres@{self.address}:{self.port}/postgres"

    def init(self) -> None:
        super().init()
        with (self.data / "pg_hba.conf").open("a") as fh:
            fh.write(f"host all all {self.subnet} trust\n")

    def _ctl(self, action: str, *extra: str) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.folder / "pg.log"), "-w", "-t", "30",
                  "-o", f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1,{self.address} "
                        "-c fsync=off -c max_connections=200", action, *extra)


class BridgeRedis(RedisServer):
    """A throwaway Redis listening on loopback and the bridge address."""

    def __init__(self, port: int, folder: Path, address: str) -> None:
        super().__init__(port, folder)
        self.address = address

    def command(self) -> list[str]:
        cmd = super().command()
        i = cmd.index("--bind")
        cmd[i + 1:i + 2] = ["127.0.0.1", self.address]
        cmd += ["--protected-mode", "no"]
        return cmd

    @property
    def fleet_url(self) -> str:
        return f"redis://{self.address}:{self.port}"


def _client(timeout: float = 5.0) -> httpx.Client:
    return httpx.Client(timeout=timeout, trust_env=False)  # never through a proxy from the environment


class Host:
    """``modelmill serve`` in network namespace ``ns`` on ``address:8080``; ``kill()`` is SIGKILL."""

    def __init__(self, fleet: Fleet, index: int) -> None:
        self.fleet = fleet
        self.index = index
        self.name = f"host{index}"
        self.ns = f"{fleet.tag}-h{index}"
        self.address = f"{fleet.prefix}.{10 + index}"
        self.url = f"http://{self.address}:{HOST_PORT}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = fleet.root / f"serve-{self.name}.log"

    def start(self, *args: str) -> Host:
        """Start the server (not waiting for it); ``args`` are extra ``modelmill serve`` options."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODELMILL_") or k == "MODELMILL_TOKEN"}
        env.update({"PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO), "NO_PROXY": "*", **self.fleet.env})
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, sys.executable, "-m", "modelmill", "serve", "--host", self.address,
                 "--port", str(HOST_PORT), *self.fleet.serve_args, *args],
                cwd=self.fleet.root, env=env, stdout=fh, stderr=subprocess.STDOUT)
        return self

    def ready(self) -> bool:
        try:
            with _client(1.0) as c:
                return c.get(f"{self.url}/v2/health/ready").status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout: float = 120.0) -> Host:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise RuntimeError(f"{self.name} exited with {code}:\n{self.log.read_text()[-3000:]}")
            if self.ready():
                return self
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} was not ready in {timeout} s:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the server (``ip netns exec`` execs it, so the process is the server itself)."""
        kill_process(self.proc)

    def stop(self) -> None:
        stop_process(self.proc, grace_s=20)


class Balancer:
    """HAProxy in the root namespace in front of ``servers``, its configuration from :func:`haproxy_config`."""

    def __init__(self, folder: Path, servers: Sequence[tuple[str, str]], *, check_interval_ms: int = 500) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.socket = str(folder / "haproxy.sock")
        self.config = haproxy_config(servers, bind=f"127.0.0.1:{self.port}", stats_socket=self.socket,
                                     check_interval_ms=check_interval_ms)
        self.config_file = folder / "haproxy.cfg"
        self.log = folder / "haproxy.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Balancer:
        self.config_file.write_text(self.config)
        check = subprocess.run([haproxy_binary() or "haproxy", "-c", "-f", str(self.config_file)],
                               capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy rejects its configuration: {check.stdout}{check.stderr}")
        with self.log.open("ab") as fh:  # -db: foreground, no daemon; stopped with the fleet
            self.proc = subprocess.Popen([haproxy_binary() or "haproxy", "-db", "-f", str(self.config_file)],
                                         stdout=fh, stderr=subprocess.STDOUT)
        wait_for(lambda: _port_open(self.port), 20, f"haproxy listening on {self.port}")
        return self

    def command(self, line: str) -> str:
        """One command on HAProxy's runtime API (the stats socket), e.g. ``disable server serve/host2``."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(self.socket)
            s.sendall(line.encode() + b"\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        return data.decode()

    def stats(self) -> dict[str, str]:
        """Each server's state as HAProxy sees it (``UP``, ``DOWN``, ``UP 1/2`` …), from ``show stat``."""
        lines = self.command("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        out: dict[str, str] = {}
        for line in lines[1:]:
            row = dict(zip(header, line.split(","), strict=False))
            if row.get("pxname") == "serve" and row.get("svname") not in ("BACKEND", "FRONTEND", None):
                out[row["svname"]] = row.get("status", "")
        return out

    def wait_status(self, server: str, status: str, timeout: float = 30.0) -> None:
        wait_for(lambda: self.stats().get(server, "") == status, timeout,
                 f"haproxy seeing {server} {status}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        socket.create_connection((host, port), timeout=0.2).close()
        return True
    except OSError:
        return False


SERVING_TOML = "[serving]\nreload_interval_s = 0.5\nlog_flush_interval_s = 0.2\n"


class Fleet:
    """A bridge, PostgreSQL and Redis on it, ``hosts`` namespaces each with a ``modelmill serve``, HAProxy.

    ``setup(root)`` is called with the project folder once PostgreSQL and Redis run and ``modelmill.toml``
    names them (register models there: every host serves what has a route or a ``production`` alias at its
    start). Use as a context manager, or call :meth:`close` in a ``finally``: it always runs every cleanup step.
    """

    def __init__(self, root: Path, *, hosts: int = 3, serving_toml: str = SERVING_TOML,
                 serve_args: Sequence[str] = ("--no-cache",), check_interval_ms: int = 500, s3: bool = False) -> None:
        self.root = root
        self.s3 = s3
        #: Variables every fleet process needs (with ``s3``: the S3 endpoint and credentials).
        self.env: dict[str, str] = {}
        self.moto: Any = None
        self.bucket = ""
        self._saved_env: dict[str, str | None] = {}
        self.n_hosts = hosts
        self.serving_toml = serving_toml
        self.serve_args = tuple(serve_args)
        self.check_interval_ms = check_interval_ms
        pid = os.getpid()
        run = next(_RUN)
        self.tag = f"mf{pid}x{run % 10}"
        code = pid * 10 + run % 10
        self.prefix = self._free_prefix(code)
        self.subnet = f"{self.prefix}.0/24"
        self.bridge_ip = f"{self.prefix}.1"
        self.bridge = f"{self.tag}br"
        self.hosts: list[Host] = []
        self._made: list[Host] = []  # every host of every namespace, the fleet's and any added later
        self.namespaces: list[str] = []
        self.links: list[str] = []
        self.pg: BridgePg | None = None
        self.redis: BridgeRedis | None = None
        self.balancer: Balancer | None = None
        self._pg_folder: Path | None = None

    @staticmethod
    def _free_prefix(code: int) -> str:
        routes = _ip("route", "show", check=False).stdout + _ip("addr", "show", check=False).stdout
        for step in range(50):
            c = code + step * 7919
            prefix = f"10.{100 + (c >> 8) % 150}.{c % 256}"
            if f"{prefix}." not in routes:
                return prefix
        raise RuntimeError("no free 10.x.y.0/24 subnet for the fleet's bridge")

    # ---- building -----------------------------------------------------------------------------

    def start(self, setup: Callable[[Path], Any] | None = None) -> Fleet:
        try:
            self._network()
            self._services()
            self._project(setup)
            for i in range(1, self.n_hosts + 1):
                self.hosts.append(self.add_namespace(i))
            for host in self.hosts:
                host.start()
            for host in self.hosts:
                host.wait_ready()
            self.balancer = Balancer(self.root, [(h.name, f"{h.address}:{HOST_PORT}") for h in self.hosts],
                                     check_interval_ms=self.check_interval_ms).start()
            for host in self.hosts:
                self.balancer.wait_status(host.name, "UP")
        except BaseException:
            self.close()
            raise
        return self

    def _network(self) -> None:
        remove_stale()
        _ip("link", "add", self.bridge, "type", "bridge")
        self.links.append(self.bridge)
        _ip("addr", "add", f"{self.bridge_ip}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")

    def add_namespace(self, index: int) -> Host:
        """Namespace ``index`` with its veth pair on the bridge and address ``.1<index>``; returns its Host."""
        host = Host(self, index)
        self._made.append(host)
        veth, peer = f"{self.tag}v{index}", f"{self.tag}p{index}"
        _ip("netns", "add", host.ns)
        self.namespaces.append(host.ns)
        _ip("link", "add", veth, "type", "veth", "peer", "name", peer)
        self.links.append(veth)
        _ip("link", "set", peer, "netns", host.ns)
        _ip("link", "set", veth, "master", self.bridge)
        _ip("link", "set", veth, "up")
        _ip("-n", host.ns, "addr", "add", f"{host.address}/24", "dev", peer)
        _ip("-n", host.ns, "link", "set", peer, "up")
        _ip("-n", host.ns, "link", "set", "lo", "up")
        return host

    def _services(self) -> None:
        # Not under pytest's tmp folder: that one is private to this user, and PostgreSQL runs as postgres.
        self._pg_folder = Path(tempfile.mkdtemp(prefix="modelmill-fleet-pg-"))
        self.pg = BridgePg(free_port(), self._pg_folder / "cluster", self.bridge_ip, self.subnet)
        self.pg.init()
        self.pg.start()
        folder = self.root / "redis"
        folder.mkdir(parents=True, exist_ok=True)
        self.redis = BridgeRedis(free_port(), folder, self.bridge_ip)
        self.redis.start()
        if self.s3:
            self._object_store()

    def _object_store(self) -> None:
        """A throwaway moto S3 server on the bridge address (scripts/moto.sh) and a bucket on it."""
        import uuid

        import s3fs

        from tests.s3 import CREDENTIALS, start_moto

        self.moto = start_moto(self.bridge_ip, free_port())
        self.env = {**CREDENTIALS, "AWS_ENDPOINT_URL": self.moto.url}
        self.bucket = f"mm-fleet-{uuid.uuid4().hex[:10]}"
        fs = s3fs.S3FileSystem(endpoint_url=self.moto.url, key=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                               secret=CREDENTIALS["AWS_SECRET_ACCESS_KEY"], skip_instance_cache=True)
        fs.mkdir(self.bucket)

    def _project(self, setup: Callable[[Path], Any] | None) -> None:
        assert self.pg is not None and self.redis is not None
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "modelmill.toml").write_text(
            'home = ".modelmill"\n\n[backends]\n'
            f'db = "{self.pg.fleet_url}"\n'
            f'online = "{self.redis.fleet_url}/0"\n'
            f'cache = "{self.redis.fleet_url}/1"\n'
            + (f'offline = "s3://{self.bucket}/offline"\n' if self.s3 else "")
            + f"\n{self.serving_toml}")
        # This process (the tests' clients, a controller, a monitor it starts) reads the same object store
        self._saved_env = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        if setup is not None:
            setup(self.root)

    # ---- using --------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self.balancer is not None
        return self.balancer.url

    def host(self, name: str) -> Host:
        return next(h for h in self.hosts if h.name == name)

    # ---- cleanup ------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop every process and remove every namespace and link this fleet made, whatever failed before."""
        steps: list[Callable[[], Any]] = []
        if self.balancer is not None:
            steps.append(self.balancer.stop)
        steps += [h.stop for h in self._made]
        if self.redis is not None:
            steps.append(self.redis.stop)
        if self.pg is not None:
            steps.append(self.pg.stop)
        if self.moto is not None:
            steps.append(self.moto.stop)  # a throwaway server: its buckets go with it
        steps += [functools.partial(_ip, "netns", "del", ns, check=False) for ns in self.namespaces]
        steps += [functools.partial(_ip, "link", "del", link, check=False) for link in self.links]
        for step in steps:
            with contextlib.suppress(Exception):
                step()
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env = {}
        if self._pg_folder is not None:
            shutil.rmtree(self._pg_folder, ignore_errors=True)
        self.hosts, self._made, self.namespaces, self.links = [], [], [], []
        self.balancer = self.redis = self.pg = self.moto = None  # type: ignore[assignment]

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Load:
    """``clients`` threads, each sending one request at a time to ``url`` (bounded in count and time).

    Every request is recorded as (start, end, status, model version, ``X-Served-By``); a request that got no
    HTTP answer at all is status 0, with the client error's class in place of the server's name. :meth:`in_flight` counts the requests sent and not yet answered, at once.
    Inputs are N(0, 1) rows of :data:`COLUMNS` and each request names a random user (``routing_key``).
    """

    def __init__(self, url: str, model: str, *, clients: int = 4, max_requests: int = 50_000,
                 max_seconds: float = 120.0, seed: int = 0, ids: str = "r") -> None:
        import threading

        self.url = url
        self.model = model
        self.clients = clients
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.seed = seed
        self.ids = ids
        self.records: list[tuple[float, float, int, str, str, str]] = []  # start, end, status, version, host, id
        self._lock = threading.Lock()
        self._in_flight = 0
        self._sent = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(clients)]

    def start(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> Load:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)
        return self

    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    def _loop(self, index: int) -> None:
        import numpy as np

        from tests.serving.conftest import COLUMNS

        rng = np.random.default_rng([self.seed, index])
        deadline = time.monotonic() + self.max_seconds
        with _client(10.0) as client:
            while not self._stop.is_set() and time.monotonic() < deadline:
                with self._lock:
                    if self._sent >= self.max_requests:
                        return
                    self._sent += 1
                    self._in_flight += 1
                    n = self._sent
                x = rng.normal(size=len(COLUMNS))
                body = {"id": f"{self.ids}{index}-{n}",
                        "inputs": [{"name": c, "shape": [1], "datatype": "FP64", "data": [float(v)]}
                                   for c, v in zip(COLUMNS, x, strict=True)],
                        "parameters": {"routing_key": f"user-{rng.integers(1_000_000)}"}}
                start = time.time()
                try:
                    r = client.post(f"{self.url}/v2/models/{self.model}/infer", json=body)
                    status = r.status_code
                    version = str(r.json().get("model_version", "")) if status == 200 else ""
                    served = r.headers.get("x-served-by", "")
                except (httpx.HTTPError, ValueError) as exc:  # no HTTP answer: the error's class instead
                    status, version, served = 0, "", type(exc).__name__
                with self._lock:
                    self._in_flight -= 1
                    self.records.append((start, time.time(), status, version, served, body["id"]))

    def errors(self, since: float = 0.0, until: float = float("inf")) -> tuple[int, int]:
        """(failed, all) among the requests started in [since, until)."""
        rows = [r for r in self.records if since <= r[0] < until]
        return sum(1 for r in rows if r[2] != 200), len(rows)
