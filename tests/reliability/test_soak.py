"""Soak: 60 s worth of requests at 80% of the measured maximum throughput of ``modelmill serve``: every one
answered, zero errors, resident memory growth at most 10%.

The client is a minimal keep-alive HTTP/1.1 client on asyncio streams, so that on a small machine the
server, not the client, sets the maximum. The maximum is measured first, briefly, in the same test, and
sets the pace and the count; what is asserted is counts (every request answered 200), never a rate, so a
machine that slows down mid-test makes the soak longer, not red.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from tests.serving.conftest import COLUMNS, make_project

pytestmark = pytest.mark.slow

CONNECTIONS = 8
MEASURE = 4_000  # requests, closed loop: the maximum throughput
WARMUP_S = 3.0
SOAK_S = 60.0
LOAD = 0.8
SLACK = 5  # the soak is given up (a hang) after SLACK times its planned length


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def requests(n: int) -> list[bytes]:
    rng = np.random.default_rng(11)
    out = []
    for _ in range(n):
        body = orjson.dumps({"inputs": [{"name": "input", "shape": [1, len(COLUMNS)], "datatype": "FP64",
                                         "data": rng.normal(size=(1, len(COLUMNS))).tolist()}]})
        out.append(b"POST /v2/models/clf/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                   b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    return out


class Stats:
    def __init__(self) -> None:
        self.ok = 0
        self.errors: list[str] = []


async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes, stats: Stats) -> None:
    writer.write(request)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    body = await asyncio.wait_for(reader.readexactly(length), 10)
    if head.startswith(b"HTTP/1.1 200"):
        stats.ok += 1
    else:
        stats.errors.append(head.split(b"\r\n", 1)[0].decode() + " " + body[:200].decode(errors="replace"))


async def connection(port: int, bodies: list[bytes], count: int, interval: float | None, offset: int,
                     stats: Stats) -> None:
    """``count`` requests, closed loop (``interval`` None) or paced: one per ``interval`` s, catching up when late."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        due = time.monotonic() + (interval or 0) * offset / CONNECTIONS
        i = offset
        for _ in range(count):
            if interval is not None:
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                due += interval
            try:
                await one(reader, writer, bodies[i % len(bodies)], stats)
            except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
                stats.errors.append(repr(exc))
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            i += CONNECTIONS
    finally:
        writer.close()


async def drive(port: int, bodies: list[bytes], count: int, rate: float | None) -> tuple[Stats, float]:
    """``count`` requests over CONNECTIONS connections at ``rate`` (None: as fast as answered); and the seconds."""
    stats = Stats()
    interval = None if rate is None else CONNECTIONS / rate
    start = time.monotonic()
    planned = SOAK_S if rate is None else count / rate
    await asyncio.wait_for(asyncio.gather(*(connection(port, bodies, count // CONNECTIONS, interval, k, stats)
                                            for k in range(CONNECTIONS))), SLACK * planned)
    return stats, time.monotonic() - start


async def soak(port: int, pid: int, bodies: list[bytes], count: int, rate: float) -> tuple[Stats, float, list[int]]:
    samples: list[int] = []

    async def sample() -> None:
        while True:
            samples.append(rss_bytes(pid))
            await asyncio.sleep(1.0)

    sampler = asyncio.create_task(sample())
    try:
        stats, seconds = await drive(port, bodies, count, rate)
    finally:
        sampler.cancel()
    samples.append(rss_bytes(pid))
    return stats, seconds, samples


def test_soak_at_80_percent_of_max_throughput(tmp_path: Path, serve: Any) -> None:
    root = make_project(tmp_path / "proj")
    # no cache: every request runs the model; the prediction log stays on (it is part of the path)
    proc = serve(root, "--model", "clf@production", "--no-cache")
    port, pid = proc.port, proc.proc.pid  # one worker: uvicorn serves in this very process
    bodies = requests(2000)

    measured, seconds = asyncio.run(drive(port, bodies, MEASURE, None))
    assert not measured.errors, measured.errors[:5]
    assert measured.ok == MEASURE
    max_rps = measured.ok / seconds  # the baseline, of this machine now
    rate = LOAD * max_rps
    count = CONNECTIONS * max(1, round(rate * SOAK_S / CONNECTIONS))  # 60 s worth at that pace
    warm_count = CONNECTIONS * max(1, round(rate * WARMUP_S / CONNECTIONS))
    warm, _ = asyncio.run(drive(port, bodies, warm_count, rate))  # the log's buffers and files reach steady size
    assert not warm.errors, warm.errors[:5]

    stats, seconds, rss = asyncio.run(soak(port, pid, bodies, count, rate))
    growth = rss[-1] / rss[0] - 1
    print(f"\nmax {max_rps:.0f} req/s; soak {count} requests at {rate:.0f} req/s, achieved "
          f"{stats.ok / seconds:.0f} req/s over {seconds:.1f} s, {stats.ok} ok, {len(stats.errors)} errors; RSS "
          f"{rss[0] / 2**20:.1f} -> {rss[-1] / 2**20:.1f} MiB ({growth:+.1%}), peak {max(rss) / 2**20:.1f} MiB")
    assert stats.errors == [], stats.errors[:5]
    assert stats.ok == count  # every request of the soak answered: the load was held, not quietly dropped
    assert growth <= 0.10
    assert proc.proc.poll() is None
