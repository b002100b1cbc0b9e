"""Adaptive micro-batching: every caller gets exactly its own rows, under real concurrency."""

from __future__ import annotations

import asyncio
import concurrent.futures

import httpx
import numpy as np
import pytest

from modelmill.serving import Batcher, FunctionModel, ModelServer, ServerConfig, StaticSource, create_app
from tests.serving.conftest import COLUMNS, infer_body, train_lr


def test_thousand_concurrent_requests_each_get_their_own_result() -> None:
    lr = train_lr(0)
    sizes: list[int] = []

    def predict(X: np.ndarray) -> np.ndarray:
        sizes.append(len(X))
        return lr.predict_proba(X)[:, 1]

    model = FunctionModel("clf", 1, COLUMNS, predict)
    server = ModelServer(StaticSource([model], aliases={"clf@production": 1}),
                         config=ServerConfig(models=["clf@production"], max_batch_size=64, max_wait_us=2000,
                                             cache=False, log_predictions=False))
    app = create_app(server)
    rng = np.random.default_rng(11)
    X = rng.normal(size=(1000, len(COLUMNS)))
    expected = lr.predict_proba(X)[:, 1]  # unbatched reference, one call

    async def main() -> list[float]:
        await server.start()
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                async def one(i: int) -> float:
                    body = infer_body(X[i:i + 1])
                    body["id"] = f"req-{i}"
                    r = await client.post("/v2/models/clf/infer", json=body)
                    assert r.status_code == 200, r.text
                    doc = r.json()
                    assert doc["id"] == f"req-{i}"
                    return float(doc["outputs"][0]["data"][0])
                return await asyncio.gather(*(one(i) for i in range(1000)))
        finally:
            await server.stop()

    got = asyncio.run(main())
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    assert sum(sizes) == 1000
    assert max(sizes) > 1, "no batch formed: the requests were not concurrent"
    assert max(sizes) <= 64


def test_a_lone_caller_does_not_wait_for_the_batch_window() -> None:
    # Counted in passes of the event loop, not in seconds: a batch closes after one pass that brings no new
    # request, so the answer comes within a few passes; waiting out the 10-minute window would take many.
    b = Batcher(lambda X: X[:, 0], max_batch_size=64, max_wait_us=600_000_000)

    async def main() -> tuple[int, list[float]]:
        fut = b.submit(np.array([[1.0]]))
        passes = 0
        while not fut.done() and passes < 1000:
            await asyncio.sleep(0)
            passes += 1
        return passes, fut.result().tolist() if fut.done() else []

    passes, out = asyncio.run(main())
    assert out == [1.0] and passes <= 3, passes


def test_max_batch_size_is_respected_and_order_kept() -> None:
    sizes: list[int] = []

    def predict(X: np.ndarray) -> np.ndarray:
        sizes.append(len(X))
        return X[:, 0] * 2

    b = Batcher(predict, max_batch_size=10, max_wait_us=1000)

    async def main() -> list[np.ndarray]:
        # requests of 1..4 rows: a batch never splits a request
        reqs = [np.arange(i, i + 1 + i % 4, dtype=np.float64).reshape(-1, 1) for i in range(50)]
        outs = await asyncio.gather(*(b.submit(r) for r in reqs))
        for r, o in zip(reqs, outs, strict=True):
            np.testing.assert_array_equal(o, r[:, 0] * 2)
        return outs

    asyncio.run(main())
    assert max(sizes) <= 10
    assert len(sizes) < 50


def test_one_bad_request_fails_alone() -> None:
    def predict(X: np.ndarray) -> np.ndarray:
        if np.isnan(X).any():
            raise ValueError("NaN in input")
        return X[:, 0] + 1

    b = Batcher(predict, max_batch_size=64, max_wait_us=1000)

    async def main() -> list[object]:
        reqs = [np.array([[float(i)]]) for i in range(20)]
        reqs[7] = np.array([[np.nan]])
        return await asyncio.gather(*(b.submit(r) for r in reqs), return_exceptions=True)

    results = asyncio.run(main())
    assert isinstance(results[7], ValueError)
    for i, r in enumerate(results):
        if i != 7:
            assert isinstance(r, np.ndarray) and r[0] == i + 1


def test_offloaded_batches_run_in_the_executor() -> None:
    import threading

    threads: set[str] = set()

    def predict(X: np.ndarray) -> np.ndarray:
        threads.add(threading.current_thread().name)
        return X[:, 0]

    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="pool") as ex:
        b = Batcher(predict, max_batch_size=8, max_wait_us=500, executor=ex)

        async def main() -> list[np.ndarray]:
            return await asyncio.gather(*(b.submit(np.array([[float(i)]])) for i in range(30)))

        outs = asyncio.run(main())
    assert [float(o[0]) for o in outs] == [float(i) for i in range(30)]
    assert all(t.startswith("pool") for t in threads)


def test_wrong_output_shape_is_an_error_not_a_wrong_answer() -> None:
    b = Batcher(lambda X: np.zeros(len(X) + 1), max_batch_size=8)

    async def main() -> None:
        await b.submit(np.array([[1.0]]))

    with pytest.raises(ValueError, match="shape"):
        asyncio.run(main())
