"""One contract suite, run over every key-value backend (SQLite, Redis, in-process LRU): modelmill.testing.check_kv."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from modelmill.errors import BackendUnavailable
from modelmill.store import KeyValue, MemoryKV, RedisKV, SQLiteKV, open_kv
from modelmill.testing import KV_CHECKS, check_kv


@pytest.fixture(params=["sqlite", "redis", "memory"])
def make_kv(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], KeyValue]:
    """A factory of new, empty stores of one backend (Redis: under the test's prefix, deleted afterwards)."""
    if request.param == "sqlite":
        return lambda: SQLiteKV(tmp_path / f"kv-{uuid.uuid4().hex[:8]}.db")
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        prefix = request.getfixturevalue("redis_prefix")
        return lambda: RedisKV(url, prefix=f"{prefix}{uuid.uuid4().hex[:8]}:")
    return MemoryKV


@pytest.mark.parametrize("check", list(KV_CHECKS))
def test_kv_contract(make_kv: Callable[[], KeyValue], check: str) -> None:
    check_kv(make_kv, checks=[check])


def test_check_kv_names_the_broken_promise() -> None:
    class Stale(MemoryKV):
        def set(self, key: str, value: bytes, *, ttl: float | None = None) -> None:
            if self.get(key) is None:  # never overwrites
                super().set(key, value, ttl=ttl)

    with pytest.raises(AssertionError, match=r"check_kv\[overwrites\] broke its promise: get gives None for a "
                                             r"missing key and the last value set\n.*b'1'"):
        check_kv(Stale)
    with pytest.raises(ValueError, match="unknown checks"):
        check_kv(MemoryKV, checks=["nope"])


def test_unreachable_redis_is_backend_unavailable() -> None:
    kv = RedisKV("redis://127.0.0.1:1/0", socket_timeout=0.5)
    with pytest.raises(BackendUnavailable) as info:
        kv.get("x")
    assert info.value.backend == "redis" and "127.0.0.1:1" in info.value.url


def test_lru_evicts_least_recently_used() -> None:
    lru = MemoryKV(max_items=3)
    lru.set_many({"a": b"1", "b": b"2", "c": b"3"})
    lru.get("a")  # a is now most recent
    lru.set("d", b"4")
    assert lru.mget(["a", "b", "c", "d"]) == [b"1", None, b"3", b"4"]


def test_open_kv_by_url(tmp_path: Path) -> None:
    assert isinstance(open_kv(f"sqlite:///{tmp_path}/x.db"), SQLiteKV)
    assert isinstance(open_kv("redis://127.0.0.1:6379/0"), RedisKV)
    assert isinstance(open_kv("memory://"), MemoryKV)
