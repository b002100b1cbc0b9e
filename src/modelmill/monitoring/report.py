"""``modelmill report``: one self-contained HTML file with inline SVG charts (no scripts, no network).

Sections, each present when there is data for it: the drift table; reference
vs current distributions of the drifted columns; drift share over time; model
metrics over time; latency percentiles over time.

    >>> import numpy as np
    >>> from modelmill.monitoring.drift import detect_drift, summarize
    >>> rng = np.random.default_rng(0)
    >>> ref, cur = {"x": rng.normal(size=3000)}, {"x": rng.normal(1, 1, 3000)}
    >>> html = render_report(drift=detect_drift(ref, cur), reference=summarize(ref), current=summarize(cur))
    >>> html.startswith("<!DOCTYPE html>") and "<svg" in html and "http" not in html
    True
"""

from __future__ import annotations

import datetime as dt
import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from modelmill.monitoring.drift import ColumnSummary, DriftReport, binned_percents
from modelmill.monitoring.performance import PerformanceMonitor
from modelmill.project import Project

__all__ = [
    "build_report",
    "line_chart",
    "render_report",
    "share_chart",
    "write_report",
]

PALETTE = ("#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2", "#FF9DA6", "#9D755D")
W, H = 620, 260
ML, MR, MT, MB = 56, 40, 30, 46  # margins: left, right, top, bottom


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _fmt(v: float) -> str:
    if v == 0 or not math.isfinite(v):
        return "0" if v == 0 else str(v)
    a = abs(v)
    if a >= 1e4 or a < 1e-3:
        return f"{v:.2e}"
    return f"{v:.3g}"


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    step = 10.0 ** math.floor(math.log10((hi - lo) / n))
    for mult in (1, 2, 2.5, 5, 10):
        if (hi - lo) / (step * mult) <= n:
            step *= mult
            break
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 1)]


def _frame(title: str, x_label: str, y_label: str) -> list[str]:
    return [f'<svg width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
            f'role="img" aria-label="{_esc(title)}">',
            f'<rect width="{W}" height="{H}" fill="#ffffff"/>',
            f'<text x="{W / 2}" y="18" text-anchor="middle" font-size="14" font-weight="600">{_esc(title)}</text>',
            f'<text x="{W / 2}" y="{H - 6}" text-anchor="middle" font-size="11" fill="#555">{_esc(x_label)}</text>',
            f'<text x="14" y="{H / 2}" text-anchor="middle" font-size="11" fill="#555" '
            f'transform="rotate(-90 14 {H / 2})">{_esc(y_label)}</text>']


def _y_axis(parts: list[str], lo: float, hi: float, sy: Any) -> None:
    for t in _ticks(lo, hi):
        y = sy(t)
        parts.append(f'<line x1="{ML}" x2="{W - MR}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e5e5"/>')
        parts.append(f'<text x="{ML - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="10">{_fmt(t)}</text>')
    parts.append(f'<line x1="{ML}" x2="{ML}" y1="{MT}" y2="{H - MB}" stroke="#333"/>')
    parts.append(f'<line x1="{ML}" x2="{W - MR}" y1="{H - MB}" y2="{H - MB}" stroke="#333"/>')


def _legend(parts: list[str], names: Sequence[str]) -> None:
    x = float(ML + 8)
    for i, name in enumerate(names):
        parts.append(f'<rect x="{x}" y="{MT + 2}" width="10" height="10" fill="{PALETTE[i % len(PALETTE)]}"/>')
        parts.append(f'<text x="{x + 14}" y="{MT + 11}" font-size="10">{_esc(name)}</text>')
        x += 22 + 6.5 * len(str(name))


def share_chart(title: str, labels: Sequence[str], reference: Sequence[float], current: Sequence[float]) -> str:
    """Side-by-side bars of the reference and current share per bin or category."""
    k = max(len(labels), 1)
    top = max([*reference, *current, 1e-9]) * 1.1
    plot_w, plot_h = W - ML - MR, H - MT - MB
    sy = lambda v: MT + plot_h * (1 - v / top)  # noqa: E731
    parts = _frame(title, "bin" if len(labels) > 12 else "value", "share of rows")
    _y_axis(parts, 0.0, top, sy)
    slot = plot_w / k
    bar = max(slot * 0.4, 0.5)
    for i in range(len(labels)):
        for j, series in enumerate((reference, current)):
            y = sy(series[i])
            x = ML + i * slot + slot * 0.1 + j * bar
            parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{max(H - MB - y, 0):.1f}" '
                         f'fill="{PALETTE[j]}"><title>{_esc(labels[i])}: {series[i]:.4f}</title></rect>')
    every = max(1, math.ceil(k / 10))
    for i in range(0, len(labels), every):
        x = ML + (i + 0.5) * slot
        parts.append(f'<text x="{x:.1f}" y="{H - MB + 14}" text-anchor="middle" font-size="9">'
                     f'{_esc(str(labels[i])[:12])}</text>')
    _legend(parts, ["reference", "current"])
    parts.append("</svg>")
    return "".join(parts)


def line_chart(title: str, series: Mapping[str, Sequence[tuple[float, float]]], *, y_label: str,
               threshold: float | None = None, time_axis: bool = True) -> str:
    """Lines over time (x in epoch seconds); a dashed line marks ``threshold``."""
    points = [(x, y) for s in series.values() for x, y in s if math.isfinite(y)]
    parts = _frame(title, "time (UTC)" if time_axis else "", y_label)
    if not points:
        parts.append(f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle" font-size="12">no data</text></svg>')
        return "".join(parts)
    xs = [p[0] for p in points]
    ys = [p[1] for p in points] + ([threshold] if threshold is not None else [])
    x0, x1 = min(xs), max(xs)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    y0, y1 = min(0.0, min(ys)), max(ys) * 1.1 or 1.0
    plot_w, plot_h = W - ML - MR, H - MT - MB
    sx = lambda v: ML + plot_w * (v - x0) / (x1 - x0)  # noqa: E731
    sy = lambda v: MT + plot_h * (1 - (v - y0) / (y1 - y0))  # noqa: E731
    _y_axis(parts, y0, y1, sy)
    for t in np.linspace(x0, x1, 4):
        label = dt.datetime.fromtimestamp(float(t), tz=dt.UTC).strftime("%m-%d %H:%M") if time_axis else _fmt(t)
        parts.append(f'<text x="{sx(t):.1f}" y="{H - MB + 14}" text-anchor="middle" font-size="9">{label}</text>')
    if threshold is not None:
        parts.append(f'<line x1="{ML}" x2="{W - MR}" y1="{sy(threshold):.1f}" y2="{sy(threshold):.1f}" '
                     f'stroke="#d62728" stroke-dasharray="5,4"/>')
    for i, (name, pts) in enumerate(series.items()):
        good = sorted((x, y) for x, y in pts if math.isfinite(y))
        color = PALETTE[i % len(PALETTE)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in good)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        for x, y in good:
            parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{color}">'
                         f'<title>{_esc(name)}: {_fmt(y)}</title></circle>')
    _legend(parts, list(series))
    parts.append("</svg>")
    return "".join(parts)


def _distribution(name: str, ref: ColumnSummary, cur: ColumnSummary, top: int = 20) -> str:
    r, c, edges = binned_percents(ref, cur)
    if edges is not None:
        labels = [_fmt(float(e)) for e in edges[:-1]]
    else:
        keys = np.union1d(*(s.unique()[0].astype(str) if ref.kind != cur.kind else s.unique()[0]
                            for s in (ref, cur)))
        labels = [str(k) for k in keys]
        if len(labels) > top:
            order = np.argsort(-(r + c))[:top]
            labels, r, c = [labels[i] for i in order], r[order], c[order]
    return share_chart(f"{name}: reference vs current", labels, list(r), list(c))


_CSS = """body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px;color:#222;max-width:1300px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;padding:4px 8px;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}.drift{color:#c0392b;font-weight:600}
.grid{display:flex;flex-wrap:wrap;gap:12px}.muted{color:#777}"""


def render_report(*, title: str = "modelmill monitoring report", drift: DriftReport | None = None,
                  reference: Mapping[str, ColumnSummary] | None = None,
                  current: Mapping[str, ColumnSummary] | None = None,
                  windows: Sequence[Mapping[str, Any]] = (), metrics: Sequence[Mapping[str, Any]] = (),
                  latency: Sequence[Mapping[str, Any]] = (), max_columns: int = 12) -> str:
    """The HTML document. ``windows`` are monitoring-window rows (at, model, version, drift_share, drift),
    ``metrics`` rolling performance rows (bucket, model, version, variant, metrics), ``latency`` rows
    (bucket, model, version, variant, p50_ms, p95_ms, p99_ms)."""
    now = dt.datetime.now(tz=dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>",
           f"<h1>{_esc(title)}</h1><p class='muted'>generated {now} by modelmill</p>"]
    if drift is not None:
        verdict = "drift detected" if drift.dataset_drift else "no dataset drift"
        out.append(f"<h2>Data drift: {verdict}</h2><p>{len(drift.drifted)} of {len(drift.columns)} columns drifted "
                   f"(share {drift.drift_share:.2f}, threshold {drift.share_threshold:.2f}).</p>")
        out.append("<table><tr><th>column</th><th>type</th><th>test</th><th>statistic</th><th>p-value</th>"
                   "<th>threshold</th><th>PSI</th><th>drift</th></tr>")
        for name, c in drift.columns.items():
            p = "" if c.p_value is None else _fmt(c.p_value)
            cls = " class='drift'" if c.drift else ""
            out.append(f"<tr><td>{_esc(name)}</td><td>{c.type}</td><td>{c.test}</td><td>{_fmt(c.statistic)}</td>"
                       f"<td>{p}</td><td>{_fmt(c.threshold)}</td><td>{_fmt(c.psi)}</td>"
                       f"<td{cls}>{'yes' if c.drift else 'no'}</td></tr>")
        out.append("</table>")
        if reference and current:
            shown = [n for n in drift.drifted if n in reference and n in current][:max_columns]
            if shown:
                out.append("<h2>Distributions of drifted columns</h2><div class='grid'>")
                out.extend(_distribution(n, reference[n], current[n]) for n in shown)
                out.append("</div>")
    if windows:
        out.append("<h2>Drift over time</h2><div class='grid'>")
        share: dict[str, list[tuple[float, float]]] = {}
        per_col: dict[str, list[tuple[float, float]]] = {}
        for w in windows:
            if w.get("drift_share") is None:
                continue
            key = f"{w['model']}@{w['version']}"
            share.setdefault(key, []).append((float(w["at"]), float(w["drift_share"])))
            for col, d in (w.get("drift") or {}).get("columns", {}).items():
                if d.get("test") in ("wasserstein", "jensenshannon"):
                    per_col.setdefault(f"{key} {col}", []).append((float(w["at"]), float(d["statistic"])))
        out.append(line_chart("Share of drifted columns", share, y_label="drift share", threshold=0.5))
        top = dict(sorted(per_col.items(), key=lambda kv: -max(y for _, y in kv[1]))[:6])
        if top:
            out.append(line_chart("Drift distance of the most drifted columns", top, y_label="distance",
                                  threshold=0.1))
        out.append("</div>")
    if metrics:
        out.append("<h2>Model metrics over time (labelled predictions)</h2><div class='grid'>")
        for metric in ("auc", "accuracy", "log_loss", "calibration_error", "precision", "recall"):
            series: dict[str, list[tuple[float, float]]] = {}
            for m in metrics:
                v = m.get(metric)
                if v is None or not math.isfinite(float(v)):
                    continue
                series.setdefault(f"{m['model']}@{m['version']} {m['variant']}", []).append(
                    (_epoch(m["bucket"]), float(v)))
            if series:
                out.append(line_chart(metric, series, y_label=metric))
        out.append("</div>")
    if latency:
        out.append("<h2>Latency</h2><div class='grid'>")
        lat: dict[str, list[tuple[float, float]]] = {}
        for row in latency:
            for q in ("p50_ms", "p95_ms", "p99_ms"):
                lat.setdefault(f"{row['model']}@{row['version']} {row['variant']} {q[:3]}", []).append(
                    (_epoch(row["bucket"]), float(row[q])))
        out.append(line_chart("Prediction latency", lat, y_label="milliseconds"))
        out.append("</div>")
    if drift is None and not windows and not metrics and not latency:
        out.append("<p>No monitoring data yet: serve predictions, log labels and run <code>modelmill monitor</code>, "
                   "or pass <code>--reference</code> and <code>--current</code>.</p>")
    out.append("</body></html>")
    return "\n".join(out)


def _epoch(value: Any) -> float:
    if isinstance(value, dt.datetime):
        return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).timestamp()
    return float(value)


def build_report(project: Project, *, model: str | None = None, window: str | float = "1h",
                 since: float | None = None) -> str:
    """A report of everything the project has recorded: windows, labelled metrics, latency, and the
    latest window's drifted distributions against the stored reference."""
    from modelmill.monitoring.monitor import Monitor, MonitoringConfig
    from modelmill.monitoring.reference import ReferenceStore
    from modelmill.store.tables.monitoring import monitoring_windows as t

    q = sa.select(t).order_by(t.c.at)
    if model:
        q = q.where(t.c.model == model)
    if since is not None:
        q = q.where(t.c.at >= since)
    with project.db.engine.connect() as conn:
        windows = [dict(r._mapping) for r in conn.execute(q)]
    perf = PerformanceMonitor(project)
    start = dt.datetime.fromtimestamp(since, tz=dt.UTC) if since is not None else None
    metrics: list[dict[str, Any]] = []
    latency: list[dict[str, Any]] = []
    if perf.feedback.has_predictions():
        latency = perf.latency(window=window, start=start, model=model)
        if perf.feedback.has_labels():
            metrics = perf.rolling(window=window, start=start, model=model)
    drift = reference = current = None
    latest = next((w for w in reversed(windows) if w.get("drift")), None)
    if latest is not None:
        monitor = Monitor(project, MonitoringConfig.from_section(project.settings.section("monitoring")))
        frame = monitor.logged_features(latest["model"], latest["version"], start=latest["window_start"],
                                        end=latest["window_end"])
        refs = ReferenceStore(project)
        if frame is not None and refs.exists(latest["model"], latest["version"]):
            from modelmill.monitoring.drift import summarize
            from modelmill.monitoring.reference import PREDICTION_COLUMN

            profile = refs.load(latest["model"], latest["version"])
            frame = frame.rename(columns={"__output__": PREDICTION_COLUMN})
            names = [c for c in frame.columns if c in profile.columns]
            current = summarize(frame, columns=names, kinds={n: profile.columns[n].kind for n in names})
            reference = {n: profile.columns[n] for n in names}
            drift = profile.compare(frame[[n for n in names if n != PREDICTION_COLUMN]],
                                    predictions=frame[PREDICTION_COLUMN].to_numpy(),
                                    options=monitor.config.drift)
    title = f"modelmill monitoring report{f' — {model}' if model else ''}"
    return render_report(title=title, drift=drift, reference=reference, current=current, windows=windows,
                         metrics=metrics, latency=latency)


def write_report(path: str | Path, document: str) -> Path:
    """Write the HTML atomically (temp file + rename)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(document, encoding="utf-8")
    tmp.replace(out)
    return out
