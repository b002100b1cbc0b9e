"""Redis hung (SIGSTOP), not stopped: it accepts connections and never answers, so every call would wait out
its timeout. Health checks and OIP inference, which need no Redis, keep their pace; the prediction cache is
bypassed; the feature route answers a 503 naming Redis at once; and all of it recovers by itself after SIGCONT.
A Redis of the test's own, never the shared one."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from modelmill.errors import BackendUnavailable
from modelmill.serving import PredictionCache
from modelmill.store import RedisKV
from tests.reliability.conftest import RedisServer, wait_for
from tests.reliability.test_redis_outage import make_project
from tests.serving.conftest import COLUMNS


@contextmanager
def paused(server: RedisServer) -> Iterator[None]:
    """SIGSTOP: the port still accepts connections (the kernel does that), but nothing answers."""
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)


def answers(kv: RedisKV, key: str) -> bool:
    try:
        kv.get(key)
        return True
    except BackendUnavailable:
        return False


def test_a_hung_redis_is_asked_twice_then_not_until_it_answers_a_ping(redis_server: RedisServer) -> None:
    kv = RedisKV(f"{redis_server.url}/0", socket_timeout=0.1, retry_after_s=1.0)
    kv.set("a", b"1")
    reasons: list[str] = []
    with paused(redis_server):
        for _ in range(5):
            with pytest.raises(BackendUnavailable) as info:
                kv.get("a")
            reasons.append(info.value.reason)
    # two calls reached Redis and timed out (each once: redis-py's own retries are off); the rest never went
    assert [r.startswith("Timeout") for r in reasons] == [True, True, False, False, False], reasons
    assert all("refused until it answers a PING" in r for r in reasons[2:])
    assert kv.breaker.opened == 1 and kv.breaker.is_open
    wait_for(lambda: answers(kv, "a"), 10, "Redis answering again")
    assert kv.get("a") == b"1" and not kv.breaker.is_open and kv.breaker.closed == 1
    kv.close()


def test_the_prediction_cache_skips_a_hung_redis_and_uses_it_again_after(redis_server: RedisServer) -> None:
    kv = RedisKV(f"{redis_server.url}/1", socket_timeout=0.5, retry_after_s=0.2)
    cache = PredictionCache(shared=kv, timeout_s=0.05)
    keys = [cache.key("m", 1, np.array([[float(i)]])) for i in range(12)]
    cache.put(keys[0], np.array([0.5]))
    assert cache.flush()
    cache.clear()

    async def lookups(ks: list[str]) -> list[Any]:
        return [await cache.lookup(k) for k in ks]

    assert [None if v is None else v.tolist() for v in asyncio.run(lookups(keys[:1]))] == [[0.5]]  # from Redis
    cache.clear()
    with paused(redis_server):
        assert asyncio.run(lookups(keys)) == [None] * 12  # misses, never errors
        # the first two reads gave up after timeout_s and opened the breaker; the other ten were not sent
        assert kv.breaker.opened == 1 and cache.shared_skipped == 12
        cache.put(keys[1], np.array([0.25]))  # returns at once; the write is dropped, not waited for
        assert cache.flush() and cache.writes_dropped == 1
    wait_for(lambda: asyncio.run(lookups(keys[:1]))[0] is not None, 10, "the shared cache read again")
    assert kv.breaker.closed == 1 and not kv.breaker.is_open
    cache.put(keys[2], np.array([0.75]))
    assert cache.flush() and cache.writes_dropped == 1 and kv.get(keys[2]) is not None
    cache.close()
    kv.close()


class Client(threading.Thread):
    """One connection sending the same kind of request back to back; every answer is kept with its time."""

    def __init__(self, url: str, method: str, path: str, body: Any = None, *, max_seconds: float = 40.0) -> None:
        super().__init__(daemon=True)
        self.url, self.method, self.path, self.body = url, method, path, body
        self.max_seconds = max_seconds
        self.results: list[tuple[float, int, Any]] = []  # (time answered, status, JSON body or None)
        self.halt = threading.Event()

    def run(self) -> None:
        rng = np.random.default_rng(0)
        deadline = time.monotonic() + self.max_seconds
        with httpx.Client(base_url=self.url, timeout=20) as client:
            while not self.halt.is_set() and time.monotonic() < deadline:
                body = self.body(rng) if callable(self.body) else self.body
                r = client.request(self.method, self.path, json=body)
                self.results.append((time.monotonic(), r.status_code, r.json() if r.content else None))

    def between(self, start: float, end: float) -> list[tuple[float, int, Any]]:
        return [r for r in self.results if start <= r[0] < end]


def infer_body(rng: np.random.Generator) -> dict[str, Any]:
    # Fresh inputs: most are in-process cache misses, so each would read the shared (Redis) cache tier.
    return {"inputs": [{"name": "input", "shape": [1, len(COLUMNS)], "datatype": "FP64",
                        "data": [rng.normal(size=len(COLUMNS)).tolist()]}]}


def predict_body(rng: np.random.Generator) -> dict[str, Any]:
    return {"entities": {"user_id": int(rng.integers(100))}, "features": {"amount": 100.0}}


def breaker_events(lines: list[str], port: int, db: str) -> list[str]:
    """``open``/``closed`` for each line the breaker of ``redis://127.0.0.1:{port}/{db}`` logged, in order."""
    name = f"redis at redis://127.0.0.1:{port}/{db} "
    return ["open" if "circuit open" in line else "closed" for line in lines
            if name in line and ("circuit open" in line or "circuit closed" in line)]


@pytest.mark.slow  # 8 to 21 s here, most of it starting the server
def test_a_hung_redis_stalls_nothing_that_does_not_need_it(tmp_path: Path, redis_server: RedisServer,
                                                           serve: Any) -> None:
    root = make_project(tmp_path / "proj", redis_server.url)
    proc = serve(root, "--model", "clf@production", "--model", "risk@production")
    clients = {"live": Client(proc.url, "GET", "/v2/health/live"),
               "infer": Client(proc.url, "POST", "/v2/models/clf/infer", infer_body),
               "predict": Client(proc.url, "POST", "/v1/models/risk/predict", predict_body)}
    assert redis_server.proc is not None
    pid = redis_server.proc.pid
    for c in clients.values():
        c.start()
    paused = False
    try:
        wait_for(lambda: all(len(c.results) > 20 for c in clients.values()), 15, "every client answered")
        base_start = time.monotonic()
        time.sleep(2.0)
        pause_start = time.monotonic()  # the baseline is the same length of time as the pause, just before it
        os.kill(pid, signal.SIGSTOP)
        paused = True
        time.sleep(pause_start - base_start)
        pause_end = time.monotonic()
        log_at_resume = len(proc.log.read_text().splitlines())
        os.kill(pid, signal.SIGCONT)
        paused = False
        wait_for(lambda: any(r[1] == 200 for r in clients["predict"].between(pause_end, float("inf"))), 15,
                 "feature-backed predictions answering again")
        recovered = time.monotonic()
        wait_for(lambda: len(clients["predict"].between(recovered, float("inf"))) > 20, 15, "more predictions")
        # the cache's breaker closes when its background PING is answered (once a second)
        wait_for(lambda: breaker_events(proc.log.read_text().splitlines()[log_at_resume:], redis_server.port,
                                        "1")[-1:] == ["closed"], 15, "the cache's breaker closing")
    finally:
        if paused:
            os.kill(pid, signal.SIGCONT)
        for c in clients.values():
            c.halt.set()
        for c in clients.values():
            c.join(timeout=30)

    def counts(name: str) -> tuple[int, int]:
        c = clients[name]
        return len(c.between(base_start, pause_start)), len(c.between(pause_start, pause_end))

    # health checks and OIP inference go on at (about) their own pace: on main, 5 of ~730 and 15 of ~2,200
    for name in ("live", "infer"):
        before, during = counts(name)
        assert before > 50 and during >= 0.4 * before, (name, before, during)
    assert {r[1] for r in clients["infer"].results} == {200}  # the cache tier is skipped, never fails a request
    assert {r[1] for r in clients["live"].results} == {200}

    # the feature route: 200 before, a 503 naming Redis while it hangs, 200 again after SIGCONT
    predict = clients["predict"]
    assert {r[1] for r in predict.between(0, pause_start)} == {200}
    outage = predict.between(pause_start, pause_end)
    refused = [r for r in outage if r[1] == 503]
    assert {r[1] for r in outage} <= {200, 503} and len(refused) > 10, [r[1] for r in outage]
    assert all("redis" in r[2]["error"] and str(redis_server.port) in r[2]["error"] for r in refused)
    assert {r[1] for r in predict.between(recovered, float("inf"))} == {200}

    # the breakers of both Redis databases (features /0, cache /1) were open when Redis resumed, and closed
    # after SIGCONT; no restart. (A cache read slower than its 50 ms deadline on a busy machine may open the
    # cache's breaker before the pause too; it closes again at the next trial.)
    lines = proc.log.read_text().splitlines()
    for db in ("0", "1"):
        until_resume = breaker_events(lines[:log_at_resume], redis_server.port, db)
        after = breaker_events(lines[log_at_resume:], redis_server.port, db)
        assert until_resume and until_resume[-1] == "open", (db, until_resume)
        assert after and after[-1] == "closed", (db, after, lines[-20:])
    assert proc.proc.poll() is None
    assert len(proc.log.read_text().splitlines()) < 50, proc.log.read_text()[-3000:]  # no error storm
