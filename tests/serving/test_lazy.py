"""Lazy loading: with ``[serving] lazy`` a model loads on its first request (or a repository load), least
recently used models are unloaded under ``max_models_in_memory`` and ``memory_budget``, and readiness says
per model why it is not ready."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
from starlette.testclient import TestClient

from modelmill.errors import ConfigError
from modelmill.serving import FunctionModel, ModelServer, ServerConfig, StaticSource, create_app
from modelmill.serving.server import parse_bytes


class CountingSource(StaticSource):
    """A StaticSource that counts loads per model and can be told to fail one."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.loads: dict[str, int] = {}
        self.broken: set[str] = set()

    def load(self, model_version: Any) -> Any:
        self.loads[model_version.name] = self.loads.get(model_version.name, 0) + 1
        if model_version.name in self.broken:
            raise RuntimeError("the artifact is corrupt")
        return super().load(model_version)


def _times(k: float) -> Any:
    return lambda X: X[:, 0] * k


def _models(size: int = 0) -> list[FunctionModel]:
    return [FunctionModel(n, 1, ["x"], _times(k), options={"artifact_bytes": size})
            for k, n in enumerate(["a", "b", "c", "d"], start=1)]


def _server(source: StaticSource, **cfg: Any) -> ModelServer:
    return ModelServer(source, config=ServerConfig(models=["a", "b", "c", "d"], log_predictions=False,
                                                   cache=False, lazy=True, **cfg))


def _infer(c: TestClient, name: str) -> Any:
    return c.post(f"/v2/models/{name}/infer", json={"inputs": [{"name": "x", "datatype": "FP64", "shape": [1],
                                                                "data": [2.0]}]})


@pytest.fixture
def source() -> CountingSource:
    return CountingSource(_models())


def test_nothing_loads_before_its_first_request(source: CountingSource) -> None:
    with TestClient(create_app(_server(source))) as c:
        assert source.loads == {}
        assert c.get("/v2/health/ready").status_code == 200  # loadable models do not hold readiness back
        r = c.get("/v2/models/b/ready")
        assert r.status_code == 400 and r.json()["ready"] is False and "not loaded yet" in r.json()["reason"]
        index = {e["name"]: e for e in c.post("/v2/repository/index").json()}
        assert index["b"]["state"] == "UNAVAILABLE" and "first request" in index["b"]["reason"]
        assert "not loaded yet" in c.get("/v2/models/b").json()["error"]
        r = _infer(c, "b")
        assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [4.0]
        assert source.loads == {"b": 1}
        assert c.get("/v2/models/b/ready").json() == {"name": "b", "ready": True}
        for _ in range(3):
            assert _infer(c, "b").status_code == 200
        assert source.loads == {"b": 1}
        r = c.post("/v1/models/c/predict", json={"entities": {}, "features": {"x": 1.0}})  # the feature route too
        assert r.status_code == 200 and r.json()["prediction"] == 3.0
        assert _infer(c, "nope").status_code == 404


def test_concurrent_first_requests_load_once(source: CountingSource) -> None:
    server = _server(source)

    async def main() -> list[Any]:
        await server.start()
        try:
            await asyncio.gather(*(server.ensure_loaded("a") for _ in range(10)))
            return [await server.predict("a", np.array([[3.0]])) for _ in range(2)]
        finally:
            await server.stop()

    preds = asyncio.run(main())
    assert [p.output.tolist() for p in preds] == [[3.0], [3.0]]
    assert source.loads == {"a": 1}


def test_least_recently_used_unloads_over_max_models(source: CountingSource) -> None:
    server = _server(source, max_models_in_memory=2)
    with TestClient(create_app(server)) as c:
        for name in ("a", "b", "a", "c"):  # b is now the least recently used of a, b
            assert _infer(c, name).status_code == 200
        assert server.model_names() == ["a", "c"] and server.evictions == 1
        assert _infer(c, "b").status_code == 200  # loads again; a (used before c) goes
        assert server.model_names() == ["b", "c"]
        assert source.loads == {"a": 1, "b": 2, "c": 1}
        r = c.get("/v2/models/a/ready")
        assert r.status_code == 400 and "not loaded yet" in r.json()["reason"]


def test_memory_budget_counts_the_artifacts() -> None:
    source = CountingSource(_models(size=600))
    server = _server(source, memory_budget="1kB")
    with TestClient(create_app(server)) as c:
        for name in ("a", "b", "c"):
            assert _infer(c, name).status_code == 200
            assert server.model_names() == [name]  # 2 x 600 bytes is over 1000
        assert server.evictions == 2


def test_a_model_that_fails_to_load_says_why_and_is_not_retried_at_once(source: CountingSource) -> None:
    source.broken.add("d")
    with TestClient(create_app(_server(source))) as c:
        for _ in range(3):
            r = _infer(c, "d")
            assert r.status_code == 422 and "the artifact is corrupt" in r.json()["error"]
        assert source.loads == {"d": 1}  # the next 5 s answer the same error without loading again
        r = c.get("/v2/models/d/ready")
        assert r.status_code == 400 and "the artifact is corrupt" in r.json()["reason"]
        assert _infer(c, "a").status_code == 200  # the others serve


def test_repository_load_loads_a_lazy_model_now(source: CountingSource) -> None:
    server = _server(source)

    async def main() -> list[str]:
        await server.start()
        try:
            await server.load_model("c")
            return server.model_names()
        finally:
            await server.stop()

    assert asyncio.run(main()) == ["c"] and source.loads == {"c": 1}


def test_limits_are_checked() -> None:
    assert parse_bytes("2GiB", "k") == 2 * 2**30 and parse_bytes("512 MB", "k") == 512 * 10**6
    assert parse_bytes(1024, "k") == 1024
    with pytest.raises(ConfigError, match=r"serving\.memory_budget"):
        ServerConfig(memory_budget="lots")
    with pytest.raises(ConfigError, match=r"serving\.memory_budget"):
        ServerConfig(memory_budget=-1)
    with pytest.raises(ConfigError, match=r"serving\.max_models_in_memory"):
        ServerConfig(max_models_in_memory=-2)
    with pytest.raises(ConfigError, match=r"serving\.lazy"):
        ServerConfig(lazy="yes")  # type: ignore[arg-type]


def test_section_reads_the_keys() -> None:
    cfg = ServerConfig.from_section({"lazy": True, "max_models_in_memory": 3, "memory_budget": "1GB"})
    assert (cfg.lazy, cfg.max_models_in_memory, cfg.memory_budget) == (True, 3, 10**9)

