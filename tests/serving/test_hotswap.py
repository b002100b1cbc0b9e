"""Hot swap: pointing the alias at a new version moves traffic within 2 s, with zero failed requests."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from modelmill.registry import Registry
from tests.serving.conftest import N_FEATURES, open_project_at


def test_alias_change_moves_traffic_within_two_seconds_without_failures(project_dir: Path, serve: Any) -> None:
    proc = serve(project_dir, "--model", "clf@production")
    X = np.random.default_rng(5).normal(size=(1, N_FEATURES))
    body = {"inputs": [{"name": "input", "shape": [1, N_FEATURES], "datatype": "FP64", "data": X.tolist()}]}
    results: list[tuple[float, int, str]] = []  # (time, status, version)
    switched_at: list[float] = []

    async def load(client: httpx.AsyncClient, stop: float) -> None:
        while time.monotonic() < stop:  # bounded: a fixed duration, 4 connections
            r = await client.post(f"{proc.url}/v2/models/clf/infer", json=body)
            version = r.json().get("model_version", "") if r.status_code == 200 else ""
            results.append((time.monotonic(), r.status_code, version))
            await asyncio.sleep(0.002)

    async def switch() -> None:
        await asyncio.sleep(1.0)
        project = open_project_at(project_dir)
        try:
            await asyncio.to_thread(Registry(project).set_alias, "clf", "production", 2, actor="test")
        finally:
            project.close()
        switched_at.append(time.monotonic())

    async def main() -> None:
        stop = time.monotonic() + 4.5
        async with httpx.AsyncClient(timeout=10) as client:
            await asyncio.gather(*(load(client, stop) for _ in range(4)), switch())

    asyncio.run(main())
    assert results and switched_at
    failed = [r for r in results if r[1] != 200]
    assert failed == [], f"{len(failed)} failed requests during the swap"
    t = switched_at[0]
    before = {v for ts, _, v in results if ts < t - 0.05}
    after = [v for ts, _, v in results if ts > t + 2.0]
    assert before == {"1"}
    assert len(after) > 20 and set(after) == {"2"}, "traffic did not move to version 2 within 2 s"
    first_v2 = min(ts for ts, _, v in results if v == "2")
    assert first_v2 - t < 2.0
