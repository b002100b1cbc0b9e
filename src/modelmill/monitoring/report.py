"""``modelmill report``: one self-contained HTML file with inline SVG charts (no scripts, no network).

The charts are the web console's (:mod:`modelmill.console.charts`): data gaps are drawn as gaps, the
delayed-label metrics carry their sample size and 95% interval, legends wrap instead of being cut,
each latency series has its own chart, and numbers read 8.82k, not 8.82e+03. The drift table says
which model version, window and number of rows it covers.

Sections, each present when there is data for it: the drift table; reference
vs current distributions of the drifted columns; drift share over time; model
metrics over time; each binary model's metrics estimated from its probabilities
beside the realised ones (:mod:`modelmill.monitoring.estimate`); latency
percentiles over time.

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

from modelmill.console.charts import CSS as CHART_CSS
from modelmill.console.charts import Point, human, line_chart, share_chart
from modelmill.console.intervals import metric_interval
from modelmill.monitoring.drift import ColumnSummary, DriftReport, binned_percents
from modelmill.monitoring.performance import PerformanceMonitor
from modelmill.project import Project

__all__ = [
    "build_report",
    "drift_charts",
    "estimate_table",
    "latency_charts",
    "line_chart",
    "metric_charts",
    "render_report",
    "share_chart",
    "write_report",
]



def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "–"
    return dt.datetime.fromtimestamp(float(epoch), tz=dt.UTC).strftime("%Y-%m-%d %H:%M")


def _distribution(name: str, ref: ColumnSummary, cur: ColumnSummary, top: int = 20) -> str:
    r, c, edges = binned_percents(ref, cur)
    if edges is not None:
        labels = [human(float(e)) for e in edges[:-1]]
    else:
        keys = np.union1d(*(s.unique()[0].astype(str) if ref.kind != cur.kind else s.unique()[0]
                            for s in (ref, cur)))
        labels = [str(k) for k in keys]
        if len(labels) > top:
            order = np.argsort(-(r + c))[:top]
            labels, r, c = [labels[i] for i in order], r[order], c[order]
    return share_chart(f"{name}: reference vs current", labels, list(r), list(c))


_CSS = """body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px;color:#1a1a1a;max-width:1300px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ccc;padding-bottom:4px}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}.drift{color:#a61b0f;font-weight:600}
.grid{display:flex;flex-wrap:wrap;gap:12px}.muted{color:#555}""" + CHART_CSS

#: The delayed-label metrics drawn over time, each with its sample size (and interval where it has one).
METRICS = ("auc", "accuracy", "precision", "recall", "log_loss", "calibration_error")


def render_report(*, title: str = "modelmill monitoring report", drift: DriftReport | None = None,
                  reference: Mapping[str, ColumnSummary] | None = None,
                  current: Mapping[str, ColumnSummary] | None = None,
                  windows: Sequence[Mapping[str, Any]] = (), metrics: Sequence[Mapping[str, Any]] = (),
                  latency: Sequence[Mapping[str, Any]] = (), max_columns: int = 12,
                  scope: Mapping[str, Any] | None = None, estimates: Sequence[Mapping[str, Any]] = ()) -> str:
    """The HTML document. ``windows`` are monitoring-window rows (at, model, version, drift_share, drift),
    ``metrics`` rolling performance rows (bucket, model, version, variant, n, metrics), ``latency`` rows
    (bucket, model, version, variant, p50_ms, p95_ms, p99_ms). ``scope`` says what the drift table covers
    (``model``, ``version``, ``window_start``, ``window_end``, ``n_rows``, ``reference_rows``). ``estimates`` are
    :meth:`~modelmill.monitoring.Monitor.performance` rows, whose ``estimated`` metrics are shown beside the
    realised ones."""
    now = dt.datetime.now(tz=dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>",
           f"<h1>{_esc(title)}</h1><p class='muted'>generated {now} by modelmill</p>"]
    if drift is not None:
        verdict = "drift detected" if drift.dataset_drift else "no dataset drift"
        out.append(f"<h2>Data drift: {verdict}</h2>")
        out.append(f"<p class='scope'>{_scope(scope, current)}</p>")
        out.append(f"<p>{len(drift.drifted)} of {len(drift.columns)} columns drifted "
                   f"(share {drift.drift_share:.2f}, threshold {drift.share_threshold:.2f}).</p>")
        out.append("<table><tr><th>column</th><th>type</th><th>test</th><th>statistic</th><th>p-value</th>"
                   "<th>threshold</th><th>PSI</th><th>drift</th></tr>")
        for name, c in drift.columns.items():
            p = "" if c.p_value is None else human(c.p_value)
            cls = " class='drift'" if c.drift else ""
            out.append(f"<tr><td>{_esc(name)}</td><td>{c.type}</td><td>{c.test}</td><td>{human(c.statistic)}</td>"
                       f"<td>{p}</td><td>{human(c.threshold)}</td><td>{human(c.psi)}</td>"
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
        out.extend(drift_charts(windows))
        out.append("</div>")
    if metrics:
        out.append("<h2>Model metrics over time (labelled predictions)</h2>")
        out.append("<p class='muted'>Each point is one window's labelled predictions; the band is its 95% "
                   "confidence interval and the tooltip gives its sample size n.</p><div class='grid'>")
        out.extend(metric_charts(metrics))
        out.append("</div>")
    shown_estimates = estimate_table(estimates)
    out.extend(shown_estimates)
    if latency:
        out.append("<h2>Latency</h2><div class='grid'>")
        out.extend(latency_charts(latency))
        out.append("</div>")
    if drift is None and not windows and not metrics and not latency and not shown_estimates:
        out.append("<p>No monitoring data yet: serve predictions, log labels and run <code>modelmill monitor</code>, "
                   "or pass <code>--reference</code> and <code>--current</code>.</p>")
    out.append("</body></html>")
    return "\n".join(out)


def _scope(scope: Mapping[str, Any] | None, current: Mapping[str, ColumnSummary] | None) -> str:
    """What the drift table covers: the model version, the window and its rows, the reference's rows."""
    scope = dict(scope or {})
    rows = scope.get("n_rows")
    if rows is None and current:
        rows = max((c.n for c in current.values() if getattr(c, "n", None) is not None), default=None)
    parts = []
    if scope.get("model") is not None:
        parts.append(f"model <b>{_esc(scope['model'])}@{_esc(scope.get('version'))}</b>")
    if scope.get("window_start") is not None or scope.get("window_end") is not None:
        parts.append(f"window {_when(scope.get('window_start'))} to {_when(scope.get('window_end'))} UTC")
    parts.append(f"{human(rows)} rows" if rows is not None else "rows: unknown")
    if scope.get("reference_rows") is not None:
        parts.append(f"against a reference of {human(scope['reference_rows'])} rows")
    return "Covers " + ", ".join(parts) + "."


def drift_charts(windows: Sequence[Mapping[str, Any]], *, top: int = 6) -> list[str]:
    """The share of drifted columns per version over time and the distance of the most drifted columns; a
    window without a verdict (no data) is a gap."""
    share: dict[str, list[Point]] = {}
    per_col: dict[str, list[Point]] = {}
    for w in windows:
        key = f"{w['model']}@{w['version']}"
        at = _epoch(w["at"])
        n = w.get("n_rows")
        value = w.get("drift_share")
        share.setdefault(key, []).append(Point(at, None if value is None else float(value), n))
        columns = (w.get("drift") or {})
        columns = columns.get("columns", columns) if isinstance(columns, Mapping) else {}
        for col, d in columns.items():
            if isinstance(d, Mapping) and d.get("test") in ("wasserstein", "jensenshannon"):
                per_col.setdefault(f"{key} {col}", []).append(Point(at, float(d["statistic"]), n))
        if value is None:  # no verdict: every column's line breaks here too
            for name in per_col:
                if name.startswith(f"{key} "):
                    per_col[name].append(Point(at, None))
    charts = [line_chart("Share of drifted columns", share, y_label="drift share", threshold=0.5,
                         threshold_label="dataset drift at")]
    worst = dict(sorted(per_col.items(), key=lambda kv: -max((p.y or 0.0) for p in kv[1]))[:top])
    if worst:
        charts.append(line_chart("Drift distance of the most drifted columns", worst, y_label="distance",
                                 threshold=0.1, threshold_label="drift at"))
    return charts


def metric_charts(metrics: Sequence[Mapping[str, Any]]) -> list[str]:
    """One chart per delayed-label metric: a line per version and variant, with its interval and n."""
    charts = []
    for metric in METRICS:
        series: dict[str, list[Point]] = {}
        for m in metrics:
            if metric not in m or m.get("bucket") is None:
                continue
            v = m.get(metric)
            value = None if v is None or not math.isfinite(float(v)) else float(v)
            low, high, n = metric_interval(metric, m)
            series.setdefault(f"{m['model']}@{m['version']} {m.get('variant', 'all')}", []).append(
                Point(_epoch(m["bucket"]), value, n, low, high))
        if any(p.y is not None for s in series.values() for p in s):
            charts.append(line_chart(metric, series, y_label=metric))
    return charts


def _num(value: Any) -> str:
    return "" if value is None else f"{value:.4f}"


def estimate_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The estimated metrics of each version (no labels needed) beside the realised ones, as an HTML table."""
    body = []
    for r in rows:
        est = r.get("estimated") or {}
        if est.get("status") != "estimated":
            continue
        ece = est.get("calibration_error")
        for name, m in est.get("metrics", {}).items():
            realised = (r.get("metrics") or {}).get(name) or {}
            span = "" if m["low"] is None else f"{m['low']:.4f} – {m['high']:.4f}"
            err = "" if m.get("error") is None else f"{m['error']:+.4f}"
            body.append(f"<tr><td>{_esc(r['model'])}</td><td>{_esc(r['version'])}</td><td>{_esc(name)}</td>"
                        f"<td>{_num(m['value'])}</td><td>{span}</td><td>{est['n']}</td>"
                        f"<td>{_num(realised.get('value'))}</td><td>{realised.get('n', 0)}</td><td>{err}</td>"
                        f"<td>{'unknown' if ece is None else f'{ece:.4f}'}</td></tr>")
    if not body:
        return []
    level = next(float(r["estimated"]["level"]) for r in rows if (r.get("estimated") or {}).get("status") == "estimated")
    return ["<h2>Estimated performance (before the labels arrive)</h2>",
            "<p class='muted'>Estimated from every answered prediction's probability, labelled or not, as a "
            f"calibrated classifier's would score; the interval holds {level:.0%} of label draws. Trust it no "
            "further than the version's calibration error (measured on its labelled holdout) allows. The "
            "realised value is over the predictions whose label has arrived.</p>",
            "<table><tr><th>model</th><th>version</th><th>metric</th><th>estimated</th><th>interval</th>"
            "<th>predictions</th><th>realised</th><th>labelled</th><th>error</th><th>calibration error</th></tr>",
            *body, "</table>"]


def latency_charts(latency: Sequence[Mapping[str, Any]]) -> list[str]:
    """One chart per latency series (a model version and variant): its p50, p95 and p99."""
    per: dict[str, dict[str, list[Point]]] = {}
    for row in latency:
        if row.get("bucket") is None:  # no time on the chosen clock (e.g. no event time): cannot be placed
            continue
        key = f"{row['model']}@{row['version']} {row.get('variant', 'all')}"
        n = row.get("count", row.get("n"))
        for q in ("p50_ms", "p95_ms", "p99_ms"):
            v = row.get(q)
            per.setdefault(key, {}).setdefault(q[:3], []).append(
                Point(_epoch(row["bucket"]), None if v is None else float(v), None if n is None else int(n)))
    return [line_chart(f"Latency of {key}", series, y_label="milliseconds") for key, series in per.items()]


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
    config = MonitoringConfig.from_section(project.settings.section("monitoring"))
    perf = PerformanceMonitor(project, clock=config.clock)  # on the monitor's clock, as its windows are
    start = dt.datetime.fromtimestamp(since, tz=dt.UTC) if since is not None else None
    metrics: list[dict[str, Any]] = []
    latency: list[dict[str, Any]] = []
    if perf.feedback.has_predictions():
        latency = perf.latency(window=window, start=start, model=model)
        if perf.feedback.has_labels():
            metrics = perf.rolling(window=window, start=start, model=model)
    drift = reference = current = None
    scope: dict[str, Any] | None = None
    monitor = Monitor(project, config)
    estimates = [r for r in monitor.performance() if model is None or r["model"] == model]
    latest = next((w for w in reversed(windows) if w.get("drift")), None)
    if latest is not None:
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
            scope = {"model": latest["model"], "version": latest["version"], "window_start": latest["window_start"],
                     "window_end": latest["window_end"], "n_rows": len(frame),
                     "reference_rows": max((c.n for c in reference.values()), default=None)}
            drift = profile.compare(frame[[n for n in names if n != PREDICTION_COLUMN]],
                                    predictions=frame[PREDICTION_COLUMN].to_numpy(),
                                    options=monitor.config.drift)
    title = f"modelmill monitoring report{f' — {model}' if model else ''}"
    return render_report(title=title, drift=drift, reference=reference, current=current, windows=windows,
                         metrics=metrics, latency=latency, scope=scope, estimates=estimates)


def write_report(path: str | Path, document: str) -> Path:
    """Write the HTML atomically (temp file + rename)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(document, encoding="utf-8")
    tmp.replace(out)
    return out
