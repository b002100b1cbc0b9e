"""Redis stopped under load: serving keeps answering, feature-backed predictions answer a clear 503, no error
storm, and everything recovers by itself when Redis returns (a Redis of the test's own, never the shared one)."""

from __future__ import annotations

import datetime as dt
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pytest
import redis

from modelmill.features import Entity, FeatureService, FeatureStore, FeatureView, Field
from modelmill.registry import Field as SigField
from modelmill.registry import Registry, Signature, clear_cache
from tests.reliability.conftest import RedisServer, wait_for
from tests.serving.conftest import COLUMNS, open_project_at, signature, train_lr

pytestmark = pytest.mark.slow

T0 = dt.datetime(2024, 3, 1, tzinfo=dt.UTC)
RISK_COLUMNS = ["profile__age", "score", "amount"]


def make_project(root: Path, redis_url: str) -> Path:
    """``clf`` (plain OIP model, cached in Redis) and ``risk`` (reads features from Redis)."""
    from sklearn.linear_model import LogisticRegression

    root.mkdir(parents=True)
    (root / "modelmill.toml").write_text(
        f'home = ".modelmill"\n\n[backends]\nonline = "{redis_url}/0"\ncache = "{redis_url}/1"\n\n'
        "[serving]\nreload_interval_s = 0.25\nlog_flush_interval_s = 0.2\n")
    clear_cache()
    project = open_project_at(root)
    try:
        reg = Registry(project)
        reg.register("clf", train_lr(0), flavor="sklearn", signature=signature())
        reg.set_alias("clf", "production", 1)
        rng = np.random.default_rng(1)
        X = rng.normal(size=(300, 3)) * [10, 0.3, 50] + [40, 0.5, 100]
        y = (X @ [0.05, 2.0, 0.01] + rng.normal(size=300) > 4.0).astype(int)
        risk = LogisticRegression(max_iter=1000).fit(X, y)
        reg.register("risk", risk, flavor="sklearn", lineage={"feature_service": "risk"},
                     signature=Signature(inputs=[SigField(c, "float64") for c in RISK_COLUMNS],
                                         outputs=[SigField("probability")]))
        reg.set_alias("risk", "production", 1)
        project.offline.write("profile", pa.table({
            "user_id": list(range(100)), "ts": [T0] * 100, "age": [20 + i % 50 for i in range(100)],
            "score": [i / 100 for i in range(100)]}), time_column="ts")
        store = FeatureStore(project)
        user = Entity(name="user", join_keys=["user_id"])
        store.apply([FeatureView(name="profile", entities=[user], source="profile", timestamp_field="ts",
                                 fields=[Field("age", "int64"), Field("score", "float64")]),
                     FeatureService(name="risk", features=["profile:age", "profile:score"])])
        store.materialize(T0 - dt.timedelta(days=1), T0 + dt.timedelta(days=1))
        store.close()
    finally:
        project.close()
        clear_cache()
    return root


class Load:
    """One client alternating an OIP inference and a feature-backed prediction; bounded in time and count."""

    def __init__(self, url: str, *, max_seconds: float = 60.0, max_requests: int = 40_000) -> None:
        self.url = url
        self.max_seconds = max_seconds
        self.max_requests = max_requests
        self.results: list[tuple[float, str, int, float, Any]] = []  # (t, route, status, seconds, body)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Load:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        rng = np.random.default_rng(0)
        deadline = time.monotonic() + self.max_seconds
        with httpx.Client(base_url=self.url, timeout=15) as client:
            while not self._stop.is_set() and time.monotonic() < deadline and len(self.results) < self.max_requests:
                x = rng.normal(size=len(COLUMNS)).round(1)  # rounded: repeats, so the cache is used
                infer = {"inputs": [{"name": "input", "shape": [1, len(COLUMNS)], "datatype": "FP64",
                                     "data": [x.tolist()]}]}
                predict = {"entities": {"user_id": int(rng.integers(100))}, "features": {"amount": 100.0}}
                for route, path, body in (("infer", "/v2/models/clf/infer", infer),
                                          ("predict", "/v1/models/risk/predict", predict)):
                    t0 = time.monotonic()
                    r = client.post(path, json=body)
                    self.results.append((time.monotonic(), route, r.status_code, time.monotonic() - t0, r.json()))
                time.sleep(0.002)

    def since(self, t: float, until: float = float("inf")) -> list[tuple[float, str, int, float, Any]]:
        """Requests sent at ``t`` or later and answered before ``until``."""
        return [r for r in list(self.results) if r[0] - r[3] >= t and r[0] < until]


def test_serving_survives_a_redis_outage_and_recovers_by_itself(tmp_path: Path, redis_server: RedisServer,
                                                                 serve: Any) -> None:
    root = make_project(tmp_path / "proj", redis_server.url)
    redis.Redis.from_url(redis_server.url).save()  # what a restarted Redis loads back
    proc = serve(root, "--model", "clf@production", "--model", "risk@production")
    load = Load(proc.url).start()
    # Each phase lasts until it holds enough requests (counts, not seconds); the outage at least 4 s too.
    try:
        wait_for(lambda: len(load.since(0)) >= 100, 30, "requests before the outage")
        kill_at = time.monotonic()
        redis_server.kill()  # a crash, not a clean shutdown; returns once the port is closed
        down_at = time.monotonic()
        wait_for(lambda: len(load.since(down_at)) >= 200 and time.monotonic() - down_at >= 4.0, 60,
                 "requests during the outage")
        up_at = time.monotonic()
        redis_server.start()
        wait_for(lambda: any(r[1] == "predict" and r[2] == 200 for r in load.since(up_at)), 30,
                 "feature-backed predictions answering again")
        recovered_at = time.monotonic()
        wait_for(lambda: len(load.since(recovered_at)) >= 100, 30, "requests after the recovery")
    finally:
        load.stop()

    before, during, after = load.since(0, kill_at), load.since(down_at, up_at), load.since(recovered_at)
    # OIP inference never fails: the cache is bypassed while Redis is away
    infer = [r for r in load.results if r[1] == "infer"]
    assert {r[2] for r in infer} == {200}
    # feature-backed predictions: 200 before, a clear 503 naming Redis during, 200 after; never a 5xx other than 503
    assert {r[2] for r in before} == {200} and {r[2] for r in after} == {200}
    outage = [r for r in during if r[1] == "predict"]
    assert len(outage) >= 100 and {r[2] for r in outage} == {503}
    assert all("redis" in r[4]["error"] and "unreachable" in r[4]["error"] for r in outage)
    assert not [r for r in load.results if r[2] >= 500 and r[2] != 503]
    # no request waits on the dead server: once two lookups failed (the breaker's threshold), every other
    # answer during the outage is the open circuit's, given without calling Redis at all
    called = [r[4]["error"] for r in outage if "calls are refused until it answers a PING" not in r[4]["error"]]
    assert len(called) <= 2, called
    # no error storm: the server's log does not grow with every failed lookup
    assert len(proc.log.read_text().splitlines()) < 50, proc.log.read_text()[-3000:]
    # recovered by itself, with no restart of the server
    assert proc.proc.poll() is None
