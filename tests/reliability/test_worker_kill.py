"""One serving worker killed with SIGKILL: the other keeps answering, the dead one is replaced, and its live gauges
leave /metrics.

Orderings, not timings: the served model's loading waits while a hold file exists, so a replacement worker
cannot start until the test lets it, and the answers counted in between came from the other worker.
"""

from __future__ import annotations

import glob
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from modelmill.registry import Registry, clear_cache
from tests.reliability.conftest import wait_for
from tests.serving.conftest import COLUMNS, make_project, open_project_at, signature, train_lr
from tests.serving.sleepy import HeldLoad

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
RSS = "modelmill_process_resident_memory_bytes"


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


def metrics_dir(worker: int) -> Path:
    """The worker's PROMETHEUS_MULTIPROC_DIR (``modelmill serve`` makes a fresh one), from its environment."""
    with open(f"/proc/{worker}/environ", "rb") as fh:
        for item in fh.read().split(b"\0"):
            if item.startswith(b"PROMETHEUS_MULTIPROC_DIR="):
                return Path(item.split(b"=", 1)[1].decode())
    raise RuntimeError(f"worker {worker} has no PROMETHEUS_MULTIPROC_DIR")


def live_gauge_pids(folder: Path) -> set[int]:
    """The processes whose livesum/livemax gauges a scrape adds up (files ``gauge_live*_PID.db``)."""
    return {int(Path(f).stem.rsplit("_", 1)[1]) for f in glob.glob(str(folder / "gauge_live*_*.db"))}


def rss_sum(folder: Path, pids: set[int]) -> float:
    """modelmill_process_resident_memory_bytes summed over the gauge files of ``pids`` alone."""
    files = [str(folder / f"gauge_livesum_{pid}.db") for pid in sorted(pids)]
    for family in MultiProcessCollector.merge([f for f in files if os.path.exists(f)]):
        if family.name == RSS:
            return float(sum(s.value for s in family.samples))
    return 0.0


def scraped_rss(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        if family.name == RSS:
            return float(sum(s.value for s in family.samples))
    raise AssertionError(f"{RSS} missing from the scrape")


class Load(threading.Thread):
    """Two clients, a new connection per request (as from many users), bounded in time."""

    def __init__(self, url: str, seconds: float) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.seconds = seconds
        self.results: list[tuple[float, float, int]] = []  # (sent, answered, status; 0 = connection failed)
        self._halt = threading.Event()

    def client(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        deadline = time.monotonic() + self.seconds
        while not self._halt.is_set() and time.monotonic() < deadline:
            x = rng.normal(size=(1, len(COLUMNS)))
            body = {"inputs": [{"name": "input", "shape": [1, len(COLUMNS)], "datatype": "FP64",
                                "data": x.tolist()}]}
            sent = time.monotonic()
            try:
                status = httpx.post(f"{self.url}/v2/models/clf/infer", json=body, timeout=5).status_code
            except httpx.HTTPError:
                status = 0
            self.results.append((sent, time.monotonic(), status))
            time.sleep(0.005)

    def answered_since(self, t: float) -> int:
        """Requests sent at ``t`` or later and answered 200."""
        return sum(1 for sent, _, status in list(self.results) if sent >= t and status == 200)

    def run(self) -> None:
        threads = [threading.Thread(target=self.client, args=(i,), daemon=True) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=20)


def test_a_killed_worker_is_replaced_while_the_other_answers_and_leaves_the_metrics(tmp_path: Path,
                                                                                    serve: Any) -> None:
    root = make_project(tmp_path / "proj")
    hold = tmp_path / "hold-model-loads"
    project = open_project_at(root)
    try:  # production -> 3: the same kind of model, whose loading the test can hold
        registry = Registry(project)
        registry.register("clf", HeldLoad(train_lr(0), str(hold)), flavor="sklearn", signature=signature())
        registry.set_alias("clf", "production", 3)
    finally:
        project.close()
        clear_cache()
    # the workers import HeldLoad from this repository's tests package
    proc = serve(root, "--model", "clf@production", "--workers", "2", "--log-level", "info",
                 env={"PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}"})
    wait_for(lambda: len(workers(proc.proc.pid)) == 2 and started(proc.log) == 2, 60, "two workers started")
    original = workers(proc.proc.pid)
    victim, survivor = sorted(original)
    folder = metrics_dir(victim)
    wait_for(lambda: original <= live_gauge_pids(folder), 30, "both workers' live gauges")
    load = Load(proc.url, seconds=120)
    load.start()
    try:
        wait_for(lambda: load.answered_since(0) >= 20, 30, "answers from both workers")
        hold.touch()  # from now on a new worker cannot finish loading its model
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: len(workers(proc.proc.pid) - original) == 1, 30, "a replacement worker")
        replacement = next(iter(workers(proc.proc.pid) - original))
        # the supervisor that noticed the death dropped the dead worker's live gauges
        wait_for(lambda: victim not in live_gauge_pids(folder), 15, "the dead worker's live gauges dropped")
        wait_for(lambda: load.answered_since(killed_at) >= 50, 60, "answers after the kill")
        # the replacement is still held loading, so the survivor alone gave those answers
        assert started(proc.log) == 2

        hold.unlink()
        wait_for(lambda: started(proc.log) == 3, 60, "the replacement's startup")
        hold.touch()
        second_kill_at = time.monotonic()
        os.kill(survivor, signal.SIGKILL)
        wait_for(lambda: len(workers(proc.proc.pid) - original - {replacement}) == 1, 30, "a second replacement")
        wait_for(lambda: survivor not in live_gauge_pids(folder), 15, "the second dead worker's gauges dropped")
        wait_for(lambda: load.answered_since(second_kill_at) >= 50, 60, "answers after the second kill")
        assert started(proc.log) == 3  # the first replacement alone gave those

        # a scrape adds up the live workers' resident memory, nothing of the dead ones'
        live = workers(proc.proc.pid)
        assert live_gauge_pids(folder) <= live and not live_gauge_pids(folder) & original
        for _ in range(20):  # a worker's sampler may write between the reads: retry until they agree
            before = rss_sum(folder, live)
            scraped = scraped_rss(proc.url)
            if before == rss_sum(folder, live):
                break
        assert scraped == before > 0, (scraped, before)
        hold.unlink()
        wait_for(lambda: started(proc.log) == 4, 60, "the second replacement's startup")
    finally:
        hold.unlink(missing_ok=True)
        load.stop()
    # only requests in flight on a killed worker may fail (two clients, two kills); never an HTTP error
    assert all(s in (0, 200) for _, _, s in load.results)
    assert sum(1 for _, _, s in load.results if s == 0) <= 4
    assert proc.proc.poll() is None
