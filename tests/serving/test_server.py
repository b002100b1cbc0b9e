"""The server's state: routes from the database, sticky A/B splits, hot reload, config validation."""

from __future__ import annotations

import asyncio
from collections import Counter

import numpy as np
import pytest

from modelmill.errors import ConfigError, NotFoundError
from modelmill.project import Project
from modelmill.serving import FunctionModel, ModelServer, RouteTable, ServerConfig, StaticSource, Variant


def _source() -> StaticSource:
    models = [FunctionModel("m", v, ["x"], lambda X, v=v: X[:, 0] * 0 + v) for v in (1, 2, 3)]
    return StaticSource(models, aliases={"m@production": 1, "m@canary": 2})


def test_weighted_sticky_routes_and_hot_reload(project: Project) -> None:
    routes = RouteTable(project)
    routes.set("m", [Variant("champion", "production", 0.7), Variant("canary", "canary", 0.3)])
    server = ModelServer(_source(), config=ServerConfig(log_predictions=False, cache=False), routes=routes)
    X = np.array([[1.0]])

    async def main() -> tuple[Counter[str], dict[str, set[int]], Counter[str]]:
        await server.start()
        try:
            split: Counter[str] = Counter()
            sticky: dict[str, set[int]] = {}
            for i in range(2000):
                p = await server.predict("m", X, routing_key=f"user-{i % 500}")
                split[p.variant] += 1
                sticky.setdefault(f"user-{i % 500}", set()).add(p.version)
                assert p.version == {"champion": 1, "canary": 2}[p.variant]
            routes.set("m", [Variant("champion", 3, 1.0)])  # a new version, straight from the database
            await server.reload()
            after: Counter[str] = Counter()
            for i in range(50):
                p = await server.predict("m", X, routing_key=f"user-{i}")
                after[f"{p.variant}:{p.version}"] += 1
            return split, sticky, after
        finally:
            await server.stop()

    split, sticky, after = asyncio.run(main())
    assert split["canary"] / 2000 == pytest.approx(0.3, abs=0.06)
    assert all(len(v) == 1 for v in sticky.values()), "a routing key moved between variants"
    assert after == Counter({"champion:3": 50})


def test_background_poll_picks_up_alias_changes(project: Project) -> None:
    source = _source()
    server = ModelServer(source, config=ServerConfig(models=["m@production"], reload_interval_s=0.05,
                                                     log_predictions=False))

    async def main() -> list[int]:
        await server.start()
        try:
            seen = [(await server.predict("m", np.array([[0.0]]))).version]
            source.set_alias("m", "production", 3)
            for _ in range(100):
                await asyncio.sleep(0.02)
                if server.deployed("m").version == 3:
                    break
            seen.append((await server.predict("m", np.array([[0.0]]))).version)
            return seen
        finally:
            await server.stop()

    assert asyncio.run(main()) == [1, 3]


def test_a_broken_alias_keeps_the_last_good_version(project: Project) -> None:
    source = _source()
    server = ModelServer(source, config=ServerConfig(models=["m@production"], log_predictions=False))

    async def main() -> tuple[int, str | None]:
        await server.start()
        try:
            source.set_alias("m", "production", 99)  # points at a version that does not exist
            await server.reload()
            return (await server.predict("m", np.array([[0.0]]))).version, server.last_error
        finally:
            await server.stop()

    version, error = asyncio.run(main())
    assert version == 1
    assert error is not None and "m@99" in error


def test_unknown_model_and_version_are_not_found() -> None:
    server = ModelServer(_source(), config=ServerConfig(models=["m@production"], log_predictions=False))

    async def main() -> None:
        await server.start()
        try:
            with pytest.raises(NotFoundError, match="served models are: m"):
                await server.predict("zzz", np.array([[0.0]]))
            with pytest.raises(NotFoundError, match="versions being served: 1"):
                await server.predict("m", np.array([[0.0]]), version=2)
        finally:
            await server.stop()

    asyncio.run(main())


@pytest.mark.parametrize(("section", "key"), [
    ({"max_batch_size": 0}, "serving.max_batch_size"),
    ({"max_wait_us": -1}, "serving.max_wait_us"),
    ({"max_body_bytes": "big"}, "serving.max_body_bytes"),
    ({"request_timeout_s": 0}, "serving.request_timeout_s"),
])
def test_config_errors_name_the_setting(section: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        ServerConfig.from_section(section)
    assert info.value.key == key


def test_config_from_section_with_overrides() -> None:
    cfg = ServerConfig.from_section({"max_batch_size": 8, "request_timeout_s": 2.5, "models": ["a@production"]},
                                    max_wait_us=100, models=None)
    assert (cfg.max_batch_size, cfg.max_wait_us, cfg.limits.request_timeout_s) == (8, 100, 2.5)
    assert list(cfg.models) == ["a@production"]
