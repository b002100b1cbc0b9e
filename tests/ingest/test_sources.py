"""One contract, every source: local log, Kafka (Tansu), NATS JetStream, Redis Streams — real servers.

The contract is modelmill.testing's check_source and check_publisher, run sub-check by sub-check over each backend;
then what the ingestor and the local log add.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from modelmill.ingest import DeadLetters, Ingestor, Polled, open_publisher, open_source
from modelmill.project import Project
from modelmill.testing import PUBLISHER_CHECKS, SOURCE_CHECKS, check_publisher, check_source
from tests.ingest.conftest import BACKENDS, CLICKS, Broker, click, clicks

# Where a group is split by partition, the split check publishes to a two-partition stream.
PARTITIONED = {"local": {"partitions": 2}, "kafka": {"partitions": 2}}
# Waits for Tansu to rebalance a second consumer into the group (about 20 s).
_SLOW = {"splits_a_group"}


@pytest.mark.parametrize("check", [pytest.param(c, marks=pytest.mark.slow) if c in _SLOW else c
                                   for c in SOURCE_CHECKS])
@pytest.mark.parametrize("kind", BACKENDS)
def test_source_contract(make_broker: Callable[[str], Broker], kind: str, check: str) -> None:
    check_source(lambda: make_broker(kind), partitioned=PARTITIONED.get(kind), checks=[check])


@pytest.mark.parametrize("check", list(PUBLISHER_CHECKS))
@pytest.mark.parametrize("kind", BACKENDS)
def test_publisher_contract(make_broker: Callable[[str], Broker], kind: str, check: str) -> None:
    check_publisher(lambda: make_broker(kind), checks=[check])


def test_ingests_into_the_offline_store_exactly_once(broker: Broker, project: Project) -> None:
    events = clicks(5_000)
    with broker.publisher() as pub:
        pub.publish(events)
        pub.publish(events[:1_000])  # a producer retry: the same events twice
    seen: list[int] = []

    class Counter:
        def process(self, stream: str, batch) -> None:  # type: ignore[no-untyped-def]
            assert stream == broker.stream
            seen.append(batch.num_rows)

    ingestor = Ingestor(project, CLICKS, broker.patient_source(), processors=[Counter()], batch_size=2_000,
                        batch_seconds=0.5)
    stats = ingestor.run(max_events=6_000, idle_timeout=10)
    assert (stats.polled, stats.written, stats.duplicates, stats.dead_letters) == (6_000, 5_000, 1_000, 0)
    assert sum(seen) == 5_000
    stored = project.offline.read("clicks", columns=["id"]).column("id").to_pylist()
    assert sorted(stored) == [f"e{i:07d}" for i in range(5_000)]


def test_polled_is_a_plain_batch() -> None:
    assert len(Polled([b"a", b"b"])) == 2


# ---- the local log reads a record of any size ----------------------------------------------------------------

def _big(i: int, size: int) -> bytes:
    row = {**click(i), "kind": ""}
    pad = size - len(orjson.dumps(row))
    return orjson.dumps({**row, "kind": "x" * pad})


@pytest.mark.parametrize(("big", "batch_size", "limit"), [(6_000_000, 50_000, 1 << 20),
                                                           (1_000_000, 1_000, 1 << 20)])
def test_a_large_record_never_stalls_the_local_log(tmp_path: Path, project: Project, big: int, batch_size: int,
                                                   limit: int) -> None:
    """Issue 15 item 12: a 6 MB event left 5 of 10 events stored and the rest neither stored nor
    dead-lettered; a valid 1,000,000-byte event with batch size 1000 stalled the stream at 134 of 6,457."""
    url = f"local://{tmp_path / 'log'}"
    n = 10 if big > limit else 2_000
    payloads = clicks(n)
    payloads[n // 2] = _big(n // 2, big)
    with open_publisher(url, stream="clicks") as pub:
        pub.publish(payloads)
    schema = dataclasses.replace(CLICKS, max_event_bytes=limit)
    stats = Ingestor(project, schema, open_source(url, stream="clicks", group="g"), batch_size=batch_size,
                     poll_size=min(batch_size, 10_000)).run(idle_timeout=1.0)
    assert stats.polled == n
    oversized = 1 if big > limit else 0
    assert (stats.written, stats.dead_letters) == (n - oversized, oversized)
    assert project.offline.read("clicks").num_rows == n - oversized
    if oversized:
        (letter,) = DeadLetters(project.db).list(schema="clicks")
        assert letter.reason == "oversized" and len(letter.payload) == big


def test_a_record_past_the_read_limit_is_dead_lettered_not_loaded(tmp_path: Path, project: Project) -> None:
    """A record the local log will not hold in memory (here 3 MB against a 1 MiB read limit) is skipped,
    checksummed in pieces, and reaches the dead letters with its size and first bytes."""
    url = f"local://{tmp_path / 'log'}"
    payloads = clicks(5)
    payloads[2] = _big(2, 3_000_000)
    with open_publisher(url, stream="clicks") as pub:
        pub.publish(payloads)
    source = open_source(url, stream="clicks", group="g", max_record_bytes=1 << 20)
    stats = Ingestor(project, CLICKS, source).run(idle_timeout=1.0)
    assert (stats.polled, stats.written, stats.dead_letters) == (5, 4, 1)
    (letter,) = DeadLetters(project.db).list(schema="clicks")
    assert letter.reason == "oversized" and "3000000 bytes" in letter.detail
    assert payloads[2].startswith(letter.payload) and 0 < len(letter.payload) < 1 << 20
    with open_source(url, stream="clicks", group="g", max_record_bytes=1 << 20) as again:  # offsets committed
        assert again.poll(10, 0).payloads == []
