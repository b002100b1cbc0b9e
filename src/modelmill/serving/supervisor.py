"""Several serving workers: uvicorn's supervisor, which also drops a dead worker's live gauges.

With ``--workers N`` every worker writes its metrics to files in ``PROMETHEUS_MULTIPROC_DIR``, and
``/metrics`` sums them. The ``livesum``/``livemax`` gauges (requests in flight, CPU, resident memory, GPU)
must count only processes that are alive, and prometheus_client cannot tell which are: the files of a worker
that died stay and keep adding its last values, until someone calls ``mark_process_dead(pid)``. uvicorn's
supervisor is the one that notices a worker died (and starts its replacement), so :class:`Supervisor` calls
:func:`~modelmill.serving.metrics.mark_dead` there, for every worker that leaves its list: one that died or
hung, one replaced by a restart (SIGHUP), one retired by SIGTTOU, and each at shutdown.
"""

from __future__ import annotations

from typing import Any

import uvicorn
from uvicorn.supervisors import Multiprocess

from modelmill.serving import metrics

__all__ = ["Supervisor", "run_workers"]


class Supervisor(Multiprocess):
    """uvicorn's :class:`~uvicorn.supervisors.Multiprocess`, calling ``metrics.mark_dead`` for each worker gone.

    uvicorn replaces a dead worker inside ``keep_subprocess_alive`` and retires workers inside its signal
    handlers; the pids before and after each of those say which workers left.
    """

    def _pids(self) -> set[int]:
        return {p.pid for p in self.processes if p.pid is not None}

    def _forget(self, before: set[int]) -> None:
        for pid in before - self._pids():
            metrics.mark_dead(pid)

    def keep_subprocess_alive(self) -> None:
        before = self._pids()
        try:
            super().keep_subprocess_alive()
        finally:
            self._forget(before)

    def handle_signals(self) -> None:
        before = self._pids()
        try:
            super().handle_signals()
        finally:
            self._forget(before)

    def join_all(self) -> None:
        super().join_all()
        for pid in self._pids():
            metrics.mark_dead(pid)


def run_workers(app: str, *, workers: int, **options: Any) -> None:
    """``uvicorn.run(app, workers=workers, **options)`` under :class:`Supervisor` (``workers`` above 1)."""
    config = uvicorn.Config(app, workers=workers, **options)
    try:
        Supervisor(config, sockets=[config.bind_socket()]).run()
    except KeyboardInterrupt:  # as uvicorn.run: Ctrl-C ends the server quietly
        pass
