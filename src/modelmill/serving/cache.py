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

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

from modelmill.errors import StoreError
from modelmill.store import KeyValue, MemoryKV

__all__ = ["PredictionCache"]


class PredictionCache:
    """LRU of ``max_items`` entries; ``shared`` (a Redis ``KeyValue``) is consulted on a local miss.

    ``on_result(hit: bool)`` feeds the hit/miss counters of ``/metrics``.
    A shared store that fails is skipped (a cache must never fail a prediction).
    """

    def __init__(
        self,
        *,
        max_items: int = 50_000,
        shared: KeyValue | None = None,
        ttl_s: float | None = 300.0,
        on_result: Callable[[bool], None] | None = None,
    ) -> None:
        self.max_items = max_items
        self.shared = None if isinstance(shared, MemoryKV) else shared
        self.ttl_s = ttl_s
        self.on_result = on_result
        self.hits = 0
        self.misses = 0
        self._lru: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"PredictionCache(max_items={self.max_items}, shared={self.shared!r})"

    @staticmethod
    def key(model: str, version: int, X: np.ndarray) -> str:
        digest = hashlib.blake2b(X.tobytes(), digest_size=16, person=str(X.shape[1]).encode()[:16])
        return f"{model}:{version}:{digest.hexdigest()}"

    def get(self, key: str) -> np.ndarray | None:
        with self._lock:
            raw = self._lru.get(key)
            if raw is not None:
                self._lru.move_to_end(key)
        if raw is None and self.shared is not None:
            try:
                raw = self.shared.get(key)
            except StoreError:
                raw = None
            if raw is not None:
                self._remember(key, raw)
        hit = raw is not None
        if hit:
            self.hits += 1
        else:
            self.misses += 1
        if self.on_result is not None:
            self.on_result(hit)
        return None if raw is None else np.frombuffer(raw, dtype=np.float64)

    def put(self, key: str, out: np.ndarray) -> None:
        raw = np.ascontiguousarray(out, dtype=np.float64).tobytes()
        self._remember(key, raw)
        if self.shared is not None:
            try:
                self.shared.set(key, raw, ttl=self.ttl_s)
            except StoreError:
                pass

    def _remember(self, key: str, raw: bytes) -> None:
        with self._lock:
            self._lru[key] = raw
            self._lru.move_to_end(key)
            while len(self._lru) > self.max_items:
                self._lru.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._lru.clear()
