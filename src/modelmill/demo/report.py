"""The demo's ``report.html``: the month-by-month summary on top of modelmill's monitoring report."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import pandas as pd

from modelmill.demo.flights import MONTH_COLUMNS, DemoResult, month_table
from modelmill.monitoring import render_report, write_report
from modelmill.project import Project

__all__ = ["write_demo_report"]


def write_demo_report(project: Project, result: DemoResult, path: Path, *, last_drift: Any = None) -> Path:
    """Write one self-contained HTML file: summary table, events, drift, AUC and latency over the months."""
    windows, metrics, latency = [], [], []
    for row in result.months:
        start = pd.Timestamp(f"{row.month}-01", tz="UTC")
        end = start + pd.DateOffset(months=1)
        version = row.production or 0
        if row.drift_share is not None:
            windows.append({"at": end.timestamp(), "model": result.model, "version": version,
                            "drift_share": row.drift_share, "drift": row.drift})
        if row.auc is not None:
            metrics.append({"bucket": start.to_pydatetime(), "model": result.model, "version": "production",
                            "variant": "all", "auc": row.auc})
        if row.p50_ms is not None:
            latency.append({"bucket": start.to_pydatetime(), "model": result.model, "version": "client",
                            "variant": "all", "p50_ms": row.p50_ms, "p95_ms": row.p95_ms, "p99_ms": row.p99_ms})
    drift, reference, current = last_drift if last_drift is not None else (None, None, None)
    doc = render_report(title="modelmill demo: a year of New York flights", drift=drift, reference=reference,
                        current=current, windows=windows, metrics=metrics, latency=latency)
    marker = "</p>"
    cut = doc.index(marker) + len(marker)
    return write_report(path, doc[:cut] + _summary(result) + doc[cut:])


def _summary(result: DemoResult) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in MONTH_COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in r) + "</tr>"
                   for r in month_table(result.months))
    events = "".join(f"<li>{html.escape(e)}</li>" for e in result.events)
    extra = ""
    if result.ab:
        extra += (f"<p><b>A/B test</b> ({html.escape(str(result.ab['month']))}, log loss): "
                  f"v{result.ab['control_version']} (control) vs v{result.ab['treatment_version']} (treatment): "
                  f"{html.escape(str(result.ab.get('decision')))} — {html.escape(str(result.ab.get('reason')))}</p>")
    if result.broken:
        extra += (f"<p><b>Broken candidate</b> v{result.broken['version']}: "
                  f"{html.escape(str(result.broken.get('status')))} — {html.escape(str(result.broken.get('reason')))}</p>")
    return (f"<h2>Month by month</h2><table><tr>{head}</tr>{body}</table>{extra}"
            f"<h2>What happened</h2><ul>{events}</ul>")
