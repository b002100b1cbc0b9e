"""String (BYTES, categorical) inputs on a serving path that carries float64 matrices.

Every part of the prediction path (the micro-batcher, the prediction cache, the
prediction log, shadows) works on an ``[n, k]`` float64 matrix. A model with
``string`` columns in its signature keeps that: each string is replaced at the
edge by a float *code*, and the model's own predict function gets the strings
back (:meth:`StringCodes.decode`) just before it runs.

A code is the same on every worker and after every restart, so the shared
prediction cache and the log mean the same thing everywhere:

- a category the model was fitted on (a ``OneHotEncoder``'s or ``OrdinalEncoder``'s
  ``categories_``, found by the flavor) is its index in that list: ``0, 1, 2, ...``;
- any other string is ``-(1 + h)`` with ``h`` the first 52 bits of its BLAKE2b hash
  (a float64 holds it exactly).

The strings behind hashed codes are remembered (at most ``max_strings`` of them,
least recently used dropped) only for the time between a request's decoding and
its model call.

    >>> codes = StringCodes(["city", "x"], {"city": ["paris", "rome"]})
    >>> codes.encode(0, ["rome", "paris"]).tolist()
    [1.0, 0.0]
    >>> X = np.column_stack([codes.encode(0, ["rome", "oslo"]), [1.5, 2.5]])
    >>> codes.decode(X).tolist()
    [['rome', 1.5], ['oslo', 2.5]]
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["StringCodes", "hash_code"]

_MASK = (1 << 52) - 1


def hash_code(value: str) -> float:
    """The code of a string the model has no category for (negative, exact in float64)."""
    h = int.from_bytes(hashlib.blake2b(value.encode("utf-8"), digest_size=8).digest(), "little") & _MASK
    return -1.0 - float(h)


class StringCodes:
    """The codes of one model version's string columns; see the module docstring."""

    def __init__(self, columns: Sequence[str], categories: Mapping[str, Sequence[str]] | None = None, *,
                 string_columns: Sequence[str] | None = None, max_strings: int = 100_000) -> None:
        cats = dict(categories or {})
        names = list(string_columns) if string_columns is not None else list(cats)
        self.columns = list(columns)
        self.positions = [self.columns.index(c) for c in names]
        self.position_set = frozenset(self.positions)
        self.categories: dict[int, list[str]] = {p: [str(v) for v in cats.get(self.columns[p], ())]
                                                 for p in self.positions}
        self._index = {p: {v: float(i) for i, v in enumerate(vals)} for p, vals in self.categories.items()}
        self.max_strings = max_strings
        self._seen: OrderedDict[float, str] = OrderedDict()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"StringCodes(columns={[self.columns[p] for p in self.positions]})"

    def encode(self, pos: int, values: Sequence[str] | np.ndarray) -> np.ndarray:
        """The codes of ``values`` (strings) for the column at ``pos``."""
        index = self._index[pos]
        out = np.empty(len(values), dtype=np.float64)
        fresh: list[tuple[float, str]] = []
        for i, v in enumerate(values):
            code = index.get(v)
            if code is None:
                code = hash_code(v)
                fresh.append((code, v))
            out[i] = code
        if fresh:
            with self._lock:
                seen = self._seen
                for code, v in fresh:
                    seen[code] = v
                    seen.move_to_end(code)
                while len(seen) > self.max_strings:
                    seen.popitem(last=False)
        return out

    def decode(self, X: np.ndarray) -> np.ndarray:
        """``X`` as an object matrix whose string columns hold the strings again."""
        obj = X.astype(object)
        for p in self.positions:
            cats = self.categories[p]
            codes = X[:, p].tolist()
            with self._lock:
                seen = self._seen
                strs = [cats[int(c)] if c >= 0 else seen.get(c) for c in codes]
            if None in strs:
                raise ValueError(f"a string input of column {self.columns[p]!r} is no longer known "
                                 f"(more than {self.max_strings} distinct strings in flight)")
            obj[:, p] = strs
        return obj

    def wrap(self, predict: Callable[[Any], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
        """``predict`` taking code matrices: the strings are put back before it runs."""
        decode = self.decode

        def run(X: np.ndarray) -> np.ndarray:
            return predict(decode(X))
        return run
