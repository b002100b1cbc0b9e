"""The contract of key-value backends (:class:`~modelmill.store.KeyValue`): the online store and the cache sit on it.

Each sub-check asks ``make_kv()`` for a new, empty store and closes it afterwards.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from modelmill.store import KeyValue
from modelmill.testing.base import expect, run_checks

__all__ = ["KV_CHECKS", "check_kv", "on_fresh_store", "watch_expiry"]


def watch_expiry(write: Callable[[], object], present: Callable[[], bool], ttl_s: float, *,
                 bound_s: float = 30.0, tries: int = 5) -> list[bool]:
    """``write()`` a value with ``ttl_s``, poll ``present()`` until it is gone; every answer of the try, in order.

    Judged by ordering, not timing: a read that ended less than ``ttl_s`` after its write began must see the
    value; a later read may see either, and the value must be gone within ``bound_s`` and stay gone. When not
    one read saw the value (the machine stalled past the TTL right after the write), that is no data, and the
    write is made again, at most ``tries`` times, before the check fails.
    """
    for _ in range(tries):
        reads: list[bool] = []
        began = time.monotonic()
        write()
        while True:
            answer = present()
            ended = time.monotonic() - began
            reads.append(answer)
            if not answer:
                expect(ended >= ttl_s, f"gone {ended:.3f} s after a write with a TTL of {ttl_s} s")
                break
            expect(ended < bound_s, f"still there {ended:.1f} s after a write with a TTL of {ttl_s} s")
            time.sleep(min(0.05, ttl_s / 10))
        if reads[0]:
            for _ in range(3):  # gone for good: a few more reads a little later, past any clock granularity
                time.sleep(min(0.05, ttl_s / 10))
                reads.append(present())
                expect(not reads[-1], "the value came back after it expired")
            return reads
    raise AssertionError(f"no data: in {tries} tries no read came soon enough after the write to see the value")


def _overwrites(kv: KeyValue) -> None:
    """get gives None for a missing key and the last value set"""
    expect(kv.get("a") is None, f"get of a key never set gave {kv.get('a')!r}")
    kv.set("a", b"1")
    kv.set("a", b"2")
    expect(kv.get("a") == b"2", f"get after set 1, set 2 gave {kv.get('a')!r}")


def _mget_keeps_order(kv: KeyValue) -> None:
    """mget answers in the order asked, None for missing keys, for 1,200 keys at once"""
    kv.set_many({f"k{i}": str(i).encode() for i in range(1_200)})
    got = kv.mget(["k5", "nope", "k1199", "k0"])
    expect(got == [b"5", None, b"1199", b"0"], f"mget(['k5', 'nope', 'k1199', 'k0']) gave {got!r}")
    expect(kv.mget([]) == [], f"mget([]) gave {kv.mget([])!r}")
    found = sum(v is not None for v in kv.mget([f"k{i}" for i in range(1_200)]))
    expect(found == 1_200, f"mget of 1200 keys set by set_many found {found}")


def _ttl_expires(kv: KeyValue) -> None:
    """a value set with a TTL is there until the TTL and gone after it, from get, mget and scan"""
    kv.set("long", b"y", ttl=600)

    def present() -> bool:
        value = kv.get("short")
        expect(value in (None, b"x"), f"get of a key set to b'x' gave {value!r}")
        return value is not None

    watch_expiry(lambda: kv.set("short", b"x", ttl=1.0), present, ttl_s=1.0)
    got = kv.mget(["short", "long"])
    expect(got == [None, b"y"], f"mget after the 1 s TTL ran out gave {got!r} (want [None, b'y'])")
    expect(list(kv.scan("short")) == [], "scan still lists a key whose TTL ran out")


def _delete_counts(kv: KeyValue) -> None:
    """delete removes the keys and counts those that existed"""
    kv.set_many({"d1": b"1", "d2": b"2"})
    n = kv.delete("d1", "d2", "d3")
    expect(n == 2, f"delete of two existing keys and one missing key counted {n}")
    expect(kv.get("d1") is None, "a deleted key is still there")
    expect(kv.delete() == 0, "delete() of no keys did not count 0")


def _scan_by_prefix(kv: KeyValue) -> None:
    """scan lists the keys that start with the prefix, glob characters taken literally"""
    kv.set_many({"user:1": b"a", "user:2": b"b", "user*:x": b"c", "item:1": b"d", "use": b"e"})
    for prefix, want in (("user:", ["user:1", "user:2"]), ("user*", ["user*:x"])):
        got = sorted(kv.scan(prefix))
        expect(got == want, f"scan({prefix!r}) gave {got}, want {want}")
    every = sorted(kv.scan(""))
    expect(len(every) == 5, f"scan('') of a store with 5 keys gave {every} (is the store from make_kv() empty?)")


def _binary_values(kv: KeyValue) -> None:
    """values are bytes, returned byte for byte"""
    blob = bytes(range(256)) * 4
    kv.set("bin", blob)
    expect(kv.get("bin") == blob, "a 1 kB binary value came back changed")


def _concurrent_writers(kv: KeyValue) -> None:
    """writes from 4 threads at once all land"""
    def work(t: int) -> None:
        for i in range(100):
            kv.set(f"t{t}:{i}", f"{t}-{i}".encode())

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    n = len(list(kv.scan("t")))
    expect(n == 400, f"4 threads wrote 100 keys each, scan finds {n}")
    expect(kv.get("t3:99") == b"3-99", f"get('t3:99') gave {kv.get('t3:99')!r}")


def _pings(kv: KeyValue) -> None:
    """ping answers with a round trip in seconds"""
    rtt = kv.ping()
    expect(0 <= rtt < 5, f"ping() gave {rtt!r}")


KV_CHECKS: dict[str, Callable[[KeyValue], None]] = {
    "overwrites": _overwrites,
    "mget_keeps_order": _mget_keeps_order,
    "ttl_expires": _ttl_expires,
    "delete_counts": _delete_counts,
    "scan_by_prefix": _scan_by_prefix,
    "binary_values": _binary_values,
    "concurrent_writers": _concurrent_writers,
    "pings": _pings,
}


def on_fresh_store(fn: Callable[[KeyValue], None]) -> Callable[[Callable[[], KeyValue]], None]:
    """``fn`` as a sub-check given the factory: run on a new store from it (which must be empty), then closed."""
    def run(make: Callable[[], KeyValue]) -> None:
        kv = make()
        try:
            expect(next(iter(kv.scan("")), None) is None, "the factory must give a new, empty store; it has keys")
            fn(kv)
        finally:
            kv.close()
    run.__doc__ = fn.__doc__
    return run


def check_kv(make_kv: Callable[[], KeyValue], *, checks: Iterable[str] | None = None) -> None:
    """Check that a :class:`~modelmill.store.KeyValue` backend keeps the contract (sub-checks: :data:`KV_CHECKS`).

    ``make_kv()`` gives a new, empty store each time; the check closes it. Takes about a second (one TTL).

        >>> from modelmill.store import MemoryKV
        >>> check_kv(MemoryKV)
    """
    run_checks("check_kv", {name: on_fresh_store(fn) for name, fn in KV_CHECKS.items()}, checks, make_kv)
