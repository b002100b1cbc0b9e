"""The circuit breaker's states, on a clock the test moves by hand (no sleeping, no timing)."""

from __future__ import annotations

import logging
import threading

import pytest

from modelmill.store.breaker import Breaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_consecutive_failures_only() -> None:
    b = Breaker("redis at r", failures=3, retry_after_s=1.0, clock=Clock())
    for _ in range(2):
        b.failure("timeout")
    b.success()  # a success in between starts the count again
    b.failure("timeout")
    b.failure("timeout")
    assert not b.is_open and b.allow()
    b.failure("timeout")
    assert b.is_open and not b.allow() and b.blocked() and (b.opened, b.reason) == (1, "timeout")


def test_one_trial_per_interval_while_open_and_a_success_closes(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    b = Breaker("redis at r", failures=1, retry_after_s=2.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="modelmill.store.breaker"):
        b.failure("Timeout reading from socket")
        clock.now += 1.9
        assert not b.allow()
        clock.now += 0.2
        assert not b.blocked()  # due for a trial; asking blocked() does not use it up
        assert b.allow() and not b.allow()  # the trial, then nobody else in this interval
        b.failure("Timeout reading from socket")  # the trial failed: still open, once more after 2 s
        assert b.is_open and b.opened == 1
        clock.now += 2.0
        assert b.allow()
        b.success()
    assert not b.is_open and b.allow() and not b.blocked() and b.closed == 1
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert "redis at r is not answering (Timeout reading from socket): circuit open" in messages[0]
    assert "redis at r answers again after 4.1 s: circuit closed" in messages[1]


def test_a_lost_trial_does_not_keep_the_circuit_open_forever() -> None:
    clock = Clock()
    b = Breaker("x", failures=1, retry_after_s=1.0, clock=clock)
    b.failure("refused")
    clock.now += 1.0
    assert b.allow()  # its caller never reports back (cancelled, say)
    clock.now += 1.0
    assert b.allow()


def test_with_a_probe_no_caller_is_the_trial_and_the_probe_closes_the_circuit() -> None:
    down = threading.Event()
    down.set()
    pinged = threading.Event()

    def ping() -> None:
        pinged.set()
        if down.is_set():
            raise ConnectionError("refused")

    b = Breaker("x", failures=1, retry_after_s=0.01, probe=ping)
    b.failure("refused")
    assert pinged.wait(10)  # the probe runs in its own thread...
    assert b.is_open and b.blocked() and not b.allow()  # ...and callers are never let through as trials
    down.clear()
    for _ in range(1000):  # bounded: the probe closes it within a few intervals
        if not b.is_open:
            break
        threading.Event().wait(0.01)
    assert not b.is_open and b.allow() and (b.opened, b.closed) == (1, 1)
    b.stop()


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="failures"):
        Breaker("x", failures=0)
    with pytest.raises(ValueError, match="retry_after_s"):
        Breaker("x", retry_after_s=0)
