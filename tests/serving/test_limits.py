"""Bounded inputs, unit by unit: the settings' own checks, the body reader and the deadline semantics.

These close what mutation testing (``make mutation``) found untested in ``serving/limits.py``: each test states a
promise of the module and fails when one operator or constant of it changes (docs/mutation.md lists the rest).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest

from modelmill.errors import ConfigError, InputError
from modelmill.serving.limits import BodyTooLarge, Deadlines, Limits, TooManyRows, read_body
from modelmill.serving.responses import error_response

# every count and every time the settings hold (drain_bytes, the one count that may be 0, is tested on its own)
COUNTS = tuple(f.name for f in dataclasses.fields(Limits) if f.type == "int" and f.name != "drain_bytes")
SECONDS = tuple(f.name for f in dataclasses.fields(Limits) if f.type == "float")


@pytest.mark.parametrize("key", COUNTS)
def test_a_count_limit_takes_one_and_up_and_refuses_zero_naming_the_setting(key: str) -> None:
    assert getattr(Limits(**{key: 1}), key) == 1
    with pytest.raises(ConfigError) as info:
        Limits(**{key: 0})
    assert (info.value.key, info.value.value, info.value.accepted) == (f"serving.{key}", 0, "a whole number of at least 1")


def test_drain_bytes_zero_means_drain_nothing_and_only_a_negative_is_refused() -> None:
    assert Limits(drain_bytes=0).drain_bytes == 0
    with pytest.raises(ConfigError) as info:
        Limits(drain_bytes=-1)
    assert (info.value.key, info.value.value, info.value.accepted) == ("serving.drain_bytes", -1,
                                                                       "a whole number of at least 0")


@pytest.mark.parametrize("value", [True, 2.0, "4096", None])
@pytest.mark.parametrize("key", [*COUNTS, "drain_bytes"])
def test_a_count_limit_that_is_not_a_whole_number_is_a_config_error(key: str, value: Any) -> None:
    # True is an int to Python, and "4096" < 1 is a TypeError: both must come out as the setting's own error.
    with pytest.raises(ConfigError) as info:
        Limits(**{key: value})
    assert info.value.key == f"serving.{key}" and info.value.value == value


@pytest.mark.parametrize("key", SECONDS)
def test_a_time_limit_takes_any_positive_number_and_refuses_zero_negatives_and_non_numbers(key: str) -> None:
    assert getattr(Limits(**{key: 0.001}), key) == 0.001
    assert getattr(Limits(**{key: 3}), key) == 3
    for bad in (0, 0.0, -1.5, True, "10", None):
        with pytest.raises(ConfigError) as info:
            Limits(**{key: bad})
        assert (info.value.key, info.value.value, info.value.accepted) == (f"serving.{key}", bad,
                                                                           "a number of seconds above 0"), bad
        assert f"'serving.{key}'" in info.value.message and "a number of seconds above 0" in info.value.message


def test_a_refused_body_says_its_size_when_declared_and_the_limit_when_streamed() -> None:
    declared, streamed = BodyTooLarge(1024, 5000), BodyTooLarge(1024)
    assert declared.field == "body" and streamed.field == "body"
    assert "(5000 bytes); the limit is 1024 bytes" in declared.message
    assert "(more than 1024 bytes); the limit is 1024 bytes" in streamed.message


def test_too_many_rows_names_the_field_the_count_and_the_limit_and_answers_413() -> None:
    exc = TooManyRows("instances", 10, 11)
    assert isinstance(exc, InputError) and exc.field == "instances"
    assert exc.message == "instances: has 11 rows; the limit is 10 per request; split the batch"
    response = error_response(exc)
    assert response.status_code == 413
    assert orjson.loads(bytes(response.body)) == {"error": exc.message}


def _receiver(messages: list[dict[str, Any]]) -> tuple[Callable[[], Awaitable[dict[str, Any]]], list[int]]:
    """An ASGI ``receive`` over ``messages``; the returned list counts the calls made to it."""
    calls = [0]

    async def receive() -> dict[str, Any]:
        calls[0] += 1
        return messages[calls[0] - 1]

    return receive, calls


def _chunks(*parts: bytes) -> list[dict[str, Any]]:
    return [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1} for i, p in enumerate(parts)]


def _read(messages: list[dict[str, Any]], headers: dict[str, str], limit: int) -> tuple[bytes, int]:
    receive, calls = _receiver(messages)
    body = asyncio.run(read_body(receive, headers, limit))
    return body, calls[0]


def test_a_body_of_several_chunks_is_read_whole_in_order() -> None:
    assert _read(_chunks(b"ab", b"", b"cd", b"e"), {}, 5) == (b"abcde", 4)
    assert _read(_chunks(b"abcde"), {"content-length": "5"}, 5) == (b"abcde", 1)
    assert _read(_chunks(b""), {}, 5) == (b"", 1)
    # ASGI: "body" and "more_body" may be left out, meaning b"" and False
    assert _read([{"type": "http.request"}], {}, 5) == (b"", 1)
    assert _read([{"type": "http.request", "body": b"ab", "more_body": True}, {"type": "http.request"}], {}, 5) \
        == (b"ab", 2)


def test_a_body_of_exactly_the_limit_passes_and_one_byte_more_is_refused_without_reading_further() -> None:
    assert _read(_chunks(b"abc", b"de"), {}, 5)[0] == b"abcde"
    receive, calls = _receiver(_chunks(b"abc", b"def", b"never read"))
    with pytest.raises(BodyTooLarge) as info:
        asyncio.run(read_body(receive, {}, 5))
    assert calls[0] == 2  # refused as soon as it passed the limit, not after reading it all
    assert "more than 5 bytes" in info.value.message


def test_a_declared_length_over_the_limit_is_refused_before_any_read() -> None:
    receive, calls = _receiver(_chunks(b"x" * 6))
    with pytest.raises(BodyTooLarge) as info:
        asyncio.run(read_body(receive, {"content-length": "6"}, 5))
    assert calls[0] == 0 and "(6 bytes); the limit is 5 bytes" in info.value.message
    # a declared length at the limit is read
    assert _read(_chunks(b"x" * 5), {"content-length": "5"}, 5)[0] == b"xxxxx"


def test_a_content_length_that_is_not_a_number_is_an_input_error_naming_the_header() -> None:
    receive, calls = _receiver(_chunks(b"abc"))
    with pytest.raises(InputError) as info:
        asyncio.run(read_body(receive, {"content-length": "three"}, 5))
    assert not isinstance(info.value, BodyTooLarge)
    assert (info.value.field, info.value.problem, info.value.value) == ("content-length", "must be a whole number",
                                                                        "three")
    assert calls[0] == 0


def test_a_client_that_disconnects_ends_the_body_with_what_arrived() -> None:
    messages = [{"type": "http.request", "body": b"ab", "more_body": True}, {"type": "http.disconnect"},
                {"type": "http.request", "body": b"never read", "more_body": False}]
    assert _read(messages, {}, 100) == (b"ab", 2)


def test_the_watchdog_checks_every_quarter_timeout_and_at_least_every_50_ms() -> None:
    # documented in Deadlines: a request is cancelled at most timeout_s / 4 (or 50 ms) after its deadline
    assert Deadlines(0.1).interval == pytest.approx(0.025)
    assert Deadlines(10.0).interval == pytest.approx(0.05)


def test_a_deadline_reports_its_timeout_and_lets_the_work_own_what_it_does_with_the_cancellation() -> None:
    deadlines = Deadlines(0.02)

    async def late() -> None:
        async with deadlines:
            await asyncio.sleep(5)

    async def swallows() -> str:
        async with deadlines:
            try:
                await asyncio.sleep(5)
            except asyncio.CancelledError:
                return "cleaned up"
        return "unreachable"

    async def raises_its_own() -> None:
        async with deadlines:
            try:
                await asyncio.sleep(5)
            except asyncio.CancelledError:
                raise ValueError("the work's own error") from None

    async def main() -> list[object]:
        return await asyncio.gather(late(), swallows(), raises_its_own(), return_exceptions=True)

    timed_out, swallowed, own = asyncio.run(main())
    assert isinstance(timed_out, TimeoutError) and str(timed_out) == "no answer within 0.02 s"
    # as with asyncio.timeout: a body that handles its cancellation is not turned into a timeout
    assert swallowed == "cleaned up"
    assert isinstance(own, ValueError) and str(own) == "the work's own error"
    assert deadlines._started == {} and deadlines._expired == set()
