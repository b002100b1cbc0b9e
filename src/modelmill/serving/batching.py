"""Adaptive micro-batching: concurrent requests share one call (a model's ``predict``, a feature lookup).

The batch is closed as soon as a pass of the event loop brings no new
request, or after ``max_wait_us``, or at ``max_batch_size`` rows, whichever
comes first. So a lone caller waits only one loop pass, while under load
every request that arrived during the previous batch joins the next one; the
server never sits idle waiting for a batch to fill. Every caller gets
exactly its own rows back; a batch that fails is retried request by
request, so one bad input cannot fail its neighbours.

    >>> import asyncio, numpy as np
    >>> b = Batcher(lambda X: X.sum(axis=1), max_batch_size=8, max_wait_us=200)
    >>> async def main():
    ...     rows = [np.array([[i, 1.0]]) for i in range(4)]
    ...     return await asyncio.gather(*(b.submit(r) for r in rows))
    >>> [float(r[0]) for r in asyncio.run(main())]
    [1.0, 2.0, 3.0, 4.0]
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from modelmill.serving import metrics

__all__ = ["Batcher"]


def _concat(items: Sequence[Any]) -> Any:
    if isinstance(items[0], np.ndarray):
        return np.concatenate(items)
    out: list[Any] = []
    for item in items:
        out.extend(item)
    return out


class Batcher:
    """Batches ``submit(rows)`` calls to one function ``fn(rows) -> outputs``, one output row per input row.

    ``rows`` is a ``[n, k]`` array (concatenated along rows) or a list (chained).
    ``flat``: outputs are ``[n]`` (a model's scores); otherwise any ``[n, ...]``.
    ``executor``: run ``fn`` in this thread pool instead of inline on the event
    loop (for slow models; a fast one is quicker inline). ``on_batch`` gets
    each batch's row count (the batch-size histogram). ``queue``: ``(model, version,
    queue)`` labels under which :attr:`pending` is exported as the gauge
    ``modelmill_batch_queue_depth`` (see :func:`modelmill.serving.metrics.track_queue`).
    """

    def __init__(
        self,
        fn: Callable[[Any], Any],
        *,
        max_batch_size: int = 64,
        max_wait_us: int = 500,
        executor: concurrent.futures.Executor | None = None,
        on_batch: Callable[[int], None] | None = None,
        flat: bool = True,
        queue: tuple[str, str, str] | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self.fn = fn
        self.max_batch_size = max_batch_size
        self.max_wait_s = max(0, max_wait_us) / 1e6
        self.executor = executor
        self.on_batch = on_batch
        self.flat = flat
        self._pending: list[tuple[Any, asyncio.Future[np.ndarray]]] = []
        self._rows = 0
        self._task: asyncio.Task[None] | None = None
        if queue is not None:
            metrics.track_queue(self, *queue)

    def __repr__(self) -> str:
        return f"Batcher(max_batch_size={self.max_batch_size}, max_wait_us={int(self.max_wait_s * 1e6)})"

    @property
    def pending(self) -> int:
        """Requests waiting for a batch."""
        return len(self._pending)

    def submit(self, rows: Any) -> asyncio.Future[np.ndarray]:
        """Queue ``rows``; the future resolves to this request's outputs (one per row)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[np.ndarray] = loop.create_future()
        self._pending.append((rows, fut))
        self._rows += len(rows)
        if self._task is None:
            self._task = loop.create_task(self._drain())
        return fut

    async def _drain(self) -> None:
        try:
            while self._pending:
                if self.max_batch_size > 1:
                    await self._gather()
                await self._run(self._take())
        finally:
            self._task = None
            if self._pending:  # cancelled with work left: fail it rather than hang the callers
                for _, fut in self._take():
                    if not fut.done():
                        fut.set_exception(RuntimeError("the batcher stopped"))

    async def _gather(self) -> None:
        """Yield to the loop while requests keep arriving (never idle), within the batch limits."""
        deadline = time.perf_counter() + self.max_wait_s
        seen = -1
        while seen != len(self._pending) and self._rows < self.max_batch_size:
            seen = len(self._pending)
            await asyncio.sleep(0)
            if time.perf_counter() >= deadline:
                break

    def _take(self) -> list[tuple[Any, asyncio.Future[np.ndarray]]]:
        n, rows = 0, 0
        for X, _ in self._pending:
            if n and rows + len(X) > self.max_batch_size:
                break
            n += 1
            rows += len(X)
        batch, self._pending = self._pending[:n], self._pending[n:]
        self._rows -= rows
        return batch

    async def _call(self, X: Any) -> Any:
        if self.executor is None:
            return self.fn(X)
        return await asyncio.get_running_loop().run_in_executor(self.executor, self.fn, X)

    async def _run(self, batch: list[tuple[Any, asyncio.Future[np.ndarray]]]) -> None:
        batch = [(X, fut) for X, fut in batch if not fut.cancelled()]
        if not batch:
            return
        if len(batch) == 1:
            X, fut = batch[0]
            await self._one(X, fut)
            return
        X = _concat([x for x, _ in batch])
        if self.on_batch is not None:
            self.on_batch(len(X))
        try:
            out = self._check(await self._call(X), len(X))
        except Exception:
            # Find the culprit: every request runs alone, so only the bad one fails.
            for x, fut in batch:
                await self._one(x, fut, count=False)
            return
        start = 0
        for x, fut in batch:
            end = start + len(x)
            if not fut.done():
                fut.set_result(out[start:end])
            start = end

    async def _one(self, X: Any, fut: asyncio.Future[np.ndarray], *, count: bool = True) -> None:
        if count and self.on_batch is not None:
            self.on_batch(len(X))
        try:
            out = self._check(await self._call(X), len(X))
        except Exception as exc:
            if not fut.done():
                fut.set_exception(exc)
            return
        if not fut.done():
            fut.set_result(out)

    def _check(self, out: Any, n: int) -> np.ndarray:
        arr = np.asarray(out, dtype=np.float64)
        if self.flat and arr.ndim != 1 and arr.size == n:
            arr = arr.reshape(n)
        if arr.ndim == 0 or arr.shape[0] != n or (self.flat and arr.ndim != 1):
            want = f"({n},)" if self.flat else f"({n}, ...)"
            raise ValueError(f"the function returned shape {arr.shape} for {n} rows; expected {want}")
        return arr
