"""The ``ray://HOST:PORT`` executor: a pipeline's steps run as Ray tasks on a Ray cluster.

    Pipeline("train", steps, executor="ray://head:10001").run(project)

``HOST:PORT`` is the head's Ray Client server (``ray start --head --ray-client-server-port PORT``, 10001 by
default). Each attempt of a step is one Ray task (``num_cpus=1``) in a worker process somewhere on the
cluster, so independent steps run on several nodes at once. Retries and timeouts are the pipeline's, as
with ``local``, mapped onto Ray:

* an attempt is a task with ``max_retries=0``: an attempt that fails, or whose worker or node dies, is one
  failed attempt, and the step's ``retries`` (with backoff) submit a new task each; every attempt is recorded;
* a step's ``timeout`` is ``ray.wait(timeout=...)`` from the attempt's submission (time waiting for a free CPU
  counts), and an attempt past it is ``ray.cancel(force=True)``: Ray kills the worker process running it,
  and the attempt is marked ``timed_out``.

A step and its inputs travel pickled (by value when they are not importable); its context is the one a
child process gets (:class:`~modelmill.training.pipeline.ChildContext`): the project is opened on the worker
from the project's settings, so the nodes reach the same metadata database and artifact store (a shared
path or a server), and the step's code is importable there (the driver's ``sys.path`` is added).
"""

from __future__ import annotations

import concurrent.futures
import logging
import pickle
import socket
import sys

from modelmill.errors import InputError
from modelmill.training.executors import (
    StepOutcome,
    StepTask,
    _dumps,
    register_executor,
    run_attempts,
    run_pickled_attempt,
)

__all__ = ["RayExecutor"]


def _address(spec: str) -> tuple[str, int]:
    rest = spec[len("ray://"):] if spec.startswith("ray://") else ""
    host, sep, port = rest.rpartition(":")
    if not sep or not host or "/" in rest or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError("executor", "must be ray://HOST:PORT (the head's Ray Client server, port 10001 by "
                         "default)", spec)
    return host.strip("[]"), int(port)


class RayExecutor:
    """Runs each step attempt as a Ray task on the cluster at ``spec`` (``ray://HOST:PORT``)."""

    name = "ray"

    def __init__(self, spec: str, *, max_workers: int = 32) -> None:
        host, port = _address(spec)
        try:
            import ray
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise InputError("executor", "ray:// needs the ray extra: pip install 'modelmill[ray]'", spec) from exc
        self.spec = spec
        self._connected = False
        if not ray.is_initialized():
            try:
                socket.create_connection((host, port), timeout=5.0).close()
            except OSError as exc:
                raise InputError("executor", f"no Ray cluster answers at {host}:{port} ({exc.strerror or exc}); "
                                 "start one with `ray start --head --ray-client-server-port PORT`", spec) from exc
            try:
                ray.init(address=spec, log_to_driver=False, logging_level=logging.ERROR)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise InputError("executor", f"could not join the Ray cluster at {spec}: {exc}", spec) from exc
            self._connected = True
        self._ray = ray
        self._remote = ray.remote(num_cpus=1, max_retries=0)(_attempt_on_worker)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="mm-ray")

    def __repr__(self) -> str:
        return f"RayExecutor({self.spec!r})"

    def submit(self, task: StepTask) -> concurrent.futures.Future[StepOutcome]:
        return self._pool.submit(run_attempts, task, self._once)

    def _once(self, task: StepTask, attempt: int) -> StepOutcome:
        from modelmill.training.pipeline import ChildContext

        ray = self._ray
        ctx = task.ctx
        child_ctx = ChildContext.of(ctx, attempt) if ctx is not None else None
        try:
            payload = pickle.dumps((list(sys.path), _dumps((task.step, task.kwargs, child_ctx))))
        except Exception as exc:
            return StepOutcome(status="failed", error=f"step {task.step.name!r} cannot be sent to Ray: "
                               f"{type(exc).__name__}: {exc}")
        ref = self._remote.options(name=f"modelmill:{task.pipeline}:{task.step.name}:{attempt}").remote(payload)
        if task.timeout is not None:
            ready, _ = ray.wait([ref], timeout=task.timeout)
            if not ready:
                ray.cancel(ref, force=True)  # Ray kills the worker process that runs the attempt
                return StepOutcome(status="timed_out",
                                   error=f"TimeoutError: step {task.step.name!r} ran past its timeout of "
                                         f"{task.timeout:g} s on Ray and its task was cancelled (worker killed)")
        try:
            message = pickle.loads(ray.get(ref))
        except Exception as exc:  # the worker or its node died, or the task could not run
            return StepOutcome(status="failed", error=f"{type(exc).__name__}: {str(exc)[:2000]}")
        lineage = message.get("lineage", {})
        if message["status"] == "ok":
            return StepOutcome(status="ok", value=message["value"], lineage=lineage)
        return StepOutcome(status="failed", error=message["error"], detail=message.get("detail"), lineage=lineage)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        if self._connected:
            self._ray.shutdown()
            self._connected = False


def _attempt_on_worker(payload: bytes) -> bytes:
    """One attempt, in a Ray worker: the step's value and lineage, or its error, pickled."""
    path, inner = pickle.loads(payload)
    sys.path.extend(p for p in path if p not in sys.path)  # the driver's: the step's module imports here too
    return run_pickled_attempt(inner, "on the Ray worker")[1]


register_executor("ray", RayExecutor)
