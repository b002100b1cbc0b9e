"""The contract of event sources and publishers (:class:`~modelmill.ingest.Source`, :class:`~modelmill.ingest.Publisher`).

Each sub-check asks ``make_stream()`` for a fresh, empty stream, so one sub-check's events never reach another.
Every wait is bounded: a poll waits at most half a second, a drain at most ``timeout`` seconds (redelivery of
unacked events takes the broker's own timer, ``Source.redelivery_after``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import orjson

from modelmill.ingest import Publisher, Source
from modelmill.testing.base import expect, run_checks

__all__ = ["PUBLISHER_CHECKS", "SOURCE_CHECKS", "Stream", "check_publisher", "check_source"]


class Stream(Protocol):
    """One fresh stream on a broker: what :func:`check_source` and :func:`check_publisher` are given.

    ``source`` opens a consumer of ``group`` named ``consumer``; ``publisher`` a producer (``options`` such as
    ``partitions=2`` go to the publisher that creates the stream).
    """

    def source(self, group: str = ..., consumer: str = ...) -> Source: ...

    def publisher(self, **options: Any) -> Publisher: ...


def events(n: int, start: int = 0) -> list[bytes]:
    """``n`` distinct JSON payloads."""
    return [orjson.dumps({"id": f"e{i:07d}", "user": i % 997, "price": round(i * 0.25, 2)})
            for i in range(start, start + n)]


def drain(src: Source, want: int, *, ack: bool = True, timeout: float = 30.0, size: int = 5_000,
          unique: bool = False) -> list[bytes]:
    """Poll until ``want`` payloads (``unique``: distinct payloads) arrived, or ``timeout`` seconds passed."""
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while (len(set(got)) if unique else len(got)) < want and time.monotonic() < deadline:
        polled = src.poll(min(size, max(1, want - len(got))), 0.5)
        got.extend(polled.payloads)
        if ack:
            src.ack([polled])
    return got


def _group() -> str:
    return f"mmcheck-{uuid.uuid4().hex[:8]}"


def _same(got: list[bytes], want: list[bytes], what: str) -> None:
    if got == want:
        return
    if len(got) != len(want):
        raise AssertionError(f"{what}: {len(got)} events arrived, {len(want)} were published")
    first = next(i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b)
    raise AssertionError(f"{what}: event {first} differs (got {got[first][:60]!r}, published {want[first][:60]!r})")


# ---- sources ----------------------------------------------------------------------------------------------------

def _delivers_in_order(make_stream: Callable[[], Stream], partitioned: Mapping[str, Any]) -> None:
    """delivers a one-partition stream in publish order, forgets acked events, and the group's position outlives its consumer"""
    stream, group, sent = make_stream(), _group(), events(3_000)
    with stream.publisher() as pub:
        pub.publish(sent[:1_000])
        pub.publish(sent[1_000:])
    with stream.source(group=group, consumer="c1") as src:
        _same(drain(src, len(sent)), sent, "polling a published stream")
        left = src.poll(100, 0.3).payloads
        expect(left == [], f"{len(left)} events came back after every event was acked")
        lag = src.lag()
        expect(lag in (0, None), f"lag() is {lag} with every event delivered and acked")
    with stream.source(group=group, consumer="c2") as again:
        left = again.poll(100, 1.0).payloads
        expect(left == [], f"a new consumer of the group got {len(left)} events its group had acked")


def _redelivers_unacked(make_stream: Callable[[], Stream], partitioned: Mapping[str, Any]) -> None:
    """delivers again the events a consumer polled and never acked (at least once)"""
    stream, group, sent = make_stream(), _group(), events(500)
    with stream.publisher() as pub:
        pub.publish(sent)
    with stream.source(group=group, consumer="c1") as src:
        _same(drain(src, 300, ack=False), sent[:300], "the first 300 events")
    with stream.source(group=group, consumer="c1") as src:
        wait = (src.redelivery_after or 0.0) + 30.0
        again = drain(src, len(sent), timeout=wait, unique=True)  # repeats are allowed
    missing = set(sent) - set(again)
    expect(not missing, f"{len(missing)} of {len(sent)} events never came back after the consumer left "
                        f"without acking (waited {wait:.0f} s)")
    expect(set(again) <= set(sent), "events that were never published arrived")


def _counts_lag(make_stream: Callable[[], Stream], partitioned: Mapping[str, Any]) -> None:
    """lag() counts the events not yet delivered to the group (within 50 of 1,000)"""
    stream, group = make_stream(), _group()
    with stream.publisher() as pub:
        pub.publish(events(1_000))
    with stream.source(group=group, consumer="c1") as src:
        got = len(drain(src, 400, size=100))
        lag = src.lag()
        if lag is None:
            raise AssertionError("lag() is None: a source that cannot count its backlog fails this check")
        expect(abs(lag - (1_000 - got)) <= 50, f"lag() is {lag} after {got} of 1000 events were delivered")


def _splits_a_group(make_stream: Callable[[], Stream], partitioned: Mapping[str, Any]) -> None:
    """two consumers of one group split the events between them, none to both"""
    # Events are published while both consumers poll, 200 at a time, until each consumer has had some (at most
    # 20,000 events, 120 s): a broker that rebalances a second member in slowly (Kafka takes seconds, more on a
    # loaded machine) then still has events left to give it, instead of the first member draining a fixed
    # backlog alone before the join.
    most, step = 20_000, 200
    stream, group, sent = make_stream(), _group(), events(most)
    published = 0
    received: dict[str, list[bytes]] = {"c1": [], "c2": []}
    with stream.publisher(**partitioned) as pub, \
            stream.source(group=group, consumer="c1") as a, stream.source(group=group, consumer="c2") as b:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            both = bool(received["c1"] and received["c2"])
            if both and sum(map(len, received.values())) >= published:
                break
            if not both and published < most:
                pub.publish(sent[published:published + step])
                published += step
            for name, src in (("c1", a), ("c2", b)):
                polled = src.poll(100, 0.2)
                received[name].extend(polled.payloads)
                src.ack([polled])
            time.sleep(0.02)
    total = sum(map(len, received.values()))
    expect(total == published, f"{total} events arrived in 120 s, {published} were published")
    both_got = set(received["c1"]) & set(received["c2"])
    expect(not both_got, f"{len(both_got)} events went to both consumers")
    expect(set(received["c1"]) | set(received["c2"]) == set(sent[:published]),
           "the two consumers did not get every event")
    expect(received["c1"] and received["c2"],
           f"one consumer got every event ({len(received['c1'])} / {len(received['c2'])} of {published}); a "
           "broker that splits by partition needs partitioned={'partitions': 2}")


SOURCE_CHECKS: dict[str, Callable[[Callable[[], Stream], Mapping[str, Any]], None]] = {
    "delivers_in_order": _delivers_in_order,
    "redelivers_unacked": _redelivers_unacked,
    "counts_lag": _counts_lag,
    "splits_a_group": _splits_a_group,
}


def check_source(make_stream: Callable[[], Stream], *, partitioned: Mapping[str, Any] | None = None,
                 checks: Iterable[str] | None = None) -> None:
    """Check that a :class:`~modelmill.ingest.Source` keeps the contract the ingestor relies on.

    ``make_stream()`` gives a fresh, empty :class:`Stream` each time it is called. ``partitioned``: publisher
    options that give a stream two partitions, where the broker splits a group by partition (the local log
    and Kafka: ``{"partitions": 2}``). ``checks`` names a subset of :data:`SOURCE_CHECKS` (``splits_a_group``
    waits for a rebalance: about 20 s on Kafka). Raises :class:`AssertionError` naming the broken promise.
    """
    run_checks("check_source", SOURCE_CHECKS, checks, make_stream, dict(partitioned or {}))


# ---- publishers -------------------------------------------------------------------------------------------------

def _appends_in_order(make_stream: Callable[[], Stream]) -> None:
    """appends every call's payloads in order, across calls and publishers; an empty call adds nothing"""
    stream, sent = make_stream(), events(1_500)
    with stream.publisher() as pub:
        pub.publish([])
        pub.publish(sent[:1])
        pub.publish(sent[1:1_000])
    with stream.publisher() as pub:
        pub.publish(sent[1_000:])
        pub.publish([])
    with stream.source(group=_group(), consumer="c1") as src:
        _same(drain(src, len(sent)), sent, "reading back what three calls of two publishers appended")
        left = src.poll(100, 0.3).payloads
        expect(left == [], f"{len(left)} events arrived that no publish call sent")


def _carries_any_bytes(make_stream: Callable[[], Stream]) -> None:
    """carries payloads byte for byte: binary, one byte, 60 kB"""
    stream = make_stream()
    sent = [bytes(range(256)), b"x", b"\x00\xff" * 30_000, "é✓".encode(), b"\n\r\n"]
    with stream.publisher() as pub:
        pub.publish(sent)
    with stream.source(group=_group(), consumer="c1") as src:
        _same(drain(src, len(sent), timeout=10), sent, "reading back binary payloads")


PUBLISHER_CHECKS: dict[str, Callable[[Callable[[], Stream]], None]] = {
    "appends_in_order": _appends_in_order,
    "carries_any_bytes": _carries_any_bytes,
}


def check_publisher(make_stream: Callable[[], Stream], *, checks: Iterable[str] | None = None) -> None:
    """Check that a :class:`~modelmill.ingest.Publisher` appends what it is given, in order, byte for byte.

    The events are read back through the stream's own source, so the source must work (:func:`check_source`).
    """
    run_checks("check_publisher", PUBLISHER_CHECKS, checks, make_stream)
