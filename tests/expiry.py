"""Watching a value expire by ordering, not by timing: present while its TTL cannot have run out, gone later.

A read that ended less than ``ttl_s`` after its write began must see the value (the store may not drop it
early); a later read may see either, and the value must be gone within ``bound_s`` and stay gone. No read
is judged by how long it took, so a slow or loaded machine cannot fail the check, only make it try again:
when not one read saw the value (the machine stalled past the TTL right after the write), that is no data,
and the write is made again, at most ``tries`` times, before the check fails.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["watch_expiry"]


def watch_expiry(write: Callable[[], object], present: Callable[[], bool], ttl_s: float, *,
                 bound_s: float = 30.0, tries: int = 5) -> list[bool]:
    """``write()`` a value with ``ttl_s``, poll ``present()`` until it is gone; returns every answer of the
    successful try, in order."""
    for _ in range(tries):
        reads: list[bool] = []
        began = time.monotonic()
        write()
        while True:
            answer = present()
            ended = time.monotonic() - began
            reads.append(answer)
            if not answer:
                assert ended >= ttl_s, f"gone {ended:.3f} s after a write with a TTL of {ttl_s} s"
                break
            assert ended < bound_s, f"still there {ended:.1f} s after a write with a TTL of {ttl_s} s"
            time.sleep(min(0.05, ttl_s / 10))
        if reads[0]:
            # gone for good: a few more reads a little later, past any clock granularity
            for _ in range(3):
                time.sleep(min(0.05, ttl_s / 10))
                reads.append(present())
                assert not reads[-1], "the value came back after it expired"
            return reads
    raise AssertionError(f"no data: in {tries} tries no read came soon enough after the write to see the value")
