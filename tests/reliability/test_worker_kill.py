"""One serving worker killed with SIGKILL: the other keeps answering and the dead one is replaced."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.reliability.conftest import wait_for
from tests.serving.conftest import COLUMNS, make_project

pytestmark = pytest.mark.slow


def children(pid: int) -> set[int]:
    """The live child processes of ``pid`` (from /proc)."""
    out = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.add(int(entry))
    return out


def workers(pid: int) -> set[int]:
    """uvicorn's worker processes: children of the supervisor that run Python (not its resource tracker)."""
    found = set()
    for child in children(pid):
        try:
            with open(f"/proc/{child}/cmdline", "rb") as fh:
                cmd = fh.read()
        except OSError:
            continue
        if b"multiprocessing.spawn" in cmd or b"spawn_main" in cmd:
            found.add(child)
    return found


def started(log: Path) -> int:
    """How many workers finished starting (uvicorn logs one line each at level info)."""
    return log.read_text(errors="replace").count("Application startup complete")


class Load(threading.Thread):
    """Two clients, a new connection per request (as from many users), bounded in time."""

    def __init__(self, url: str, seconds: float) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.seconds = seconds
        self.results: list[tuple[float, int]] = []  # (time, status; 0 = connection failed)
        self._halt = threading.Event()

    def client(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        deadline = time.monotonic() + self.seconds
        while not self._halt.is_set() and time.monotonic() < deadline:
            x = rng.normal(size=(1, len(COLUMNS)))
            body = {"inputs": [{"name": "input", "shape": [1, len(COLUMNS)], "datatype": "FP64",
                                "data": x.tolist()}]}
            try:
                status = httpx.post(f"{self.url}/v2/models/clf/infer", json=body, timeout=5).status_code
            except httpx.HTTPError:
                status = 0
            self.results.append((time.monotonic(), status))
            time.sleep(0.005)

    def run(self) -> None:
        threads = [threading.Thread(target=self.client, args=(i,), daemon=True) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=20)


def test_a_killed_worker_is_replaced_while_the_other_answers(tmp_path: Path, serve: Any) -> None:
    root = make_project(tmp_path / "proj")
    proc = serve(root, "--model", "clf@production", "--workers", "2", "--log-level", "info")
    wait_for(lambda: len(workers(proc.proc.pid)) == 2, 30, "two workers")
    original = workers(proc.proc.pid)
    load = Load(proc.url, seconds=60)
    load.start()
    try:
        time.sleep(1.0)
        victim = min(original)
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: len(workers(proc.proc.pid) - original) == 1, 30, "a replacement worker")
        replaced_at = time.monotonic()
        replacement = next(iter(workers(proc.proc.pid) - original))
        # the replacement loads its models (seconds), then answers: kill the survivor to prove it
        wait_for(lambda: started(proc.log) == 3, 60, "the replacement's startup")
        time.sleep(0.5)
        survivor = next(iter(original - {victim}))
        os.kill(survivor, signal.SIGKILL)
        second_kill_at = time.monotonic()
        wait_for(lambda: len(workers(proc.proc.pid) - original - {replacement}) == 1, 30, "a second replacement")
        time.sleep(4.0)
    finally:
        load.stop()
    ok = [t for t, s in load.results if s == 200]
    # every half second from the first kill to the end had answers: the other worker kept answering, and
    # after the second kill the replacement alone did (a fresh worker needs seconds to load its models)
    t = killed_at
    while t < second_kill_at + 3.0:
        assert any(t <= x < t + 0.5 for x in ok), (
            f"no answer between {t - killed_at:.1f} and +0.5 s; replaced at {replaced_at - killed_at:.1f}, second "
            f"kill at {second_kill_at - killed_at:.1f}: {[(round(x - killed_at, 2), s) for x, s in load.results]}")
        t += 0.5
    # only requests in flight on a killed worker may fail; never an HTTP error
    assert all(s in (0, 200) for _, s in load.results)
    assert sum(1 for _, s in load.results if s == 0) <= 6
    assert replaced_at - killed_at < 15
    assert proc.proc.poll() is None
