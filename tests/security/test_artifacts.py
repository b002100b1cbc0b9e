"""Only artifacts whose sha256 matches are loaded, and no artifact path leaves the store, end to end.

The byte-level checks live beside the code (tests/store/test_artifacts.py: one changed byte, '..' and
absolute paths; tests/registry/test_registry.py: a changed byte refuses ``Registry.load``). These add
what an attacker with write access to the artifact folder, or to one metadata row, would try, and
what the model server does when it meets such a version.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from modelmill.errors import ArtifactIntegrityError, UnsafePathError
from modelmill.project import Project
from modelmill.registry import Registry, clear_cache
from modelmill.serving import ModelServer, ServerConfig
from modelmill.store.tables import artifacts
from modelmill.store.tables.registry import model_versions
from tests.serving.conftest import N_FEATURES, make_project, open_project_at


@pytest.fixture
def project(tmp_path: Path) -> Project:
    p = open_project_at(make_project(tmp_path / "proj"))  # clf v1 (production), v2
    clear_cache()
    yield p  # type: ignore[misc]
    p.close()
    clear_cache()


def _file(project: Project, path: str) -> Path:
    return Path(project.settings.artifacts) / path


def test_replacing_the_file_and_its_artifact_record_still_refuses(project: Project) -> None:
    registry = Registry(project)
    mv = registry.resolve("clf@2")
    other = _file(project, registry.resolve("clf@1").artifact_path).read_bytes()
    _file(project, mv.artifact_path).write_bytes(other)  # a valid model, but not the registered one
    with project.db.begin() as conn:  # and the attacker rewrites the store's own digest too
        conn.execute(artifacts.update().where(artifacts.c.path == mv.artifact_path)
                     .values(sha256=hashlib.sha256(other).hexdigest()))
    with pytest.raises(ArtifactIntegrityError, match="clf@2 refuses to load"):
        registry.load(mv)  # the version's own recorded sha256 is what counts


@pytest.mark.parametrize("path", ["../../outside.pkl", "/etc/passwd", "models/../../x", "..", "a/../../b",
                                  "C:/windows/x", "models\\..\\x"])
def test_a_version_pointing_outside_the_store_is_refused(project: Project, path: str) -> None:
    with project.db.begin() as conn:
        conn.execute(model_versions.update().where(model_versions.c.name == "clf", model_versions.c.version == 2)
                     .values(artifact_path=path))
    with pytest.raises(UnsafePathError):
        Registry(project).load("clf@2")


def test_the_server_never_serves_a_tampered_version(project: Project) -> None:
    registry = Registry(project)
    mv2 = registry.resolve("clf@2")
    data = bytearray(_file(project, mv2.artifact_path).read_bytes())
    data[len(data) // 2] ^= 0x01
    _file(project, mv2.artifact_path).write_bytes(bytes(data))
    X = np.zeros((1, N_FEATURES))

    async def main() -> tuple[int, int, str | None, bool]:
        server = ModelServer(registry, config=ServerConfig(models=["clf@production"], log_predictions=False,
                                                           reload_interval_s=0.05))
        await server.start()
        try:
            before = (await server.predict("clf", X)).version
            registry.set_alias("clf", "production", 2, actor="attacker")  # move traffic to the bad version
            await server.reload()
            after = (await server.predict("clf", X)).version
            return before, after, server.last_error, server.ready
        finally:
            await server.stop()

    before, after, error, ready = asyncio.run(main())
    assert (before, after) == (1, 1)  # kept serving the verified version
    assert error is not None and "tampered" in error and ready

    async def cold() -> tuple[bool, list[str]]:
        server = ModelServer(registry, config=ServerConfig(models=["clf@production"], log_predictions=False))
        await server.start()
        try:
            return server.ready, server.model_names()
        finally:
            await server.stop()

    assert asyncio.run(cold()) == (False, [])  # a fresh server refuses to serve it at all
    with project.db.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(model_versions)).scalar() == 2


def test_a_route_or_alias_to_a_tampered_version_is_refused_up_front(project: Project) -> None:
    """PUT /v1/routes and PUT .../aliases used to answer 200 for a version whose artifact fails its checksum,
    while every server silently kept the old version: now 409, with the reason, and nothing is stored."""
    from starlette.testclient import TestClient

    from modelmill.security import Authenticator, TokenStore
    from modelmill.serving import RouteTable, build_server, create_app

    mv2 = Registry(project).resolve("clf@2")
    data = bytearray(_file(project, mv2.artifact_path).read_bytes())
    data[len(data) // 2] ^= 0x01
    _file(project, mv2.artifact_path).write_bytes(bytes(data))
    clear_cache()
    store = TokenStore(project)
    headers = {"Authorization": f"Bearer {store.create('admin')[1]}"}
    server = build_server(project, ServerConfig(models=["clf@production"], log_predictions=False))
    with TestClient(create_app(server, auth=Authenticator(store)), headers=headers) as client:
        r = client.put("/v1/routes/clf", json={"variants": [{"name": "canary", "version": 2, "weight": 10},
                                                            {"name": "stable", "version": 1, "weight": 90}]})
        assert r.status_code == 409 and "clf@2 refuses to load" in r.json()["error"], r.text
        r = client.put("/v1/models/clf/aliases/production", json={"version": 2})
        assert r.status_code == 409 and "refuses to load" in r.json()["error"], r.text
        assert client.post("/v2/models/clf/infer", json={"inputs": [
            {"name": f"f{i}", "shape": [1], "datatype": "FP64", "data": [0.0]} for i in range(N_FEATURES)]}
        ).json()["model_version"] == "1"
    assert RouteTable(project).all() == {}
    assert Registry(project).aliases("clf") == {"production": 1}
