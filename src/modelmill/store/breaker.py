"""A circuit breaker: after a few failed calls to a backend, stop calling it for a while and fail at once.

A backend that hangs (a paused Redis accepts connections and never answers) costs every caller a full
timeout. The breaker turns that into one timeout per outage: after ``failures`` consecutive failures the
circuit *opens* and :meth:`Breaker.allow` says no, so callers fail (or skip an optional tier such as a
cache) without waiting. Every ``retry_after_s`` the backend is tried again: by ``probe`` in a background
thread when one is given (so no caller ever waits on the trial), else by letting one call through. A
success closes the circuit, so service comes back without a restart once the backend answers again.

    >>> b = Breaker("redis at redis://h:6379/0", failures=2, retry_after_s=60)
    >>> b.failure("timeout"); b.is_open
    False
    >>> b.failure("timeout"); b.is_open, b.allow(), b.opened
    (True, False, 1)
    >>> b.success(); b.is_open, b.allow(), b.closed
    (False, True, 1)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

__all__ = ["Breaker"]

log = logging.getLogger(__name__)


class Breaker:
    """Closed (calls go through) or open (calls refused, one trial every ``retry_after_s``). Thread-safe.

    ``name`` says what is guarded in the log lines (``"redis at redis://host:6379/0"``); ``opened`` and
    ``closed`` count the transitions, ``reason`` is the failure that opened the circuit.
    """

    def __init__(self, name: str, *, failures: int = 2, retry_after_s: float = 1.0,
                 probe: Callable[[], object] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        if failures < 1:
            raise ValueError("failures must be at least 1")
        if not retry_after_s > 0:
            raise ValueError("retry_after_s must be above 0")
        self.name = name
        self.failures = failures
        self.retry_after_s = retry_after_s
        self.probe = probe
        self.clock = clock
        self.opened = 0
        self.closed = 0
        self.reason = ""
        self._failed = 0  # consecutive failures while closed
        self._open_since: float | None = None
        self._retry_at = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._prober: threading.Thread | None = None

    def __repr__(self) -> str:
        state = "open" if self.is_open else "closed"
        return f"Breaker({self.name!r}, {state}, failures={self.failures}, retry_after_s={self.retry_after_s})"

    @property
    def is_open(self) -> bool:
        return self._open_since is not None

    def blocked(self) -> bool:
        """Open and not yet due for a trial: a caller should not even try (does not use up the trial)."""
        return self._open_since is not None and (self.probe is not None or self.clock() < self._retry_at)

    def allow(self) -> bool:
        """May this call go to the backend? While open, yes for one call per ``retry_after_s`` (the trial)."""
        if self._open_since is None:
            return True
        with self._lock:
            now = self.clock()
            if self._open_since is None:
                return True
            if self.probe is not None or now < self._retry_at:
                return False
            # One trial per interval; if its outcome is never reported, the next interval brings another.
            self._retry_at = now + self.retry_after_s
            return True

    def success(self) -> None:
        if self._open_since is None and not self._failed:
            return  # the common case, lock-free
        with self._lock:
            self._failed = 0
            if self._open_since is None:
                return
            down = self.clock() - self._open_since
            self._open_since = None
            self.closed += 1
        log.warning("%s answers again after %.1f s: circuit closed, calls go through again", self.name, down)

    def failure(self, reason: str) -> None:
        with self._lock:
            now = self.clock()
            self._retry_at = now + self.retry_after_s
            if self._open_since is not None:
                return  # a failed trial: stay open
            self._failed += 1
            if self._failed < self.failures:
                return
            self._failed = 0
            self._open_since = now
            self.opened += 1
            self.reason = reason
            if self.probe is not None and (self._prober is None or not self._prober.is_alive()
                                           or self._stop.is_set()):
                self._stop = threading.Event()
                self._prober = threading.Thread(target=self._probe_loop, args=(self._stop,),
                                                name="modelmill-breaker-probe", daemon=True)
                self._prober.start()
        log.warning("%s is not answering (%s): circuit open, calls fail at once; tried again every %.1f s",
                    self.name, reason, self.retry_after_s)

    def _probe_loop(self, stop: threading.Event) -> None:
        assert self.probe is not None
        while self._open_since is not None and not stop.wait(self.retry_after_s):
            try:
                self.probe()
            except Exception as exc:  # still down: stay open, try again next interval
                self.reason = str(exc) or type(exc).__name__
                continue
            self.success()

    def stop(self) -> None:
        """End the background probe (the backend is being closed)."""
        self._stop.set()
