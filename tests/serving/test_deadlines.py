"""Request deadlines: one watchdog instead of a timer per request, with asyncio.timeout's semantics."""

from __future__ import annotations

import asyncio

import pytest

from modelmill.serving.limits import Deadlines


def test_slow_work_times_out_fast_work_does_not_and_other_cancellations_pass_through() -> None:
    deadlines = Deadlines(0.1)

    async def work(seconds: float) -> str:
        async with deadlines:
            await asyncio.sleep(seconds)
        return "done"

    async def main() -> list[object]:
        results = await asyncio.gather(work(0.01), work(1.0), work(0.02), return_exceptions=True)
        outside = asyncio.create_task(work(5.0))
        await asyncio.sleep(0.02)
        outside.cancel()  # a shutdown, not a deadline: must stay a cancellation
        with pytest.raises(asyncio.CancelledError):
            await outside
        return results

    fast, slow, fast2 = asyncio.run(main())
    assert fast == "done" and fast2 == "done"
    assert isinstance(slow, TimeoutError)
    assert deadlines._started == {} and deadlines._expired == set()
