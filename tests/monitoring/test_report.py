"""The HTML report: self-contained, and drawn by a real browser (headless Chromium)."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from modelmill.monitoring import Monitor, MonitoringConfig, ReferenceStore
from modelmill.monitoring.report import build_report, write_report
from modelmill.project import Project

from .conftest import log_labels, log_predictions, need_binary
from .pngread import read_png


def _history(project: Project) -> None:
    """A model whose inputs drift over six hourly windows, with delayed labels."""
    rng = np.random.default_rng(11)
    train = pd.DataFrame({"temp": rng.normal(5, 6, 5000), "dewp": rng.normal(-3, 7, 5000),
                          "origin": rng.integers(0, 3, 5000)})  # origin's code, as the server receives it
    ReferenceStore(project).compute("flights", 1, train, predictions=rng.beta(2, 5, 5000))
    t0 = dt.datetime(2013, 7, 1, tzinfo=dt.UTC)
    monitor = Monitor(project, MonitoringConfig(window=3600.0))
    for h in range(6):
        shift = 4.0 * h
        feats = pd.DataFrame({"temp": rng.normal(5 + shift, 6, 600), "dewp": rng.normal(-3 + shift, 7, 600),
                              "origin": rng.integers(0, 3, 600)})
        y = rng.integers(0, 2, 600)
        out = np.clip(0.5 * y + rng.random(600) * 0.5 - 0.05 * h, 0, 1)
        at = t0 + dt.timedelta(hours=h)
        ids = log_predictions(project, model="flights", version=1, ts=at, features=feats, outputs=out,
                              latency_ms=rng.gamma(2, 2 + h, 600), spread_s=3500)
        log_labels(project, ids, y, at + dt.timedelta(hours=2))
        monitor.run_once(now=(at + dt.timedelta(hours=1)).timestamp())


def test_report_is_self_contained_and_drawn_in_chromium(project: Project, tmp_path: Path) -> None:
    chromium = need_binary("chromium", "install it with scripts/install-chromium.sh")
    _history(project)
    html = build_report(project, window="1h")
    out = write_report(tmp_path / "report.html", html)
    assert not re.search(r"<script|<link|src=|https?://", html)  # nothing to fetch: opens offline
    assert html.count("<svg") >= 6
    for section in ("Data drift", "Distributions of drifted columns", "Drift over time",
                    "Model metrics over time", "Latency"):
        assert section in html
    shot = tmp_path / "out.png"
    run = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--disable-component-update", "--disable-sync", "--no-first-run",
                          f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}", f"--screenshot={shot}",
                          "--window-size=1200,2000", out.as_uri()], capture_output=True, timeout=120)
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    img = read_png(shot)
    assert img.shape == (2000, 1200, 3)
    colours = np.unique(img.reshape(-1, 3), axis=0)
    assert len(colours) > 50 and img.std() > 10  # not a blank page
    # the two series colours of the charts are on screen
    for rgb in ((0x4C, 0x78, 0xA8), (0xF5, 0x85, 0x18)):
        assert np.any(np.all(np.abs(img.astype(int) - rgb) <= 3, axis=2)), rgb
