"""Two ``modelmill loop`` processes on one database: the follower never leads while the leader's heartbeat
renews the lease, and takes over once the leader is killed and its lease expires.

Real processes and the real clock, so the bounds are generous (the lease lasts 10 s); marked slow.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modelmill.config import load_settings
from modelmill.loop import load_loop_config, loop_status
from modelmill.project import Project
from tests.loop import pipelines
from tests.loop.test_cli import TOML
from tests.loop.test_config import ROOT, mm

pytestmark = pytest.mark.slow


def leader(cwd: Path) -> str | None:
    with Project(load_settings(cwd=cwd, env={})) as project:
        return loop_status(project, load_loop_config(project.settings))["leader"]


def test_a_second_process_follows_then_takes_over_from_a_killed_leader(tmp_path: Path) -> None:
    (tmp_path / "modelmill.toml").write_text(TOML)
    with Project(load_settings(cwd=tmp_path, env={})) as project:
        pipelines.first_version(project)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELMILL_")} | {"PYTHONPATH": str(ROOT)}
    args = ["--interval", "0.5", "--lease-ttl", "10", "--json"]
    first = subprocess.Popen([sys.executable, "-m", "modelmill", "loop", "--holder", "A", "--max-seconds", "120",
                              *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while leader(tmp_path) != "A":
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the first loop never took the lease"
            time.sleep(0.5)
        # 15 s, past the 10 s lease: only the leader's heartbeat keeps it from the follower.
        follower = mm(["loop", "--holder", "B", "--max-seconds", "15", *args], tmp_path)
        assert follower.returncode == 0, follower.stderr
        out = json.loads(follower.stdout)
        assert out["rounds"] == 0 and out["last_round"]["following"] == "A"
    finally:
        first.send_signal(signal.SIGKILL)  # dies holding the lease: nothing gives it back
        first.wait(timeout=30)
    taken = mm(["loop", "--holder", "C", "--max-seconds", "40", *args], tmp_path)
    assert taken.returncode == 0, taken.stderr
    out = json.loads(taken.stdout)
    assert out["rounds"] >= 1 and out["last_round"]["leader"] is True and out["last_round"]["epoch"] == 2
    assert leader(tmp_path) is None  # C gave the lease back when it ended
