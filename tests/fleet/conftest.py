"""Fleet fixtures: three ``modelmill serve`` hosts in network namespaces behind HAProxy, on a throwaway
PostgreSQL and Redis bound to the bridge address (the machinery is :mod:`tests.fleet.netfleet`). The offline
store (the prediction log, the labels) is on a throwaway moto S3 server on the bridge, or with
``MODELMILL_FLEET_S3=0`` the shared project folder.

One fleet serves the whole module (starting it takes about half a minute on two cores); each test uses its own
model, registered before the hosts start, so the tests do not read each other's traffic. Under
``MODELMILL_REQUIRE_SERVICES=1`` a missing program (haproxy, initdb, redis-server) or no root fails the test.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from modelmill.monitoring import ReferenceStore
from modelmill.monitoring.reference import ReferenceProfile
from modelmill.project import Project
from modelmill.registry import Registry, clear_cache
from modelmill.serving import RouteTable, Variant
from tests.conftest import need
from tests.fleet.candidate import FlakyClassifier
from tests.fleet.netfleet import Fleet, missing_tools
from tests.serving.conftest import COLUMNS, open_project_at, signature, train_lr

__all__ = ["fleet", "register_models"]


def register_models(project: Project) -> None:
    """The fleet tests' models, the same in a fleet's project and a single host's.

    ``clf``: v1 (production, route ``stable``), v2, v3 (fails on about 10% of inputs: the rollout test's
    candidate). ``alias``: v1 (production), v2 (the route test switches the alias). ``mon``: v1 (production,
    with a reference profile, so monitoring computes drift as well as the label metrics).
    """
    reg = Registry(project)
    reg.register("clf", train_lr(0), flavor="sklearn", signature=signature())
    reg.register("clf", train_lr(1), flavor="sklearn", signature=signature())
    reg.register("clf", FlakyClassifier(train_lr(1)), flavor="sklearn", signature=signature())
    reg.set_alias("clf", "production", 1)
    RouteTable(project).set("clf", [Variant("stable", "production", 1.0)])
    reg.register("alias", train_lr(2), flavor="sklearn", signature=signature())
    reg.register("alias", train_lr(3), flavor="sklearn", signature=signature())
    reg.set_alias("alias", "production", 1)
    reg.register("mon", train_lr(4), flavor="sklearn", signature=signature())
    reg.set_alias("mon", "production", 1)
    rng = np.random.default_rng(4)
    ReferenceStore(project).save("mon", 1, ReferenceProfile.from_data(
        {c: rng.normal(size=2000) for c in COLUMNS}))


def setup_fleet(root: Path) -> None:
    """Register the models every fleet host serves in the shared project (these tests, benchmarks/fleet.py)."""
    clear_cache()
    project = open_project_at(root)
    try:
        register_models(project)
    finally:
        project.close()
    clear_cache()


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    """Three hosts behind HAProxy on shared PostgreSQL, Redis and S3 (or a shared project folder)."""
    missing = missing_tools()
    need(missing is None, str(missing))
    s3 = os.environ.get("MODELMILL_FLEET_S3", "1") != "0"
    if s3:
        need(importlib.util.find_spec("s3fs") is not None, "s3fs is not installed", "run scripts/moto.sh install")
    root = Path(tempfile.mkdtemp(prefix="modelmill-fleet-")) / "proj"
    fleet = Fleet(root, hosts=3, s3=s3)
    try:
        try:
            fleet.start(setup_fleet)
        except RuntimeError as exc:
            if not str(exc).startswith("scripts/moto.sh"):
                raise
            need(False, f"moto (S3 API server) could not start: {exc}", "run scripts/moto.sh")
        yield fleet
    finally:
        fleet.close()
        shutil.rmtree(root.parent, ignore_errors=True)
