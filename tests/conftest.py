"""Shared fixtures: a fresh project folder, and real servers (skip, or fail under MODELMILL_REQUIRE_SERVICES=1)."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelmill.config import Settings
from modelmill.project import Project

REQUIRE = os.environ.get("MODELMILL_REQUIRE_SERVICES") == "1"

PG_ADMIN_URL = os.environ.get("MODELMILL_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("MODELMILL_TEST_REDIS", "redis://127.0.0.1:6379/0")
NATS_URL = os.environ.get("MODELMILL_TEST_NATS", "nats://127.0.0.1:4222")
KAFKA_URL = os.environ.get("MODELMILL_TEST_KAFKA", "kafka://127.0.0.1:9092")


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def need(available: object, missing: str, how: str = "") -> None:
    """Go on when ``available`` is true; else skip saying what is ``missing``, or fail when services are required.

    Every test that skips for want of a server, a program or a data package goes through here, so that under
    ``MODELMILL_REQUIRE_SERVICES=1`` (CI) no guarantee's test is skipped: it fails, naming what to install.
    """
    if available:
        return
    msg = missing + (f"; {how}" if how else "")
    if REQUIRE:
        pytest.fail(f"MODELMILL_REQUIRE_SERVICES=1 and {msg}")
    pytest.skip(msg)


def need_service(name: str, host: str, port: int, how: str = "") -> None:
    """Skip the test when the server does not answer, or fail when services are required."""
    need(port_open(host, port), f"{name} is not reachable at {host}:{port}", how)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Embedded defaults in a fresh folder."""
    return Settings.defaults(home=tmp_path / ".modelmill")


@pytest.fixture
def project(settings: Settings) -> Iterator[Project]:
    p = Project(settings)
    yield p
    p.close()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database, dropped afterwards."""
    need_service("PostgreSQL", "127.0.0.1", 5432, "start it with scripts/services.sh")
    import sqlalchemy as sa

    from modelmill.config import sqlalchemy_url

    name = f"mm_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(sqlalchemy_url(PG_ADMIN_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def redis_url() -> str:
    need_service("Redis", "127.0.0.1", 6379, "start it with scripts/services.sh")
    return REDIS_URL


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix unique to the test; its keys are deleted afterwards."""
    import redis

    prefix = f"mmtest:{uuid.uuid4().hex[:10]}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def nats_url() -> str:
    need_service("NATS", "127.0.0.1", 4222, "start it with scripts/services.sh")
    return NATS_URL


@pytest.fixture(scope="session")
def kafka_url() -> Iterator[str]:
    """Kafka at 127.0.0.1:9092: Tansu is started by scripts/tansu.sh when nothing listens, and stopped
    at the end of the session only if this fixture started it."""
    import subprocess

    host_port = KAFKA_URL.split("://", 1)[1]
    host, port = host_port.rsplit(":", 1)
    started = False
    if not port_open(host, int(port)) and host in ("127.0.0.1", "localhost"):
        script = Path(__file__).resolve().parent.parent / "scripts" / "tansu.sh"
        env = {**os.environ, "TANSU_PORT": port}
        done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
        started = done.returncode == 0 and port_open(host, int(port))
    need_service("Kafka (Tansu)", host, int(port), "start it with scripts/tansu.sh")
    yield KAFKA_URL
    if started:
        script = Path(__file__).resolve().parent.parent / "scripts" / "tansu.sh"
        subprocess.run(["bash", str(script), "stop"], env={**os.environ, "TANSU_PORT": port}, timeout=30)


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A real two-node Ray cluster (``ray start --head`` and a worker node, each its own process, one CPU and
    a 200 MiB object store each), shared by the session's tests and stopped at its end (those nodes only)."""
    import importlib.util

    need(importlib.util.find_spec("ray") is not None, "Ray is not installed", "pip install 'modelmill[ray]'")
    from modelmill.testing.ray_cluster import RayCluster, ray_program

    need(ray_program() is not None, "the 'ray' program is not beside this Python", "pip install 'modelmill[ray]'")
    with RayCluster(tmp_path_factory.mktemp("ray-cluster")) as cluster, cluster.driver_env():
        yield cluster
