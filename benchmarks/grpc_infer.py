"""OIP infer over gRPC against OIP infer over REST, on one `modelmill serve --grpc-port` process.

One server (one worker, --no-cache: the load repeats one request) serves the 20-feature logistic
regression of benchmarks/serving.py on both ports. The same Python asyncio load generator drives
both, closed loop at 1 and 32 concurrent requests, one row each:
  rest   POST /v2/models/clf/infer, JSON body (one [1, 20] FP64 tensor), aiohttp, keep-alive
  grpc   ModelInfer with the same tensor in raw_input_contents (as tritonclient.grpc sends it),
         one HTTP/2 channel, the request serialized once
  grpc floor  a bare grpc.aio server on uvloop answering a constant: what gRPC costs in Python
Rounds alternate the protocols; each row keeps its best round. The client shares the cores with
the server, so the figures are lower than wrk's in benchmarks/serving.py; the ratio is the point.
Run: .venv/bin/python benchmarks/grpc_infer.py   (BENCH_SECONDS=15, BENCH_ROUNDS=3 for longer runs)
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from _runner import Benchmark, package_version, percentiles
from serving import COLUMNS, PY, K, Server, free_port, train

SECONDS = float(os.environ.get("BENCH_SECONDS", "8"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))
METHOD = "/inference.GRPCInferenceService/ModelInfer"


def setup_project(root: Path) -> None:
    from modelmill.config import load_settings
    from modelmill.project import Project
    from modelmill.registry import Field, Registry, Signature

    (root / "modelmill.toml").write_text('home = ".modelmill"\n')
    project = Project(load_settings(cwd=root))
    reg = Registry(project)
    reg.register("clf", train(0)[0], flavor="sklearn", signature=Signature(inputs=[Field(c) for c in COLUMNS]))
    reg.set_alias("clf", "production", 1)
    project.close()


def grpc_request(row: np.ndarray) -> bytes:
    """A ModelInferRequest (tritonclient's copy of the KServe messages): one [1, K] FP64 tensor, raw."""
    from tritonclient.grpc import service_pb2

    req = service_pb2.ModelInferRequest(model_name="clf")
    req.inputs.add(name="input", datatype="FP64", shape=[1, K])
    req.raw_input_contents.append(np.ascontiguousarray(row, dtype="<f8").tobytes())
    return bytes(req.SerializeToString())


async def _closed_loop(call: Any, concurrency: int, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal errors
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            try:
                await call()
            except Exception:
                errors += 1
                continue
            latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {"rps": round(len(latencies) / elapsed), "errors": errors, **percentiles(latencies)}


async def rest_load(port: int, body: bytes, concurrency: int, seconds: float) -> dict[str, Any]:
    import aiohttp

    url = f"http://127.0.0.1:{port}/v2/models/clf/infer"
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        async def call() -> None:
            async with session.post(url, data=body, headers=headers) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(r.status)

        await call()  # connect before the clock starts
        return await _closed_loop(call, concurrency, seconds)


async def grpc_load(port: int, request: bytes, concurrency: int, seconds: float) -> dict[str, Any]:
    import grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        infer = channel.unary_unary(METHOD)  # bytes in, bytes out: no (de)serialization in the loop

        async def call() -> None:
            await infer(request)

        await call()
        return await _closed_loop(call, concurrency, seconds)


_FLOOR = """
import asyncio, sys, grpc, uvloop
from grpc import aio
async def answer(request, context):
    return b""
async def main():
    s = aio.server()
    s.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("inference.GRPCInferenceService",
                                {"ModelInfer": grpc.unary_unary_rpc_method_handler(answer)})])
    s.add_insecure_port("127.0.0.1:" + sys.argv[1])
    await s.start()
    await s.wait_for_termination()
uvloop.run(main())
"""


def start_floor(port: int) -> subprocess.Popen[bytes]:
    import grpc

    proc = subprocess.Popen([PY, "-c", _FLOOR, str(port)])
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
    return proc


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, every thread) the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def check_answers(http_port: int, grpc_port: int, body: bytes, request: bytes) -> float:
    """The largest difference between the two protocols' answers (they must agree before they are timed)."""
    import grpc
    import httpx
    from tritonclient.grpc import service_pb2

    rest = np.asarray(httpx.post(f"http://127.0.0.1:{http_port}/v2/models/clf/infer", content=body,
                                 headers={"Content-Type": "application/json"}).json()["outputs"][0]["data"])
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        raw = channel.unary_unary(METHOD)(request)
    response = service_pb2.ModelInferResponse.FromString(raw)
    got = np.frombuffer(response.raw_output_contents[0], dtype="<f8")
    return float(np.max(np.abs(got - rest)))


def main() -> None:
    bench = Benchmark("grpc", f"OIP infer, gRPC against REST, one modelmill serve worker on {os.cpu_count()} cores; "
                              f"Python asyncio closed loop {SECONDS:.0f} s, best of {ROUNDS} rounds")
    bench.versions(grpcio=package_version("grpcio"), aiohttp=package_version("aiohttp"),
                   tritonclient=package_version("tritonclient"))
    _, X = train(0)
    row = X[:1]
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, K], "datatype": "FP64",
                                   "data": row.tolist()}]}).encode()
    request = grpc_request(row)
    os.environ.pop("MODELMILL_HOME", None)
    with tempfile.TemporaryDirectory(prefix="bench-grpc-") as tmp:
        root = Path(tmp)
        setup_project(root)
        port, grpc_port = free_port(), free_port()
        srv = Server("modelmill-grpc", [PY, "-m", "modelmill", "serve", "clf@production", "--port", str(port),
                                        "--grpc-port", str(grpc_port), "--no-cache"],
                     cwd=root, port=port, ready="/v2/health/ready")
        try:
            diff = check_answers(port, grpc_port, body, request)
            if diff > 1e-12:
                raise SystemExit(f"gRPC and REST answers differ by {diff}")
            floor_port = free_port()
            floor = start_floor(floor_port)
            best: dict[tuple[str, int], dict[str, Any]] = {}
            for conc in (1, 32):
                for _ in range(ROUNDS):
                    for proto in ("rest", "grpc", "grpc floor"):
                        if proto == "rest":
                            load, pid = rest_load(port, body, conc, SECONDS), srv.proc.pid
                        elif proto == "grpc":
                            load, pid = grpc_load(grpc_port, request, conc, SECONDS), srv.proc.pid
                        else:
                            load, pid = grpc_load(floor_port, request, conc, SECONDS), floor.pid
                        cpu0 = cpu_seconds(pid)
                        r = asyncio.run(load)
                        n = r["rps"] * SECONDS
                        r["server_cpu_us"] = round((cpu_seconds(pid) - cpu0) / max(n, 1) * 1e6, 1)
                        if r["errors"]:
                            raise SystemExit(f"{proto} c={conc}: {r['errors']} failed requests")
                        if r["rps"] > best.get((proto, conc), {"rps": -1})["rps"]:
                            best[proto, conc] = r
                for proto in ("rest", "grpc", "grpc floor"):
                    bench.row(f"{proto} c={conc}", **best[proto, conc])
                ratio = best["grpc", conc]["rps"] / best["rest", conc]["rps"]
                bench.ratio(f"grpc / rest requests/s, c={conc}", round(ratio, 3), goal=">= 1.0", met=ratio >= 1.0)
        finally:
            srv.stop()
            if "floor" in locals():
                floor.terminate()
                floor.wait()
    bench.note("server_cpu_us: the server process's CPU time (every thread) per answered request, which the "
               "load on the machine moves less than requests/s")
    bench.note(f"answers agree to {diff:.1e} (gRPC raw FP64 output against REST's JSON numbers)")
    bench.note("the load generator is Python (aiohttp for REST, grpc.aio for gRPC) in this process, on the same "
               "cores as the server: it bounds both rows, more so at c=32")
    bench.finish()


if __name__ == "__main__":
    sys.exit(main())
