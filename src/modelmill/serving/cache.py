"""The prediction cache: an in-process LRU, optionally in front of a shared store (Redis).

Keys are ``{model}:{version}:{digest of the input rows}``, so a new model
version can never answer from an old version's entries, even when an alias
moves back and forth.

    >>> import numpy as np
    >>> cache = PredictionCache(max_items=10)
    >>> X = np.array([[1.0, 2.0]])
    >>> key = cache.key("m", 1, X)
    >>> cache.get(key) is None
    True
    >>> cache.put(key, np.array([0.25])); cache.get(key)
    array([0.25])
    >>> cache.get(cache.key("m", 2, X)) is None   # another version, another key
    True
    >>> (cache.hits, cache.misses)
    (1, 2)
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

from modelmill.errors import StoreError
from modelmill.store import KeyValue, MemoryKV

__all__ = ["PredictionCache"]

log = logging.getLogger(__name__)


class PredictionCache:
    """LRU of ``max_items`` entries; ``shared`` (a Redis ``KeyValue``) is consulted on a local miss.

    ``on_result(hit: bool)`` feeds the hit/miss counters of ``/metrics``.
    A shared store that fails is skipped (a cache must never fail a prediction). On the event loop,
    :meth:`lookup` reads it in the store's thread pool and waits at most ``timeout_s``, and :meth:`put`
    queues the write for a background thread (at most ``max_queued`` waiting; more are dropped), so a
    hung Redis never holds a request up; while the store's circuit breaker is open it is not asked at all.
    """

    def __init__(
        self,
        *,
        max_items: int = 50_000,
        shared: KeyValue | None = None,
        ttl_s: float | None = 300.0,
        on_result: Callable[[bool], None] | None = None,
        timeout_s: float = 0.05,
        max_queued: int = 10_000,
    ) -> None:
        self.max_items = max_items
        self.shared = None if isinstance(shared, MemoryKV) else shared
        self.ttl_s = ttl_s
        self.on_result = on_result
        self.timeout_s = timeout_s
        self.hits = 0
        self.misses = 0
        #: Shared-store reads given up (slow, failed or skipped while its breaker was open) and writes dropped.
        self.shared_skipped = 0
        self.writes_dropped = 0
        self._lru: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self._writes: queue.Queue[tuple[str, bytes] | threading.Event | None] = queue.Queue(max_queued)
        self._writer: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"PredictionCache(max_items={self.max_items}, shared={self.shared!r})"

    @staticmethod
    def key(model: str, version: int, X: np.ndarray) -> str:
        digest = hashlib.blake2b(X.tobytes(), digest_size=16, person=str(X.shape[1]).encode()[:16])
        return f"{model}:{version}:{digest.hexdigest()}"

    def _local(self, key: str) -> bytes | None:
        with self._lock:
            raw = self._lru.get(key)
            if raw is not None:
                self._lru.move_to_end(key)
        return raw

    def _count(self, raw: bytes | None) -> np.ndarray | None:
        hit = raw is not None
        if hit:
            self.hits += 1
        else:
            self.misses += 1
        if self.on_result is not None:
            self.on_result(hit)
        return None if raw is None else np.frombuffer(raw, dtype=np.float64)

    def get(self, key: str) -> np.ndarray | None:
        """The cached output, reading the shared store in this thread (off the event loop; there, use :meth:`lookup`)."""
        raw = self._local(key)
        if raw is None and self.shared is not None:
            try:
                raw = self.shared.get(key)
            except StoreError:
                self.shared_skipped += 1
            if raw is not None:
                self._remember(key, raw)
        return self._count(raw)

    async def lookup(self, key: str) -> np.ndarray | None:
        """:meth:`get` for the event loop: an in-process hit costs no thread hop, a shared read waits at most
        ``timeout_s`` (a read slower than that counts as a failure of the store's circuit breaker)."""
        raw = self._local(key)
        shared = self.shared
        if raw is None and shared is not None:
            raw = await self._shared_get(shared, key)
            if raw is not None:
                self._remember(key, raw)
        return self._count(raw)

    async def _shared_get(self, shared: KeyValue, key: str) -> bytes | None:
        breaker, executor = shared.breaker, shared.executor
        if breaker is not None and breaker.blocked():
            self.shared_skipped += 1
            return None
        try:
            if executor is None:
                return shared.get(key)
            pending = asyncio.get_running_loop().run_in_executor(executor, shared.get, key)
            return await asyncio.wait_for(pending, self.timeout_s)
        except TimeoutError:
            if breaker is not None:
                breaker.failure(f"no answer to a cache read within {self.timeout_s} s")
        except StoreError:
            pass
        self.shared_skipped += 1
        return None

    def put(self, key: str, out: np.ndarray) -> None:
        """Remember ``out`` here at once; the shared store gets it from a background thread (see :meth:`flush`)."""
        raw = np.ascontiguousarray(out, dtype=np.float64).tobytes()
        self._remember(key, raw)
        if self.shared is not None:
            if self._writer is None:
                self._start_writer()
            try:
                self._writes.put_nowait((key, raw))
            except queue.Full:
                self.writes_dropped += 1

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued shared write has been tried; False if that took over ``timeout`` s."""
        if self._writer is None:
            return True
        done = threading.Event()
        self._writes.put(done, timeout=timeout)
        return done.wait(timeout)

    def close(self) -> None:
        """Stop the background writer (what is still queued is dropped)."""
        writer, self._writer = self._writer, None
        if writer is not None:
            self._writes.put(None)
            writer.join(timeout=5)

    def _start_writer(self) -> None:
        with self._lock:
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_loop, name="modelmill-cache-writer", daemon=True)
                self._writer.start()

    def _write_loop(self) -> None:
        shared = self.shared
        assert shared is not None
        while True:
            item = self._writes.get()
            batch: dict[str, bytes] = {}
            marks: list[threading.Event] = []
            stop = False
            while True:  # drain what is queued: one pipelined write for many puts
                if item is None:
                    stop = True
                elif isinstance(item, threading.Event):
                    marks.append(item)
                else:
                    batch[item[0]] = item[1]
                if stop or len(batch) >= 1000:
                    break
                try:
                    item = self._writes.get_nowait()
                except queue.Empty:
                    break
            if batch:
                try:
                    shared.set_many(batch, ttl=self.ttl_s)
                except StoreError:
                    self.writes_dropped += len(batch)  # a cache write may be lost; the breaker says why
                except Exception:  # the writer must outlive any one write
                    log.exception("writing to the shared prediction cache failed")
                    self.writes_dropped += len(batch)
            for mark in marks:
                mark.set()
            if stop:
                return

    def _remember(self, key: str, raw: bytes) -> None:
        with self._lock:
            self._lru[key] = raw
            self._lru.move_to_end(key)
            while len(self._lru) > self.max_items:
                self._lru.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._lru.clear()
