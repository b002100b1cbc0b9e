"""The prediction cache: LRU, shared through real Redis, keyed by version so a swap never serves stale answers."""

from __future__ import annotations

import asyncio

import numpy as np

from modelmill.serving import FunctionModel, ModelServer, PredictionCache, ServerConfig, StaticSource
from modelmill.store.kv import RedisKV
from modelmill.testing import watch_expiry


def test_lru_evicts_the_least_recently_used() -> None:
    cache = PredictionCache(max_items=2)
    keys = [cache.key("m", 1, np.array([[float(i)]])) for i in range(3)]
    cache.put(keys[0], np.array([0.0]))
    cache.put(keys[1], np.array([1.0]))
    assert cache.get(keys[0]) is not None  # 0 is now the most recent
    cache.put(keys[2], np.array([2.0]))
    assert cache.get(keys[1]) is None
    assert cache.get(keys[0]) is not None and cache.get(keys[2]) is not None
    assert (cache.hits, cache.misses) == (3, 1)


def test_keys_depend_on_model_version_values_and_shape() -> None:
    X = np.array([[1.0, 2.0]])
    k = PredictionCache.key
    assert k("m", 1, X) == k("m", 1, X.copy())
    assert len({k("m", 1, X), k("m", 2, X), k("n", 1, X), k("m", 1, X + 1e-12), k("m", 1, X.reshape(2, 1))}) == 5


def test_shared_redis_cache_serves_other_workers_and_expires(redis_url: str, redis_prefix: str) -> None:
    kv_a, kv_b = RedisKV(redis_url, prefix=redis_prefix), RedisKV(redis_url, prefix=redis_prefix)
    seen: list[bool] = []
    a = PredictionCache(shared=kv_a, ttl_s=1.0)
    key = a.key("m", 1, np.array([[3.0]]))

    def write() -> None:
        a.put(key, np.array([0.75]))
        assert a.flush()  # the shared write is made by a background thread

    def in_other_worker() -> bool:
        # another process' cache, through Redis; a fresh one each time, as its own LRU would keep the value
        got = PredictionCache(shared=kv_b, on_result=seen.append).get(key)
        assert got is None or got.tolist() == [0.75]
        return got is not None

    try:
        # served to the other worker until the TTL can have run out, then expired in Redis (see tests/expiry.py)
        reads = watch_expiry(write, in_other_worker, ttl_s=1.0)
        assert seen[-len(reads):] == reads  # each read counted as the hit or miss it was
    finally:
        kv_a.close()
        kv_b.close()


def test_server_answers_repeats_from_cache_but_never_across_versions() -> None:
    calls: list[int] = []

    def make(version: int) -> FunctionModel:
        def predict(X: np.ndarray) -> np.ndarray:
            calls.append(version)
            return X[:, 0] * version
        return FunctionModel("m", version, ["x"], predict)

    source = StaticSource([make(1), make(2)], aliases={"m@production": 1})
    server = ModelServer(source, config=ServerConfig(models=["m@production"], log_predictions=False))
    X = np.array([[2.0]])

    async def main() -> list[tuple[float, bool, int]]:
        await server.start()
        out = []
        try:
            for _ in range(2):
                p = await server.predict("m", X)
                out.append((float(p.output[0]), p.cached, p.version))
            source.set_alias("m", "production", 2)
            await server.reload()
            for _ in range(2):
                p = await server.predict("m", X)
                out.append((float(p.output[0]), p.cached, p.version))
        finally:
            await server.stop()
        return out

    assert asyncio.run(main()) == [(2.0, False, 1), (2.0, True, 1), (4.0, False, 2), (4.0, True, 2)]
    assert calls == [1, 2]
    assert server.cache is not None and (server.cache.hits, server.cache.misses) == (2, 2)
