"""The web console: p95 time to first render of each page on the demo's data (goal: <= 300 ms).

Runs ``modelmill serve`` over a demo's folder (``modelmill demo --months 3``, made here in a temporary
folder unless ``--folder`` names one already made), signs in with a read token, and loads every page
``--loads`` times in Debian's Chromium (Playwright). Each load's first render is the browser's
``first-contentful-paint`` (navigation start to the first pixels of the page); ``server`` is the time to
the response's first byte, which is the console reading the project. The baseline, in the same run, is
the sign-in page: the same shell, stylesheet and script with no data read, so each page's ratio is
what its data costs. The monitoring page is reused for 10 s (it reads the prediction log and joins the
labels), so its timed loads are mostly reuses: ``first_load_*`` is each page's first load, read anew.

    .venv/bin/python benchmarks/console.py [--folder DEMO_FOLDER] [--loads 20]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _runner import Benchmark, package_version, percentiles, serve

GOAL_MS = 300.0
MODEL = "flights_delay"
PAGES = ["", "runs", "rollouts", f"rollouts/{MODEL}", "experiments", "monitoring", "monitoring?clock=event",
         "ingestion", f"models/{MODEL}", f"models/{MODEL}/versions/1"]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MODELMILL_")}


def _demo(folder: Path) -> None:
    print(f"running modelmill demo --months 3 in {folder} (a few minutes)…", flush=True)
    subprocess.run([sys.executable, "-m", "modelmill", "demo", "--months", "3", "--json"], cwd=folder, env=_env(),
                   check=True, stdout=subprocess.DEVNULL)


def _token(folder: Path) -> str:
    from modelmill.config import load_settings
    from modelmill.project import Project
    from modelmill.security import TokenStore

    project = Project(load_settings(cwd=folder))
    try:
        return TokenStore(project).create("read", name=f"bench-{int(time.time())}", actor="benchmark")[1]
    finally:
        project.close()


def _measure(page: Any, url: str) -> tuple[float, float]:
    """(first contentful paint, time to first byte) of one load, in seconds."""
    response = page.goto(url, wait_until="load")
    if response is None or response.status != 200:
        raise SystemExit(f"{url}: HTTP {response and response.status}")
    timing = page.evaluate("""() => {
        const nav = performance.getEntriesByType('navigation')[0];
        const paint = performance.getEntriesByName('first-contentful-paint')[0];
        return {fcp: paint ? paint.startTime : null, ttfb: nav.responseStart - nav.startTime};
    }""")
    fcp = timing["fcp"] if timing["fcp"] is not None else page.evaluate("performance.now()")
    return fcp / 1000, timing["ttfb"] / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, help="a folder where modelmill demo --months 3 already ran")
    parser.add_argument("--loads", type=int, default=20, help="timed loads per page (after 2 untimed)")
    args = parser.parse_args()
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("chromium is not on PATH: bash scripts/install-chromium.sh")
    from playwright.sync_api import sync_playwright

    scratch = None
    folder = args.folder
    if folder is None:
        scratch = tempfile.mkdtemp(prefix="modelmill-console-bench-")
        folder = Path(scratch)
        _demo(folder)
    token = _token(folder)
    proc, url = serve(folder)
    bench = Benchmark("console", f"Web console over the demo's data (--months 3): {args.loads} loads per page")
    bench.versions(chromium=subprocess.run([chromium, "--version"], capture_output=True, text=True).stdout.strip(),
                   playwright=package_version("playwright"))
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            page = context.new_page()
            page.goto(f"{url}/ui/signin")
            page.fill("#token", token)
            page.press("#token", "Enter")
            page.wait_for_url(f"{url}/ui/")
            results: dict[str, dict[str, float]] = {}
            for path in ["signin", *PAGES]:
                target = f"{url}/ui/{path}"
                cold_fcp, cold_ttfb = _measure(page, target)  # the first load: the monitoring page's cache is cold
                _measure(page, target)
                fcp, ttfb = zip(*(_measure(page, target) for _ in range(args.loads)), strict=True)
                f, s = percentiles(list(fcp)), percentiles(list(ttfb))
                results[path] = {"fcp_p50_ms": f["p50_ms"], "fcp_p95_ms": _p95(fcp), "server_p50_ms": s["p50_ms"],
                                 "server_p95_ms": _p95(ttfb), "first_load_fcp_ms": cold_fcp * 1000,
                                 "first_load_server_ms": cold_ttfb * 1000}
                bench.row(f"/ui/{path}", **results[path], goal_ms=GOAL_MS,
                          met="yes" if _p95(fcp) <= GOAL_MS else "NO")
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    base = results["signin"]["fcp_p95_ms"]
    for path in PAGES:
        p95 = results[path]["fcp_p95_ms"]
        bench.ratio(f"/ui/{path} p95 first render / sign-in page's", p95 / base, goal=f"p95 <= {GOAL_MS:.0f} ms",
                    met=p95 <= GOAL_MS)
    worst = max(PAGES, key=lambda p: results[p]["fcp_p95_ms"])
    bench.note(f"slowest page: /ui/{worst}, p95 first render {results[worst]['fcp_p95_ms']:.0f} ms "
               f"({results[worst]['server_p95_ms']:.0f} ms of it the server's answer)")
    bench.note(f"{os.cpu_count()} cores; the server and the browser share them")
    cold = max(PAGES, key=lambda p: results[p]["first_load_fcp_ms"])
    bench.note(f"slowest first load (nothing reused): /ui/{cold}, first render "
               f"{results[cold]['first_load_fcp_ms']:.0f} ms, {results[cold]['first_load_server_ms']:.0f} ms "
               "of it the server's answer")
    bench.finish()


def _p95(samples_s: Any) -> float:
    xs = sorted(samples_s)
    return xs[min(len(xs) - 1, int(0.95 * len(xs)))] * 1000


if __name__ == "__main__":
    main()
