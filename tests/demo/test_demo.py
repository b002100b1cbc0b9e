"""The demo, shortened to one quarter (January–February train, March served), run as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from modelmill.demo.server import free_port


def run_demo(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELMILL_")}
    return subprocess.run([sys.executable, "-m", "modelmill", "demo", "--months", "3", "--json", *args], cwd=folder,
                          env=env, capture_output=True, text=True, timeout=1200)


def check_result(out: subprocess.CompletedProcess[str], folder: Path) -> dict:
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    march = result["months"][0]
    assert march["month"] == "2013-03"
    # Every March flight was asked for at its departure hour; labels arrived as planes landed.
    assert march["requests"] > 28_000 and march["errors"] == 0
    assert march["labelled"] > 0.9 * march["requests"]
    assert 0.6 < march["auc"] < 0.95
    assert march["drift_share"] is not None and march["p99_ms"] > 0
    assert march["drift_share_calibrated"] is not None  # the month's verdict with calibrated thresholds too
    # A fresh project: the first model trained is version 1, and each one registered after takes the next number.
    assert result["versions"] and result["versions"] == list(range(1, len(result["versions"]) + 1))
    html = (folder / "report.html").read_text()
    assert "<svg" in html and "2013-03" in html and "Month by month" in html
    return result


# A quarter of the demo takes one to two minutes on a quiet 2-core machine; the suite's 300 s default is too
# tight when the machine is busy (seen in CI: the real-servers run passed 300 s under load).
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_quarter_on_embedded_defaults(tmp_path: Path) -> None:
    result = check_result(run_demo(tmp_path), tmp_path)
    assert (tmp_path / "modelmill.toml").exists()
    models = subprocess.run([sys.executable, "-m", "modelmill", "models", "list", "--json"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120,
                            env={k: v for k, v in os.environ.items() if not k.startswith("MODELMILL_")})
    assert models.returncode == 0, models.stderr
    [listed] = json.loads(models.stdout)["models"]
    assert listed["name"] == "flights_delay" and listed["versions"] == result["versions"]
    assert result["timings"]
    # The demo is a client of the loop: its rounds ran `modelmill loop`'s code on the [models] table it wrote,
    # and `loop status` (the database alone) shows the last one, judged in 2013 (the event clock).
    status = subprocess.run([sys.executable, "-m", "modelmill", "loop", "status", "--json"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120,
                            env={k: v for k, v in os.environ.items() if not k.startswith("MODELMILL_")})
    assert status.returncode == 0, status.stderr
    loop = json.loads(status.stdout)
    model = loop["models"]["flights_delay"]
    assert model["pipeline"] == "modelmill.demo.pipeline:RECENT"
    assert model["rules"] == ["flights_delay.drift", "flights_delay.metric_drop"]
    assert model["production"] == listed["aliases"]["production"]
    assert model["last_round"] is not None and model["last_round"]["monitor"] in ("pass", "fail", "no_data")
    assert loop["last_round_at"] is not None
    # Every trigger the loop ran was decided by the loop (gated, then rolled out or not).
    if model["last_trigger"] is not None:
        assert model["last_decision"] is not None
        assert model["last_decision"]["trigger_id"] == model["last_trigger"]["id"]
    # The skew check recomputes every prediction served through the feature route, and finds none skewed.
    skew = subprocess.run([sys.executable, "-m", "modelmill", "features", "skew", "--model", "flights_delay",
                           "--json"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if not k.startswith("MODELMILL_")})
    assert skew.returncode == 0, skew.stdout[-2000:] + skew.stderr[-2000:]
    report = json.loads(skew.stdout)
    assert report["status"] == "pass" and report["mismatches"] == 0
    assert report["compared"] == report["rows"] >= result["months"][0]["requests"]
    # `modelmill serve` started in the same folder serves the production version over the OIP.
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "modelmill", "serve", "--port", str(port)], cwd=tmp_path,
                              env={k: v for k, v in os.environ.items() if not k.startswith("MODELMILL_")},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                meta = httpx.get(f"http://127.0.0.1:{port}/v2/models/flights_delay", timeout=2)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline and server.poll() is None, "modelmill serve did not start"
                time.sleep(0.3)
        assert meta.status_code == 200, meta.text
        production = listed["aliases"]["production"]
        assert str(production) in meta.json()["versions"]  # beside it, a rollout's candidate may still run
        inputs = [i["name"] for i in meta.json()["inputs"]]
        assert "weather__temp" in inputs and "carrier_delays__late_mean_7d" in inputs and "distance" in inputs
        body = {"inputs": [{"name": "input", "shape": [1, len(inputs)], "datatype": "FP64",
                            "data": [[1.0] * len(inputs)]}]}
        answer = httpx.post(f"http://127.0.0.1:{port}/v2/models/flights_delay/infer", json=body, timeout=10)
        assert answer.status_code == 200, answer.text
        assert 0.0 <= answer.json()["outputs"][0]["data"][0] <= 1.0
    finally:
        server.terminate()
        server.wait(20)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_quarter_on_real_servers(tmp_path: Path, pg_url: str, redis_url: str, nats_url: str) -> None:
    # A Redis database of its own: the demo clears its feature keys (mm:*) at the start.
    online = redis_url.rsplit("/", 1)[0] + "/7"
    check_result(run_demo(tmp_path, "--broker", nats_url, "--online", online, "--db", pg_url), tmp_path)
    toml = (tmp_path / "modelmill.toml").read_text()
    assert "nats://" in toml and "postgresql://" in toml
