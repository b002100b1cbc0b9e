"""A fleet behind HAProxy: requests/s through the load balancer to 1, 2 and 3 replicas, against one replica direct.

The fleet is tests/fleet's (tests.fleet.netfleet.Fleet): three `modelmill serve` hosts (one worker each,
--no-cache), each in its own network namespace on a bridge, sharing a throwaway PostgreSQL and Redis; HAProxy in
the root namespace with the configuration docs/howto/fleet.md shows. Rows (wrk closed loop, 16 connections,
one OIP v2 infer of the 20-feature logistic regression per request):
  direct      wrk -> host1's address in its namespace (the baseline)
  haproxy N   wrk -> HAProxy -> N hosts (the others disabled through HAProxy's runtime API)
The baseline and the one-replica row are measured three times each, interleaved with the others, and the ratios
use their medians, so a machine whose load changes during the run moves both. On a 2-core machine the replicas, HAProxy and wrk share the
same cores: the figure that matters is HAProxy's overhead at one replica (goal >= 0.8x of direct); more replicas
cannot add cores here.
Needs root (ip netns), haproxy (scripts/install-haproxy.sh), wrk (scripts/install-wrk.sh), PostgreSQL and Redis
server programs (scripts/services.sh).
Run: .venv/bin/python benchmarks/fleet.py   (BENCH_SECONDS=15 for longer rows)
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from tests.fleet.conftest import setup_fleet  # noqa: E402
from tests.fleet.netfleet import HOST_PORT, Fleet, haproxy_binary, missing_tools  # noqa: E402
from tests.serving.conftest import COLUMNS  # noqa: E402

from _runner import Benchmark, package_version  # noqa: E402
from serving import wrk  # noqa: E402

SECONDS = float(os.environ.get("BENCH_SECONDS", "5"))
CONNECTIONS = 16


def _max_sessions(stat_csv: str, server: str) -> int:
    """The most sessions HAProxy had open at once to ``server`` (``show stat``'s smax)."""
    lines = stat_csv.splitlines()
    header = lines[0].lstrip("# ").split(",")
    for line in lines[1:]:
        row = dict(zip(header, line.split(","), strict=False))
        if row.get("pxname") == "serve" and row.get("svname") == server:
            return int(row.get("smax") or 0)
    return 0


def main() -> None:
    missing = missing_tools() or (None if shutil.which("wrk") else "wrk is needed: bash scripts/install-wrk.sh")
    if missing:
        raise SystemExit(missing)
    bench = Benchmark("fleet", f"HAProxy in front of modelmill serve hosts in network namespaces, on "
                               f"{os.cpu_count()} cores; wrk closed loop, {CONNECTIONS} connections, "
                               f"{SECONDS:.0f} s per row")
    haproxy = os.popen(f"{haproxy_binary()} -v").readline().split(" ")[2] if haproxy_binary() else None
    bench.versions(haproxy=haproxy, uvicorn=package_version("uvicorn"))
    x = np.random.default_rng(3).normal(size=len(COLUMNS))
    body = json.dumps({"inputs": [{"name": c, "shape": [1], "datatype": "FP64", "data": [float(v)]}
                                  for c, v in zip(COLUMNS, x, strict=True)]}).encode()
    root = Path(tempfile.mkdtemp(prefix="mm-bench-fleet-")) / "proj"
    fleet = Fleet(root, hosts=3)
    try:
        fleet.start(setup_fleet)
        assert fleet.balancer is not None
        lb = fleet.balancer
        direct_url = f"{fleet.hosts[0].url}/v2/models/clf/infer"
        lb_url = f"{lb.url}/v2/models/clf/infer"
        names = [h.name for h in fleet.hosts]

        def pool(n: int) -> None:
            for i, name in enumerate(names):
                lb.command(f"{'enable' if i < n else 'disable'} server serve/{name}")

        def run(label: str, url: str) -> dict[str, Any]:
            wrk(url, body, CONNECTIONS, 1)  # warm the connections and the model
            r = wrk(url, body, CONNECTIONS, SECONDS)
            bench.row(label, **r)
            return r

        figures: dict[str, list[float]] = {}
        plan = [("direct", direct_url, 0), ("haproxy 1", lb_url, 1), ("haproxy 2", lb_url, 2),
                ("direct", direct_url, 0), ("haproxy 1", lb_url, 1), ("haproxy 3", lb_url, 3),
                ("direct", direct_url, 0), ("haproxy 1", lb_url, 1)]
        server_conns: list[int] = []
        for label, url, n in plan:
            if n:
                pool(n)
            figures.setdefault(label, []).append(run(label, url)["rps"])
            if n == 1:
                server_conns.append(_max_sessions(lb.command("show stat"), names[0]))
        direct = statistics.median(figures["direct"])
        one = statistics.median(figures["haproxy 1"])
        bench.ratio("haproxy 1 replica vs direct", one / direct, goal=">= 0.8", met=one / direct >= 0.8)
        bench.ratio("haproxy 2 replicas vs direct", figures["haproxy 2"][0] / direct)
        bench.ratio("haproxy 3 replicas vs direct", figures["haproxy 3"][0] / direct)
        bench.note(f"hosts listen on 10.x.y.1N:{HOST_PORT} in their own namespaces; wrk and HAProxy run in the root "
                   "namespace, so direct and balanced requests cross the same veth link")
        bench.note(f"for wrk's {CONNECTIONS} connections HAProxy held at most {max(server_conns)} at once to the one "
                   "replica (haproxy 1, show stat smax)")
        bench.note("direct and haproxy 1 are measured three times each, interleaved with the other rows; the ratios "
                   "use their medians (the machine is shared: rows of one setup vary by up to 2x here)")
    finally:
        fleet.close()
        shutil.rmtree(root.parent, ignore_errors=True)
    bench.finish()


if __name__ == "__main__":
    main()
