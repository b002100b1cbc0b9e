"""Hypothesis over ingestion schemas: random payloads never crash the validator, and every payload is either
accepted or dead-lettered with a reason, in memory and through the ingestor into the store."""

from __future__ import annotations

import datetime as dt
import json
import math
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelmill.config import Settings
from modelmill.ingest import DeadLetters, EventSchema, Field, Ingestor, Polled, Source, Validator
from modelmill.ingest.validation import REASONS
from modelmill.project import Project

TYPES = ("string", "int", "float", "bool", "timestamp")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


def dumps(value: Any) -> bytes:
    """JSON as a careless producer writes it: integers past 64 bits, Infinity, lone surrogates and all."""
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


def value_for(kind: str) -> st.SearchStrategy[Any]:
    """Mostly well-typed values of ``kind``, with every kind of wrong one mixed in."""
    good = {
        "string": st.text(max_size=30),
        "int": st.integers(-(1 << 63), (1 << 63) - 1),
        "float": st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(1 << 53), 1 << 53),
        "bool": st.booleans(),
        "timestamp": st.datetimes(min_value=dt.datetime(1971, 1, 1), max_value=dt.datetime(2200, 1, 1))
        .map(lambda d: d.isoformat()) | st.floats(0, 4e9, allow_nan=False),
    }[kind]
    wrong = (st.none() | st.integers(1 << 63, 1 << 70) | st.text(max_size=10) | st.booleans() | json_values
             | st.sampled_from(["2024-13-45T99:00:00", "yesterday", "", "NaN", "1e400"]))
    return st.one_of(good, good, good, wrong)


@st.composite
def schemas(draw: st.DrawFn) -> EventSchema:
    names = draw(st.lists(st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True), min_size=0, max_size=4,
                          unique=True).filter(lambda ns: "id" not in ns and "ts" not in ns))
    fields = [Field("id", draw(st.sampled_from(["string", "int"]))), Field("ts", "timestamp")]
    fields += [Field(n, draw(st.sampled_from(TYPES)), draw(st.booleans())) for n in names]
    return EventSchema(name="fuzzed", fields=fields, event_id="id", event_time="ts",
                       max_event_bytes=draw(st.sampled_from([256, 1 << 20])))


@st.composite
def payload(draw: st.DrawFn, schema: EventSchema, index: int) -> bytes:
    kind = draw(st.sampled_from(["event", "event", "event", "json", "bytes", "newline"]))
    if kind == "bytes":
        return draw(st.binary(max_size=60))
    if kind == "json":
        return dumps(draw(json_values))
    event: dict[str, Any] = {}
    for f in schema.fields:
        if f.name == "id":
            event["id"] = f"e{index}" if f.type == "string" else index
            if draw(st.integers(0, 9)) == 0:  # sometimes missing or mistyped
                event["id"] = draw(st.none() | json_values)
        elif draw(st.integers(0, 5)) > 0:
            event[f.name] = draw(value_for(f.type))
    if draw(st.booleans()):
        event[draw(st.text(max_size=6))] = draw(json_values)  # unknown fields are ignored
    raw = dumps(event)
    if kind == "newline":
        raw = raw.replace(b",", b",\n", 1)  # still valid JSON, but breaks line framing
    if draw(st.integers(0, 19)) == 0:
        raw += b" " * 300  # over a small max_event_bytes
    return raw


@st.composite
def batches(draw: st.DrawFn) -> tuple[EventSchema, list[bytes]]:
    schema = draw(schemas())
    n = draw(st.integers(0, 25))
    return schema, [draw(payload(schema, i)) for i in range(n)]


def check_partition(schema: EventSchema, payloads: Sequence[bytes]) -> tuple[Any, list[Any]]:
    table, rejected = Validator(schema).validate(payloads)
    assert table.num_rows + len(rejected) == len(payloads)
    assert table.schema == schema.arrow_schema
    indexes = [r.index for r in rejected]
    assert len(set(indexes)) == len(indexes) and all(0 <= i < len(payloads) for i in indexes)
    for r in rejected:
        assert r.reason in REASONS and r.detail and r.payload == bytes(payloads[r.index])
        if r.reason in ("missing_required", "wrong_type"):
            assert r.field in {f.name for f in schema.fields}
    for name in schema.required:  # what is accepted carries every required field
        assert table.column(name).null_count == 0
    for f in schema.fields:
        if f.type == "float":
            assert all(v is None or math.isfinite(v) for v in table.column(f.name).to_pylist())
    return table, rejected


@pytest.mark.slow  # over 5 s (make test alone stays under 10 min; .ci/run runs it)
@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(batches())
def test_every_payload_is_accepted_or_rejected_with_a_reason(batch: tuple[EventSchema, list[bytes]]) -> None:
    schema, payloads = batch
    _, rejected = check_partition(schema, payloads)
    # one batch or one event at a time (the fast and the slow path): the same verdicts
    alone = {i for i, p in enumerate(payloads) if Validator(schema).validate([p])[1]}
    assert {r.index for r in rejected} == alone


def sent_value(field: Field, value: Any) -> Any:
    """A payload's value as the store should hold it (timestamps as microseconds since the epoch)."""
    if value is None:
        return None
    if field.type == "float":
        return float(value)
    if field.type != "timestamp":
        return value
    if isinstance(value, str):
        ts = pd.Timestamp(value)
        ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
        return ts.value // 1000
    return round(value * 1_000_000)


def stored_value(field: Field, value: Any) -> Any:
    if field.type == "timestamp" and value is not None:
        return (value - EPOCH) // dt.timedelta(microseconds=1)
    return value


EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class ListSource(Source):
    """Hands out given payloads once (a stand-in for a broker's poll), counting acks."""

    def __init__(self, payloads: Sequence[bytes]) -> None:
        self.stream = "fuzzed"
        self.payloads = list(payloads)
        self.acked = 0

    def poll(self, max_events: int, timeout: float) -> Polled:
        out, self.payloads = self.payloads[:max_events], self.payloads[max_events:]
        return Polled(out, [len(out)])

    def ack(self, polled: Sequence[Polled]) -> None:
        self.acked += sum(len(p.payloads) for p in polled)

    @property
    def exhausted(self) -> bool:
        return not self.payloads


@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(batches())
def test_ingested_payloads_land_in_the_store_or_the_dead_letters(tmp_path_factory: Any,
                                                                  batch: tuple[EventSchema, list[bytes]]) -> None:
    schema, payloads = batch
    table, rejected = Validator(schema).validate(payloads)
    home = Path(tmp_path_factory.mktemp("fuzz")) / ".modelmill"
    with Project(Settings.defaults(home=home)) as project:
        source = ListSource(payloads)
        stats = Ingestor(project, schema, source, batch_size=7, poll_size=7).run()
        assert source.acked == len(payloads) == stats.polled
        ids = table.column("id").to_pylist()
        assert stats.written == len(set(ids)) and stats.written + stats.duplicates == table.num_rows
        stored = project.offline.read("fuzzed") if project.offline.exists("fuzzed") else None
        assert (0 if stored is None else stored.num_rows) == stats.written
        # What is stored is what was sent: each accepted payload's own values, decoded here without the
        # validator (the first payload of each id; later ones are duplicates).
        refused = {r.index for r in rejected}
        expected: dict[Any, dict[str, Any]] = {}
        for i, p in enumerate(payloads):
            if i not in refused:
                event = json.loads(p)
                expected.setdefault(event["id"], {f.name: sent_value(f, event.get(f.name)) for f in schema.fields})
        got = {} if stored is None else {row["id"]: {f.name: stored_value(f, row[f.name]) for f in schema.fields}
                                         for row in stored.to_pylist()}
        assert got == expected
        letters = DeadLetters(project.db).list(schema="fuzzed", limit=None)
        assert stats.dead_letters == len(letters) == len(rejected)
        assert sorted(d.reason for d in letters) == sorted(r.reason for r in rejected)
        assert all(d.reason in REASONS for d in letters)


@pytest.mark.parametrize("raw", [b"null", b"  null", b"null\r"])
def test_a_null_event_does_not_crash_the_validator(raw: bytes) -> None:
    code = ("from modelmill.ingest import EventSchema, Field, Validator\n"
            "s = EventSchema(name='e', fields=[Field('id', 'string'), Field('ts', 'timestamp')], event_id='id', "
            "event_time='ts')\n"
            f"good, bad = Validator(s).validate([{raw!r}, b'{{\"id\": \"a\", \"ts\": 1}}'])\n"
            "assert good.num_rows == 1 and [r.reason for r in bad] == ['not_an_object'], bad\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-500:]}"


@pytest.mark.parametrize("ts", [b"1e300", b"9223372036855", b"-1e15"])
def test_an_out_of_range_epoch_is_dead_lettered(ts: bytes) -> None:
    schema = EventSchema(name="e", fields=[Field("id", "string"), Field("ts", "timestamp")], event_id="id",
                         event_time="ts")
    good, bad = Validator(schema).validate([b'{"id": "a", "ts": 1}', b'{"id": "b", "ts": ' + ts + b"}"])
    assert good.num_rows == 1 and [(r.reason, r.field) for r in bad] == [("out_of_range", "ts")]


def test_non_json_literals_get_the_same_verdict_alone_and_in_a_batch() -> None:
    """Found by the fuzzer: pyarrow's reader took ``Infinity`` that the strict path refuses."""
    schema = EventSchema(name="e", fields=[Field("id", "string"), Field("ts", "timestamp")], event_id="id",
                         event_time="ts")
    odd = b'{"id": "e1", "ts": "2000-01-01T00:00:00", "x": [Infinity]}'
    for batch in ([odd], [b"", odd]):
        good, bad = Validator(schema).validate(batch)
        assert good.num_rows == 0 and {r.reason for r in bad} == {"invalid_json"}
