"""Where a pipeline's steps run: the executor seam.

A pipeline hands each step that must run to an :class:`Executor` as a :class:`StepTask` (the
step, its input values, its context, its timeout, retries and backoff) and gets back a future
of a :class:`StepOutcome` (the value, the lineage the step recorded, and every attempt). The
pipeline does everything else itself (cache keys, artifacts, lineage, the database), so an
executor only runs functions.

``local`` (the default) runs steps in threads of this process, at most ``max_workers`` at once;
a step with a ``timeout`` runs each attempt in a child process of its own (spawned, in its own
process group) that is killed when the timeout passes, so a step past its time really stops.
Other executors register a URL scheme with :func:`register_executor` (``ray://`` for instance)
and are chosen by ``Pipeline(..., executor="ray://head:10001")`` or ``run(executor=...)``.

    >>> ex = executor_for("local")
    >>> ex.name
    'local'
    >>> ex.close()
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from modelmill.errors import InputError

if TYPE_CHECKING:
    from modelmill.training.pipeline import Step, StepContext

__all__ = ["Executor", "LocalExecutor", "StepOutcome", "StepTask", "executor_for", "register_executor",
           "run_attempts"]


@dataclasses.dataclass(kw_only=True)
class StepTask:
    """One step to run: ``step.fn(**kwargs, ctx=ctx)`` (ctx only when the step takes one)."""

    pipeline: str
    step: Step
    kwargs: dict[str, Any]
    ctx: StepContext | None
    timeout: float | None
    retries: int
    backoff: float


@dataclasses.dataclass(kw_only=True)
class StepOutcome:
    """How a step's attempts ended. ``status``: ok | failed | timed_out (the last attempt's)."""

    status: str
    value: Any = None
    lineage: dict[str, Any] = dataclasses.field(default_factory=dict)
    attempts: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    error: str | None = None  # one line: "TypeError: ..."
    detail: str | None = None  # the traceback's tail


class Executor(Protocol):
    """Runs steps. ``submit`` returns at once; the future never raises (failures are outcomes)."""

    name: str

    def submit(self, task: StepTask) -> concurrent.futures.Future[StepOutcome]: ...

    def close(self) -> None: ...


_FACTORIES: dict[str, Callable[[str], Executor]] = {}

#: Seconds a step's child process may take to start (import the step's module) before the attempt fails.
STARTUP_SECONDS = 300

# Forked from a server process that imported modelmill once: fast to start, and safe in a threaded parent.
_MP = multiprocessing.get_context("forkserver")
_MP.set_forkserver_preload(["modelmill.training.pipeline"])


def register_executor(scheme: str, factory: Callable[[str], Executor]) -> None:
    """Make ``executor="<scheme>://..."`` build an executor with ``factory(spec)``."""
    _FACTORIES[scheme] = factory


def executor_for(spec: str | Executor | None, *, max_workers: int | None = None) -> Executor:
    """The executor a spec names: ``"local"`` (or None), a registered ``scheme://...``, or an Executor."""
    if spec is None or spec == "local":
        return LocalExecutor(max_workers=max_workers)
    if not isinstance(spec, str):
        return spec
    scheme = spec.split("://", 1)[0] if "://" in spec else spec
    if scheme == "ray" and scheme not in _FACTORIES:
        import modelmill.training.ray_executor  # noqa: F401 - registers ray://HOST:PORT
    factory = _FACTORIES.get(scheme)
    if factory is None:
        raise InputError("executor", "must be 'local' or a registered scheme://... "
                         f"(registered: {', '.join(sorted(['local', *_FACTORIES]))})", spec)
    return factory(spec)


# ---- attempts: one policy for every executor ---------------------------------------------------


def run_attempts(task: StepTask, once: Callable[[StepTask, int], StepOutcome],
                 sleep: Callable[[float], None] = time.sleep) -> StepOutcome:
    """Call ``once(task, attempt)`` until it succeeds or ``1 + task.retries`` attempts are spent, waiting
    ``backoff * 2**(n-1)`` seconds (at most 60) before retry n; every attempt is recorded in the outcome."""
    log: list[dict[str, Any]] = []
    outcome = StepOutcome(status="failed", error="no attempt ran")
    for attempt in range(1, task.retries + 2):
        if attempt > 1:
            delay = min(60.0, task.backoff * 2 ** (attempt - 2))
            log[-1]["retry_in"] = round(delay, 3)
            sleep(delay)
        t0, started = time.perf_counter(), time.time()
        outcome = once(task, attempt)
        log.append({"attempt": attempt, "status": outcome.status, "started_at": started,
                    "seconds": round(time.perf_counter() - t0, 4), "error": outcome.error})
        if outcome.status == "ok":
            break
    outcome.attempts = log
    return outcome


def call_in_thread(task: StepTask, attempt: int) -> StepOutcome:
    """One attempt in this thread (no timeout can stop it: steps with a timeout go to a child process)."""
    ctx = task.ctx
    if ctx is not None:
        ctx.lineage.clear()
        ctx.attempt = attempt
    try:
        kwargs = dict(task.kwargs)
        if task.step.wants_ctx:
            kwargs["ctx"] = ctx
        value = task.step.fn(**kwargs)
        task.step.split_outputs(value)  # a wrong arity fails the attempt, not the pipeline
    except Exception as exc:
        return StepOutcome(status="failed", error=f"{type(exc).__name__}: {exc}",
                           detail="".join(traceback.format_exception(exc)[-6:]).strip()[-4000:],
                           lineage=dict(ctx.lineage) if ctx is not None else {})
    return StepOutcome(status="ok", value=value, lineage=dict(ctx.lineage) if ctx is not None else {})


def call_in_child(task: StepTask, attempt: int) -> StepOutcome:
    """One attempt in a child process, killed (its whole process group) when it runs past ``task.timeout``.

    The timeout counts from the moment the child starts the step function (not while it starts up and
    imports the step's module). Children fork from a server process that has modelmill imported already.
    """
    from modelmill.training.pipeline import ChildContext

    ctx = task.ctx
    child_ctx = ChildContext.of(ctx, attempt) if ctx is not None else None
    try:
        payload = pickle.dumps((list(sys.path), _dumps((task.step, task.kwargs, child_ctx))))
    except Exception as exc:
        return StepOutcome(status="failed", error=f"step {task.step.name!r} cannot be sent to a child process "
                           f"(a timeout runs it in one): {type(exc).__name__}: {exc}")
    parent, child = _MP.Pipe(duplex=False)
    proc = _MP.Process(target=_child_main, args=(payload, child), daemon=True,
                       name=f"modelmill-step-{task.step.name}")
    proc.start()
    child.close()
    try:
        try:
            started = parent.poll(STARTUP_SECONDS) and parent.recv_bytes() == b"started"
        except (EOFError, OSError):
            started = False
        if not started:
            _kill(proc)
            return StepOutcome(status="failed", error=f"ChildProcessError: step {task.step.name!r}'s process did "
                               f"not start within {STARTUP_SECONDS} s (exit code {proc.exitcode})")
        if not parent.poll(task.timeout):
            _kill(proc)
            return StepOutcome(status="timed_out",
                               error=f"TimeoutError: step {task.step.name!r} ran past its timeout of "
                                     f"{task.timeout:g} s and was stopped")
        try:
            message = pickle.loads(parent.recv_bytes())
        except (EOFError, OSError):
            proc.join(5)
            return StepOutcome(status="failed", error=f"ChildProcessError: step {task.step.name!r}'s process "
                                                      f"exited with code {proc.exitcode} before it answered")
    finally:
        parent.close()
        if proc.is_alive():
            proc.join(5)
        _kill(proc)
    if message["status"] == "ok":
        return StepOutcome(status="ok", value=message["value"], lineage=message["lineage"])
    return StepOutcome(status="failed", error=message["error"], detail=message.get("detail"),
                       lineage=message["lineage"])


def _dumps(obj: Any) -> bytes:
    try:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, AttributeError, TypeError):
        import cloudpickle  # steps defined in a function or a notebook: sent by value

        return bytes(cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def _kill(proc: Any) -> None:
    if proc.pid is None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)  # the child leads its own group: what it started stops too
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(proc.pid, sig)
            except ProcessLookupError:
                return
        proc.join(2)
        if not proc.is_alive():
            return


def run_pickled_attempt(inner: bytes, where: str) -> tuple[bool, bytes]:
    """One attempt of a pickled ``(step, kwargs, ctx)``, in the process that runs it (a child process, a Ray
    worker): whether the step could be loaded there, and the pickled message (status, value or error, lineage)."""
    try:
        step, kwargs, ctx = pickle.loads(inner)
    except Exception as exc:
        return False, pickle.dumps({"status": "failed", "lineage": {},
                                    "error": f"the step cannot be loaded {where}: {type(exc).__name__}: {exc}"})
    try:
        if step.wants_ctx:
            kwargs["ctx"] = ctx
        value = step.fn(**kwargs)
        step.split_outputs(value)
        message: dict[str, Any] = {"status": "ok", "value": value}
    except Exception as exc:
        message = {"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                   "detail": "".join(traceback.format_exception(exc)[-6:]).strip()[-4000:]}
    lineage: dict[str, Any] = {}
    if ctx is not None:
        ctx.close(failed=message["status"] != "ok")
        lineage = dict(ctx.lineage)
    message["lineage"] = lineage
    try:
        return True, _dumps(message)
    except Exception as exc:
        return True, pickle.dumps({"status": "failed", "lineage": lineage,
                                   "error": f"step {step.name!r} returned a value that cannot be pickled: {exc}"})


def _child_main(payload: bytes, conn: Any) -> None:
    os.setpgrp()
    path, inner = pickle.loads(payload)
    sys.path[:] = path  # the parent's, as it is now: the step's module imports here as it did there
    conn.send_bytes(b"started")
    conn.send_bytes(run_pickled_attempt(inner, "in its process")[1])
    conn.close()


class LocalExecutor:
    """Steps in threads of this process (at most ``max_workers`` at once); timed steps in child processes."""

    name = "local"

    def __init__(self, *, max_workers: int | None = None) -> None:
        workers = max_workers or min(32, (os.cpu_count() or 2) * 2)
        if workers < 1:
            raise InputError("max_workers", "must be at least 1", workers)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mm-step")
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"LocalExecutor(max_workers={self._pool._max_workers})"

    def submit(self, task: StepTask) -> concurrent.futures.Future[StepOutcome]:
        once = call_in_child if task.timeout is not None else call_in_thread
        return self._pool.submit(run_attempts, task, once)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
