"""The multi-worker supervisor drops the live gauges of each worker that leaves (prometheus_client's
``mark_process_dead``), so ``/metrics`` adds up live workers only. Real uvicorn workers, killed for real."""

from __future__ import annotations

import glob
import os
import signal
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from uvicorn.supervisors.multiprocess import SIGNALS

from modelmill.serving import metrics
from modelmill.serving.supervisor import Supervisor

# A worker's app: a livesum gauge set when it is imported, which writes gauge_livesum_<pid>.db in the
# multiprocess folder (as the serving app's in-flight and resource gauges do), and a counter beside it.
APP = """
from prometheus_client import Counter, Gauge

Gauge("supervisor_test_live", "live", multiprocess_mode="livesum").set(1)
Counter("supervisor_test_total", "count").inc()


async def app(scope, receive, send):
    pass
"""


def live_pids(folder: Path) -> set[int]:
    return {int(Path(f).stem.rsplit("_", 1)[1]) for f in glob.glob(str(folder / "gauge_live*_*.db"))}


def counter_pids(folder: Path) -> set[int]:
    return {int(Path(f).stem.rsplit("_", 1)[1]) for f in glob.glob(str(folder / "counter_*.db"))}


@pytest.fixture
def supervisor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Supervisor]:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "supervisor_test_app.py").write_text(textwrap.dedent(APP))
    monkeypatch.syspath_prepend(str(tmp_path / "app"))  # spawned workers start with this sys.path
    monkeypatch.setenv(metrics.ENV, "")  # restored afterwards; the next line fills it in
    metrics.prepare_multiprocess_dir(tmp_path / "prom")
    handlers = {sig: signal.getsignal(sig) for sig in SIGNALS}  # uvicorn's supervisor takes them over
    config = uvicorn.Config("supervisor_test_app:app", host="127.0.0.1", port=0, workers=2, lifespan="off",
                            log_level="warning")
    sup = Supervisor(config, sockets=[config.bind_socket()])
    yield sup
    sup.should_exit.set()
    sup.terminate_all()
    for process in sup.processes:
        process.join()
    for sock in sup.sockets:
        sock.close()
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


def test_a_dead_workers_live_gauges_are_dropped_and_the_survivors_kept(supervisor: Supervisor,
                                                                         tmp_path: Path) -> None:
    folder = tmp_path / "prom"
    supervisor.init_processes()
    for process in supervisor.processes:
        assert process.wait_until_ready(60), "a worker did not start"
    victim, survivor = (p.pid for p in supervisor.processes)
    assert victim is not None and survivor is not None
    assert live_pids(folder) == {victim, survivor}

    os.kill(victim, signal.SIGKILL)
    supervisor.processes[0].process.join()  # dead for sure before uvicorn looks
    supervisor.keep_subprocess_alive()  # notices, starts a replacement, and drops the dead worker's gauges
    replacement = supervisor.processes[0].pid
    assert replacement not in (None, victim)
    assert victim not in live_pids(folder) and survivor in live_pids(folder)
    assert victim in counter_pids(folder)  # what the dead worker counted still counts

    supervisor.should_exit.set()
    supervisor.terminate_all()
    supervisor.join_all()  # at shutdown every worker leaves
    assert live_pids(folder) == set()
