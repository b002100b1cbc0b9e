from __future__ import annotations

import datetime as dt

import orjson
import pyarrow as pa
import pytest

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
