"""Ending the throwaway servers the tests start (the fleet's hosts, the fault tests' PostgreSQL, Redis, NATS)."""

from __future__ import annotations

import signal
import subprocess


def kill_process(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGKILL ``proc`` if it still runs (a crash, as the fault tests need it), and reap it."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)


def stop_process(proc: subprocess.Popen[bytes] | None, grace_s: float = 10) -> None:
    """SIGTERM ``proc`` if it still runs; SIGKILL it when it has not exited ``grace_s`` later."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
