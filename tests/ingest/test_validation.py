from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import orjson
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelmill.errors import NotFoundError, SchemaError
from modelmill.ingest import EventSchema, Field, Validator, load_schema
from modelmill.ingest.validation import REASONS
from tests.ingest.conftest import CLICKS, click, clicks


def test_clean_batch_takes_the_fast_path_and_matches_the_slow_one() -> None:
    v = Validator(CLICKS)
    payloads = clicks(2_000)
    fast, rejected = v.validate(payloads)
    assert rejected == []
    slow = v._slow(payloads, [])
    assert fast.equals(slow)
    assert fast.schema == CLICKS.arrow_schema
    assert fast.column("ts")[1].as_py() == dt.datetime(2024, 1, 1, 0, 0, 37, tzinfo=dt.UTC)


@pytest.mark.parametrize(("payload", "reason", "field"), [
    (b'{"id": "x", "ts": "2024-01-01T00:00:00Z", "user": "7"}', "wrong_type", "user"),
    (b'{"id": "x", "ts": "2024-01-01T00:00:00Z", "user": 7.5}', "wrong_type", "user"),
    (b'{"id": "x", "ts": "2024-01-01T00:00:00Z", "user": 7, "mobile": 1}', "wrong_type", "mobile"),
    (b'{"id": "x", "ts": "yesterday", "user": 7}', "wrong_type", "ts"),
    (b'{"id": 5, "ts": "2024-01-01T00:00:00Z", "user": 7}', "wrong_type", "id"),
    (b'{"id": "x", "ts": "2024-01-01T00:00:00Z"}', "missing_required", "user"),
    (b'{"id": "x", "ts": null, "user": 7}', "missing_required", "ts"),
    (b'{"ts": "2024-01-01T00:00:00Z", "user": 7}', "missing_required", "id"),
    (b'{"id": "x", "ts": "2024-01-01T00:00:00Z", "user": 7', "invalid_json", None),
    (b"\xff\xfe", "invalid_json", None),
    (b"", "invalid_json", None),
    (b"[1, 2]", "not_an_object", None),
    (b'{"id": "x", "pad": "' + b"a" * 3000 + b'"}', "oversized", None),
])
def test_each_malformed_event_is_rejected_with_its_reason(payload: bytes, reason: str, field: str | None) -> None:
    good = clicks(20)
    batch = [*good[:10], payload, *good[10:]]
    table, rejected = Validator(CLICKS).validate(batch)
    assert table.num_rows == 20
    assert table.column("id").to_pylist() == [f"e{i:07d}" for i in range(20)]
    assert len(rejected) == 1
    r = rejected[0]
    assert (r.reason, r.field, r.payload, r.index) == (reason, field, payload, 10)
    assert r.reason in REASONS and r.detail


def test_timestamps_accept_offsets_naive_utc_and_epoch_seconds() -> None:
    rows = [b'{"id": "a", "ts": "2024-01-01T02:00:00+02:00", "user": 1}',
            b'{"id": "b", "ts": "2024-01-01 00:00:00", "user": 1}',
            b'{"id": "c", "ts": 1704067200, "user": 1}']
    table, rejected = Validator(CLICKS).validate(rows)
    assert rejected == []
    assert set(table.column("ts").to_pylist()) == {dt.datetime(2024, 1, 1, tzinfo=dt.UTC)}


def test_extra_fields_are_ignored_and_ints_widen_to_float() -> None:
    row = {**click(1), "price": 3, "unknown": [1, 2]}
    table, rejected = Validator(CLICKS).validate([orjson.dumps(row)])
    assert rejected == [] and table.column("price").to_pylist() == [3.0]
    assert "unknown" not in table.column_names


def test_schema_checks_its_declaration() -> None:
    with pytest.raises(SchemaError, match="event_time"):
        EventSchema(name="x", fields=[Field("id", "string"), Field("ts", "string")], event_id="id", event_time="ts")
    with pytest.raises(SchemaError, match="must be one of"):
        Field("a", "decimal")
    with pytest.raises(SchemaError, match="name"):
        EventSchema(name="bad name", fields=[Field("id", "string"), Field("ts", "timestamp")], event_id="id",
                    event_time="ts")
    assert CLICKS.required == ("id", "ts", "user")
    assert Field("n", "integer").arrow_type == pa.int64()


def test_load_schema_from_json_toml_module_and_dataset(tmp_path) -> None:  # type: ignore[no-untyped-def]
    as_json = tmp_path / "clicks.json"
    as_json.write_text(orjson.dumps(CLICKS.as_dict()).decode())
    assert load_schema(str(as_json)) == CLICKS
    as_toml = tmp_path / "clicks.toml"
    as_toml.write_text('name = "clicks"\nevent_id = "id"\nevent_time = "ts"\n[fields]\nid = "string"\n'
                       'ts = "timestamp"\nuser = { type = "int", required = true }\n')
    assert load_schema(str(as_toml)).required == ("id", "ts", "user")
    assert load_schema("tests.ingest.conftest:CLICKS") is CLICKS
    assert load_schema("weather").name == "weather"
    with pytest.raises(NotFoundError):
        load_schema("nope")
    with pytest.raises(NotFoundError):
        load_schema("tests.ingest.conftest:NOPE")
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "x"')
    with pytest.raises(SchemaError, match="not valid JSON"):
        load_schema(str(bad))


def test_public_api_is_sorted_and_importable() -> None:
    import modelmill.ingest as ingest

    assert len(set(ingest.__all__)) == len(ingest.__all__)  # ruff (RUF022) keeps the order sorted
    assert all(hasattr(ingest, name) for name in ingest.__all__)


# ---- one verdict per event, whatever its batch-mates ----------------------------------------------------------

_BASE = '"id": "e{i}", "ts": "2024-01-01T00:00:00Z", "user": {i}'
_DEEP = ("[" * 1023 + "]" * 1023, "[" * 1024 + "]" * 1024, "[" * 3000 + "]" * 3000)
_ODD_VALUES = ("Inf", "-Inf", "Infinity", "-Infinity", "NaN", "-NaN", "1e400", '"Info"', '"NaN"', *_DEEP,
               '"\\ud800"', '"\t"', "0.1", "-0.0", "1e308", '""', "9223372036854775808", "[1, {}]")
_TIMES = ('"2024-01-01T00:00:00Z"', '"2024-01-01 00:00:00"', '"2024-01-01"', '"2024-01-01T02:00:00+02:00"',
          '"0001-01-01T00:00:00Z"', '"1677-09-21T00:12:44Z"', '"1677-09-21T00:12:43Z"', '"2262-04-11T23:47:16Z"',
          '"2262-04-11T23:47:17Z"', '"9999-12-31T00:00:00Z"', "1704067200", "1704067200.5", "1e12", "-1e15",
          "1e300", '"2024-01-01T00:00:00.123456789Z"', '""', "null")


@st.composite
def _tricky(draw: st.DrawFn, i: int) -> bytes:
    """One payload: a clicks event with odd values where pyarrow's reader and orjson could disagree."""
    kind = draw(st.sampled_from(["good", "odd_extra", "odd_field", "time", "empty", "bom", "garbage"]))
    base = _BASE.format(i=i)
    if kind == "good":
        return ("{" + base + "}").encode()
    if kind == "odd_extra":  # an unknown field: ignored if it parses, but must parse for both paths alike
        return ("{" + base + ', "x": ' + draw(st.sampled_from(_ODD_VALUES)) + "}").encode()
    if kind == "odd_field":
        name = draw(st.sampled_from(["price", "kind", "user", "mobile"]))
        value = draw(st.sampled_from(_ODD_VALUES))
        return ("{" + base.replace(f', "user": {i}', "") + (f', "user": {i}' if name != "user" else "")
                + f', "{name}": {value}' + "}").encode()
    if kind == "time":
        return ('{"id": "e' + str(i) + '", "user": 1, "ts": ' + draw(st.sampled_from(_TIMES)) + "}").encode()
    if kind == "empty":  # required strings that are empty; an optional one that is empty is kept
        field = draw(st.sampled_from(["id", "kind"]))
        return ("{" + base.replace(f'"e{i}"', '""' if field == "id" else f'"e{i}"') + ', "kind": ""}').encode()
    if kind == "bom":
        return b"\xef\xbb\xbf{" + base.encode() + b"}"
    return draw(st.sampled_from([b"", b"null", b"[1]", b"{", b'{"id": "a"}', b'{"id": "e", "ts": 1} {}']))


def _verdicts(validator: Validator, payloads: list[bytes]) -> list[Any]:
    """Per payload: its stored row (timestamps as integers) or its rejection (reason, field, detail)."""
    table, rejected = validator.validate(payloads)
    columns = {name: (c.cast(pa.int64()) if pa.types.is_timestamp(c.type) else c).to_pylist()
               for name, c in zip(table.column_names, table.columns, strict=True)}
    rows = iter(range(table.num_rows))
    bad = {r.index: (r.reason, r.field, r.detail) for r in rejected}
    return [bad[i] if i in bad else _row(columns, next(rows)) for i in range(len(payloads))]


def _row(columns: dict[str, list[Any]], j: int) -> dict[str, Any]:
    return {k: v[j] for k, v in columns.items()}


@settings(max_examples=400, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.integers(1, 12).flatmap(lambda n: st.tuples(*[_tricky(i) for i in range(n)])))
def test_each_event_gets_the_verdict_it_gets_alone(batch: tuple[bytes, ...]) -> None:
    """Issue 15 item 13: Inf or 3,000-deep nesting was stored in a clean batch and dead-lettered beside a bad
    event. Whatever the batch, each event's verdict (stored values, or reason, field and detail) is its own."""
    schema = dataclasses.replace(CLICKS, max_event_bytes=1 << 20)
    v = Validator(schema)
    payloads = list(batch)
    together = _verdicts(v, payloads)
    alone = [_verdicts(v, [p])[0] for p in payloads]
    assert together == alone


@pytest.mark.parametrize("odd", [b"Inf", b"-Inf", b"[" * 3000 + b"]" * 3000])
def test_inf_and_deep_nesting_are_refused_alone_and_beside_a_bad_event(odd: bytes) -> None:
    payload = b'{"id": "e1", "ts": "2024-01-01T00:00:00Z", "user": 1, "price": 1.0, "x": ' + odd + b"}"
    v = Validator(dataclasses.replace(CLICKS, max_event_bytes=1 << 20))
    for batch in ([payload], [payload, *clicks(3)], [payload, b"{"]):
        _, rejected = v.validate(batch)
        assert [(r.index, r.reason) for r in rejected if r.index == 0] == [(0, "invalid_json")]
