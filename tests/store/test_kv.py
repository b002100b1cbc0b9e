"""One contract suite, run over every key-value backend (SQLite, Redis, in-process LRU)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.expiry import watch_expiry

from modelmill.errors import BackendUnavailable
from modelmill.store import KeyValue, MemoryKV, RedisKV, SQLiteKV, open_kv


@pytest.fixture(params=["sqlite", "redis", "memory"])
def kv(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KeyValue]:
    store: KeyValue
    if request.param == "sqlite":
        store = SQLiteKV(tmp_path / "kv.db")
    elif request.param == "redis":
        url = request.getfixturevalue("redis_url")
        store = RedisKV(url, prefix=request.getfixturevalue("redis_prefix"))
    else:
        store = MemoryKV()
    yield store
    store.close()


def test_get_set_overwrite(kv: KeyValue) -> None:
    assert kv.get("a") is None
    kv.set("a", b"1")
    kv.set("a", b"2")
    assert kv.get("a") == b"2"


def test_mget_keeps_order_and_marks_missing(kv: KeyValue) -> None:
    kv.set_many({f"k{i}": str(i).encode() for i in range(1200)})  # past SQLite's parameter chunk
    keys = ["k5", "nope", "k1199", "k0"]
    assert kv.mget(keys) == [b"5", None, b"1199", b"0"]
    assert kv.mget([]) == []
    assert len([v for v in kv.mget([f"k{i}" for i in range(1200)]) if v is not None]) == 1200


def test_ttl_expires(kv: KeyValue) -> None:
    kv.set("long", b"y", ttl=600)

    def present() -> bool:
        value = kv.get("short")
        assert value in (None, b"x")
        return value is not None

    # present until the TTL can have run out, then gone (an ordering, see tests/expiry.py)
    watch_expiry(lambda: kv.set("short", b"x", ttl=1.0), present, ttl_s=1.0)
    assert kv.mget(["short", "long"]) == [None, b"y"]
    assert list(kv.scan("short")) == []


def test_delete_counts_existing(kv: KeyValue) -> None:
    kv.set_many({"d1": b"1", "d2": b"2"})
    assert kv.delete("d1", "d2", "d3") == 2
    assert kv.get("d1") is None and kv.delete() == 0


def test_scan_by_prefix_treats_glob_characters_literally(kv: KeyValue) -> None:
    kv.set_many({"user:1": b"a", "user:2": b"b", "user*:x": b"c", "item:1": b"d", "use": b"e"})
    assert sorted(kv.scan("user:")) == ["user:1", "user:2"]
    assert sorted(kv.scan("user*")) == ["user*:x"]
    assert len(list(kv.scan(""))) == 5


def test_binary_values_round_trip(kv: KeyValue) -> None:
    blob = bytes(range(256)) * 4
    kv.set("bin", blob)
    assert kv.get("bin") == blob


def test_concurrent_writers_from_threads(kv: KeyValue) -> None:
    def work(t: int) -> None:
        for i in range(100):
            kv.set(f"t{t}:{i}", f"{t}-{i}".encode())

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(list(kv.scan("t"))) == 400
    assert kv.get("t3:99") == b"3-99"


def test_ping_reports_round_trip(kv: KeyValue) -> None:
    assert 0 <= kv.ping() < 5


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
