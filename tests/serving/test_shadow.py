"""Shadow variants: a 200 ms shadow leaves the primary's latency alone and its predictions reach the log."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from modelmill.registry import Registry
from modelmill.serving import RouteTable, Variant
from tests.serving.conftest import N_FEATURES, open_project_at, signature, train_lr
from tests.serving.sleepy import SleepyModel

REPO = Path(__file__).resolve().parents[2]


def test_slow_shadow_does_not_slow_the_primary_and_is_logged(project_dir: Path, serve: Any) -> None:
    project = open_project_at(project_dir)
    try:
        reg = Registry(project)
        reg.register("clf", SleepyModel(0.2), flavor="sklearn", signature=signature())  # version 3
        reg.register("plain", train_lr(0), flavor="sklearn", signature=signature())
        RouteTable(project).set("clf", [Variant("primary", 1, 1.0), Variant("sleepy", 3, 0, shadow=True)])
        RouteTable(project).set("plain", [Variant("primary", 1, 1.0)])
    finally:
        project.close()
    # the server process imports SleepyModel from this repository's tests package
    proc = serve(project_dir, "--no-cache", env={"PYTHONPATH": str(REPO)})

    X = np.random.default_rng(9).normal(size=(1, N_FEATURES))
    body = {"inputs": [{"name": "input", "shape": [1, N_FEATURES], "datatype": "FP64", "data": X.tolist()}]}
    lat: dict[str, list[float]] = {"clf": [], "plain": []}
    with httpx.Client(base_url=proc.url, timeout=10) as client:
        for _ in range(20):  # warm up both
            for model in lat:
                client.post(f"/v2/models/{model}/infer", json=body).raise_for_status()
        # interleaved, one connection: both see the same machine noise; only clf has a shadow
        for _ in range(300):
            for model in lat:
                t0 = time.perf_counter()
                r = client.post(f"/v2/models/{model}/infer", json=body)
                lat[model].append(time.perf_counter() - t0)
                assert r.status_code == 200
                assert r.json()["model_version"] == "1"
    p50_shadowed = statistics.median(lat["clf"])
    p50_plain = statistics.median(lat["plain"])
    assert p50_shadowed <= 1.10 * p50_plain, (p50_shadowed, p50_plain)
    assert p50_shadowed < 0.05  # nowhere near the shadow's 200 ms

    project = open_project_at(project_dir)
    try:
        deadline = time.monotonic() + 15
        shadow_rows = 0
        while time.monotonic() < deadline:
            if project.offline.exists("predictions"):
                con = project.offline.connect(["predictions"])
                shadow_rows = con.execute("SELECT count(*) FROM predictions WHERE model = 'clf' AND "
                                          "variant = 'sleepy' AND version = 3 AND output = 0.5").fetchone()[0]
                primary = con.execute("SELECT count(*) FROM predictions WHERE model = 'clf' AND "
                                      "variant = 'primary' AND version = 1").fetchone()[0]
                con.close()
                if shadow_rows >= 300 and primary >= 320:
                    break
            time.sleep(0.3)
        assert shadow_rows >= 300
        assert primary >= 320
        con = project.offline.connect(["predictions"])
        pairs = con.execute("SELECT count(*) FROM predictions p JOIN predictions s USING (request_id) "
                            "WHERE p.variant = 'primary' AND s.variant = 'sleepy'").fetchone()[0]
        con.close()
        assert pairs >= 300  # a shadow row carries the request id of the request it mirrors
    finally:
        project.close()
