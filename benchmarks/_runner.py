"""The one small runner every benchmark uses: a rich table on screen, figures as JSON on disk.

    from _runner import Benchmark
    bench = Benchmark("serving", "Online prediction, 32 connections")
    bench.versions(modelmill="0.1.0", bentoml=bento_version)
    bench.row("bare floor", rps=23000, p50_ms=1.2, p99_ms=3.1)
    bench.ratio("oip vs floor", 0.62, goal=">= 0.5")
    bench.finish()          # prints the table, writes benchmarks/results/serving.json

Every script is run by `make bench`; none is part of `make test`.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).with_name("results")
console = Console()


def machine() -> dict[str, Any]:
    """Cores, memory and CPU model of the machine the figures come from."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return {"cores": os.cpu_count(), "memory_gib": mem_gib, "cpu": cpu, "python": platform.python_version(),
            "platform": platform.platform()}


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def percentiles(samples_s: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/max in milliseconds from latencies in seconds."""
    xs = sorted(samples_s)
    if not xs:
        return {"p50_ms": float("nan"), "p90_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan")}

    def q(p: float) -> float:
        return xs[min(len(xs) - 1, int(p * len(xs)))] * 1000

    return {"p50_ms": q(0.50), "p90_ms": q(0.90), "p99_ms": q(0.99), "max_ms": xs[-1] * 1000,
            "mean_ms": statistics.fmean(xs) * 1000}


class Benchmark:
    """Collects rows of figures and ratios against baselines measured in the same run."""

    def __init__(self, name: str, title: str) -> None:
        self.name = name
        self.title = title
        self.rows: list[dict[str, Any]] = []
        self.ratios: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self._versions: dict[str, str | None] = {"modelmill": package_version("modelmill")}
        self._started = time.time()

    def versions(self, **tools: str | None) -> None:
        """Versions of every compared tool (pass None when a tool could not be installed)."""
        self._versions.update(tools)

    def row(self, label: str, **figures: Any) -> None:
        self.rows.append({"label": label, **figures})

    def ratio(self, label: str, value: float, *, goal: str = "", met: bool | None = None) -> None:
        self.ratios.append({"label": label, "value": value, "goal": goal, "met": met})

    def note(self, text: str) -> None:
        self.notes.append(text)

    def finish(self) -> Path:
        columns = _columns(self.rows)
        t = Table(title=self.title, title_justify="left")
        for col in ["", *columns]:
            t.add_column(col, justify="right" if col else "left")
        for r in self.rows:
            t.add_row(r["label"], *(_fmt(r.get(c)) for c in columns))
        console.print(t)
        if self.ratios:
            rt = Table(title="ratios", title_justify="left")
            for col in ("", "value", "goal", "met"):
                rt.add_column(col)
            for r in self.ratios:
                met = "" if r["met"] is None else ("yes" if r["met"] else "NO")
                rt.add_row(r["label"], _fmt(r["value"]), r["goal"], met)
            console.print(rt)
        for n in self.notes:
            console.print(f"note: {n}")
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / f"{self.name}.json"
        payload = {"name": self.name, "title": self.title, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                   "seconds": round(time.time() - self._started, 2), "machine": machine(),
                   "versions": self._versions, "rows": self.rows, "ratios": self.ratios, "notes": self.notes}
        out.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        console.print(f"wrote {out}")
        return out


def _columns(rows: Iterable[dict[str, Any]]) -> list[str]:
    cols: list[str] = []
    for r in rows:
        for k in r:
            if k != "label" and k not in cols:
                cols.append(k)
    return cols


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 100 else f"{v:,.0f}"
    return str(v)


def peer_venv(name: str, *packages: str) -> Path | None:
    """A virtualenv of its own for a peer tool (Feast, MLflow, Evidently, BentoML), created once.

    Returns the venv's python, or None when the packages cannot be installed here.
    """
    root = Path(__file__).resolve().parent.parent / ".bench-venvs" / name
    python = root / "bin" / "python"
    stamp = root / ".installed"
    want = " ".join(packages)
    if stamp.exists() and stamp.read_text() == want:
        return python
    try:
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
        console.print(f"installing {want} into {root} (once)…")
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *packages], check=True)
    except subprocess.CalledProcessError as exc:
        console.print(f"[yellow]could not install {want}: {exc}[/]")
        return None
    stamp.write_text(want)
    return python


def serve(folder: Path, args: Sequence[str] = (), *, timeout_s: float = 120.0) -> tuple[subprocess.Popen[bytes], str]:
    """``modelmill serve ARGS`` on a free port in ``folder`` (its ``modelmill.toml``; no ``MODELMILL_*`` from
    this shell), once ``/v2/health/ready`` answers 200: the process and its URL. Exits if it never does."""
    import httpx

    from modelmill.demo.server import free_port

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELMILL_")}
    proc = subprocess.Popen([sys.executable, "-m", "modelmill", "serve", *args, "--port", str(port)], cwd=folder,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=1.0).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise SystemExit(f"modelmill serve did not become ready in {timeout_s:.0f} s")
