"""Hand-written SVG charts, shared by the web console and the static ``report.html``.

Every chart is a ``<figure>``: an inline ``<svg>`` (no script, no external reference) and, under it,
an HTML legend that wraps instead of being cut. What the charts promise a reader:

- a line is never drawn across missing data: a point whose value is None (a window with no data), or
  a step in time much longer than the series' usual one, ends the line, and the gap is shaded and
  labelled ``no data`` (``class="gap"``);
- a point may carry its sample size and a confidence interval: the interval is drawn as a band and
  both are in the point's tooltip;
- numbers read as people read them: ``12.3k``, ``4.5M``, ``0.0012``, never ``1.23e+04``.

    >>> human(12345), human(8820.0), human(0.000123), human(2_500_000), human(None)
    ('12.3k', '8.82k', '0.000123', '2.5M', '–')
    >>> svg = line_chart("auc", {"v1": [Point(0, 0.8), Point(60, None), Point(120, 0.82)]}, y_label="auc")
    >>> 'class="gap"' in svg and svg.count("<polyline") == 2
    True
"""

from __future__ import annotations

import datetime as dt
import html
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["CSS", "PALETTE", "Point", "bar_chart", "human", "interval", "line_chart", "share_chart", "ticks"]

# Colour-blind-safe (Tableau 10), each at least 3:1 against the white plot.
PALETTE = ("#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2", "#FF9DA6", "#9D755D")
W, H = 620, 260
ML, MR, MT, MB = 62, 24, 30, 40  # margins: left, right, top, bottom
MAX_DOTS = 150  # a series with more points is drawn as a line alone

#: The styles the charts need (legend, gaps); the console's stylesheet and the report both include it.
CSS = """figure.chart{margin:0 0 12px;max-width:640px}figure.chart svg{max-width:100%;height:auto;background:#fff}
figure.chart figcaption{font-size:12px;color:#222}ul.legend{list-style:none;margin:4px 0 0;padding:0;display:flex;
flex-wrap:wrap;gap:4px 14px}ul.legend li{display:flex;align-items:center;gap:5px;overflow-wrap:anywhere}
ul.legend i{display:inline-block;width:12px;height:12px;border-radius:2px;flex:none}
.chart-note{font-size:12px;color:#444;margin:2px 0}"""

_SUFFIXES = ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k"))


def human(value: Any, digits: int = 3) -> str:
    """``value`` with ``digits`` significant digits the way people read it: 12.3k, 4.5M, 0.0012; None is ``–``."""
    if value is None or isinstance(value, bool):
        return "–" if value is None else str(value)
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(v):
        return "–"
    if math.isinf(v):
        return "∞" if v > 0 else "-∞"
    if v == 0:
        return "0"
    a = abs(v)
    for scale, suffix in _SUFFIXES:
        if a >= scale * 0.9995:  # 999.96 rounds to "1k", not "1e+03"
            return f"{_sig(v / scale, digits)}{suffix}"
    return _sig(v, digits)


def _sig(v: float, digits: int) -> str:
    a = abs(v)
    if a >= 1:
        decimals = max(digits - 1 - math.floor(math.log10(a)), 0)
    else:
        decimals = min(digits - 1 - math.floor(math.log10(a)), 12)
    text = f"{v:.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def interval(low: float | None, high: float | None) -> str:
    """A confidence interval as text, ``[0.71, 0.78]``; ``–`` when either end is unknown."""
    if low is None or high is None:
        return "–"
    return f"[{human(low)}, {human(high)}]"


@dataclass(frozen=True)
class Point:
    """One value of a series at ``x``: ``y`` None is a window with no data (drawn as a gap); ``n`` is the
    sample size behind it, ``low``/``high`` its confidence interval."""

    x: float
    y: float | None
    n: int | None = None
    low: float | None = None
    high: float | None = None


def ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values covering ``[lo, hi]`` (1, 2, 2.5, 5 times a power of ten apart)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    step = 10.0 ** math.floor(math.log10((hi - lo) / n))
    for mult in (1, 2, 2.5, 5, 10):
        if (hi - lo) / (step * mult) <= n:
            step *= mult
            break
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _svg_open(title: str, x_label: str, y_label: str) -> list[str]:
    return [f'<svg width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" aria-label="{_esc(title)}">',
            f'<rect width="{W}" height="{H}" fill="#ffffff"/>',
            f'<text x="{W / 2}" y="18" text-anchor="middle" font-size="14" font-weight="600" fill="#111">'
            f'{_esc(title)}</text>',
            f'<text x="{W / 2}" y="{H - 4}" text-anchor="middle" font-size="11" fill="#333">{_esc(x_label)}</text>',
            f'<text x="14" y="{H / 2}" text-anchor="middle" font-size="11" fill="#333" '
            f'transform="rotate(-90 14 {H / 2})">{_esc(y_label)}</text>']


def _y_axis(parts: list[str], lo: float, hi: float, sy: Any) -> None:
    for t in ticks(lo, hi):
        y = sy(t)
        parts.append(f'<line x1="{ML}" x2="{W - MR}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e3e3e3"/>')
        parts.append(f'<text x="{ML - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="10" fill="#222">'
                     f'{human(t)}</text>')
    parts.append(f'<line x1="{ML}" x2="{ML}" y1="{MT}" y2="{H - MB}" stroke="#333"/>')
    parts.append(f'<line x1="{ML}" x2="{W - MR}" y1="{H - MB}" y2="{H - MB}" stroke="#333"/>')


def _figure(svg: list[str], names: Sequence[str], note: str | None = None, extra: Sequence[str] = ()) -> str:
    items = "".join(f'<li><i style="background:{PALETTE[i % len(PALETTE)]}"></i>{_esc(n)}</li>'
                    for i, n in enumerate(names))
    items += "".join(f"<li>{x}</li>" for x in extra)
    caption = f'<ul class="legend">{items}</ul>' if items else ""
    if note:
        caption += f'<p class="chart-note">{_esc(note)}</p>'
    return f'<figure class="chart">{"".join(svg)}<figcaption>{caption}</figcaption></figure>'


def _empty(title: str, x_label: str, y_label: str, message: str = "no data") -> str:
    parts = _svg_open(title, x_label, y_label)
    parts.append(f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle" font-size="12" fill="#333">'
                 f'{_esc(message)}</text></svg>')
    return _figure(parts, [])


def _segments(points: Sequence[Point], max_step: float | None) -> tuple[list[list[Point]], list[tuple[float, float]]]:
    """The runs of consecutive points with data, and the x ranges between them that have none."""
    ordered = sorted(points, key=lambda p: p.x)
    runs: list[list[Point]] = []
    gaps: list[tuple[float, float]] = []
    current: list[Point] = []
    last_good: Point | None = None
    broken = False
    for p in ordered:
        if p.y is None or not math.isfinite(p.y):
            broken = True
            continue
        if last_good is not None and (broken or (max_step is not None and p.x - last_good.x > max_step)):
            runs.append(current)
            gaps.append((last_good.x, p.x))
            current = []
        elif last_good is None and broken:
            gaps.append((ordered[0].x, p.x))
        broken = False
        current.append(p)
        last_good = p
    if current:
        runs.append(current)
    if broken and last_good is not None and ordered[-1].x > last_good.x:
        gaps.append((last_good.x, ordered[-1].x))
    return runs, gaps


def _usual_step(series: Mapping[str, Sequence[Point]]) -> float | None:
    """1.5 times the median step between consecutive x of any series: a longer step is a gap."""
    steps: list[float] = []
    for pts in series.values():
        xs = sorted({p.x for p in pts})
        steps.extend(b - a for a, b in itertools.pairwise(xs))
    if len(steps) < 2:
        return None
    steps.sort()
    return 1.5 * steps[len(steps) // 2]


def _x_label(x: float, time_axis: bool, span: float) -> str:
    if not time_axis:
        return human(x)
    stamp = dt.datetime.fromtimestamp(float(x), tz=dt.UTC)
    return stamp.strftime("%m-%d %H:%M" if span < 5 * 86400 else "%Y-%m-%d")


def line_chart(title: str, series: Mapping[str, Sequence[Point | tuple[float, float | None]]], *, y_label: str,
               threshold: float | None = None, threshold_label: str = "limit", time_axis: bool = True,
               x_label: str | None = None, gap_after: float | None = None, auto_gaps: bool = True,
               note: str | None = None) -> str:
    """Lines of ``series`` (x in epoch seconds when ``time_axis``), with gaps, bands and a dashed ``threshold``.

    A gap is a point with ``y`` None, or (``auto_gaps``) a step longer than ``gap_after`` seconds (by
    default 1.5 times the series' median step).
    """
    pts = {name: [p if isinstance(p, Point) else Point(float(p[0]), None if p[1] is None else float(p[1]))
                  for p in raw] for name, raw in series.items()}
    x_text = x_label if x_label is not None else ("time (UTC)" if time_axis else "step")
    good = [p for s in pts.values() for p in s if p.y is not None and math.isfinite(p.y)]
    if not good:
        return _empty(title, x_text, y_label)
    xs = [p.x for s in pts.values() for p in s]
    ys = [p.y for p in good if p.y is not None]
    ys += [v for p in good for v in (p.low, p.high) if v is not None and math.isfinite(v)]
    if threshold is not None:
        ys.append(threshold)
    x0, x1 = min(xs), max(xs)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    y0, y1 = min(0.0, min(ys)), max(ys)
    y1 = y1 + 0.1 * (y1 - y0) if y1 > y0 else y0 + 1.0
    plot_w, plot_h = W - ML - MR, H - MT - MB

    def sx(v: float) -> float:
        return ML + plot_w * (v - x0) / (x1 - x0)

    def sy(v: float) -> float:
        return MT + plot_h * (1 - (v - y0) / (y1 - y0))

    parts = _svg_open(title, x_text, y_label)
    _y_axis(parts, y0, y1, sy)
    for i in range(4):
        t = x0 + (x1 - x0) * i / 3
        anchor = "start" if i == 0 else "end" if i == 3 else "middle"
        parts.append(f'<text x="{sx(t):.1f}" y="{H - MB + 14}" text-anchor="{anchor}" font-size="10" fill="#222">'
                     f'{_x_label(t, time_axis, x1 - x0)}</text>')
    max_step = gap_after if gap_after is not None else (_usual_step(pts) if auto_gaps else None)
    all_gaps: list[tuple[float, float]] = []
    drawn: list[str] = []
    for i, (name, values) in enumerate(pts.items()):
        color = PALETTE[i % len(PALETTE)]
        runs, gaps = _segments(values, max_step)
        dots = len(values) <= MAX_DOTS  # past that, hundreds of dots hide the line (and weigh the page)
        width = 2 if dots else 1.25
        all_gaps.extend(gaps)
        for run in runs:
            band = [p for p in run if p.low is not None and p.high is not None]
            if len(band) == len(run) and len(run) > 1:
                upper = " ".join(f"{sx(p.x):.1f},{sy(p.high):.1f}" for p in run if p.high is not None)
                lower = " ".join(f"{sx(p.x):.1f},{sy(p.low):.1f}" for p in reversed(run) if p.low is not None)
                drawn.append(f'<polygon class="band" points="{upper} {lower}" fill="{color}" fill-opacity="0.18" '
                             f'stroke="none"/>')
            elif band:
                for p in band:
                    assert p.low is not None and p.high is not None
                    drawn.append(f'<line class="band" x1="{sx(p.x):.1f}" x2="{sx(p.x):.1f}" y1="{sy(p.low):.1f}" '
                                 f'y2="{sy(p.high):.1f}" stroke="{color}" stroke-opacity="0.5" stroke-width="3"/>')
            path = " ".join(f"{sx(p.x):.1f},{sy(p.y):.1f}" for p in run if p.y is not None)
            drawn.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="{width}"/>')
            for p in run if dots else ():
                assert p.y is not None
                tip = f"{name} at {_x_label(p.x, time_axis, 0)}: {human(p.y)}"
                if p.low is not None and p.high is not None:
                    tip += f", 95% CI {interval(p.low, p.high)}"
                if p.n is not None:
                    tip += f", n={human(p.n)}"
                drawn.append(f'<circle cx="{sx(p.x):.1f}" cy="{sy(p.y):.1f}" r="2.5" fill="{color}">'
                             f'<title>{_esc(tip)}</title></circle>')
    for a, b in _merge(all_gaps):
        xa, xb = sx(a), sx(b)
        parts.append(f'<rect class="gap" x="{xa:.1f}" y="{MT}" width="{max(xb - xa, 1):.1f}" height="{plot_h}" '
                     f'fill="#9a9a9a" fill-opacity="0.15"><title>no data from {_x_label(a, time_axis, 0)} to '
                     f'{_x_label(b, time_axis, 0)}</title></rect>')
        if xb - xa > 34:
            parts.append(f'<text x="{(xa + xb) / 2:.1f}" y="{MT + 12}" text-anchor="middle" font-size="9" '
                         f'fill="#333">no data</text>')
    if threshold is not None:
        parts.append(f'<line x1="{ML}" x2="{W - MR}" y1="{sy(threshold):.1f}" y2="{sy(threshold):.1f}" '
                     f'stroke="#b00020" stroke-dasharray="5,4"><title>{_esc(threshold_label)}: '
                     f'{human(threshold)}</title></line>')
    parts.extend(drawn)
    parts.append("</svg>")
    extra = []
    if threshold is not None:
        extra.append(f'<i style="background:#b00020;height:3px"></i>{_esc(threshold_label)} {human(threshold)}')
    if all_gaps:
        extra.append('<i style="background:#9a9a9a;opacity:.35"></i>no data')
    return _figure(parts, list(pts), note, extra)


def _merge(gaps: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for a, b in sorted(gaps):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def bar_chart(title: str, labels: Sequence[str], series: Mapping[str, Sequence[float]], *, y_label: str,
              x_label: str = "value", note: str | None = None) -> str:
    """Bars side by side per label, one colour per series (a distribution: share or count per bin)."""
    k = len(labels)
    values = [v for s in series.values() for v in s if v is not None and math.isfinite(v)]
    if not k or not values:
        return _empty(title, x_label, y_label)
    top = max([*values, 1e-12]) * 1.1
    plot_w, plot_h = W - ML - MR, H - MT - MB

    def sy(v: float) -> float:
        return MT + plot_h * (1 - v / top)

    parts = _svg_open(title, x_label, y_label)
    _y_axis(parts, 0.0, top, sy)
    slot = plot_w / k
    m = max(len(series), 1)
    bar = max(slot * 0.8 / m, 0.5)
    for j, (name, vals) in enumerate(series.items()):
        for i, v in enumerate(vals[:k]):
            if v is None or not math.isfinite(v):
                continue
            y = sy(v)
            x = ML + i * slot + slot * 0.1 + j * bar
            parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{max(H - MB - y, 0):.1f}" '
                         f'fill="{PALETTE[j % len(PALETTE)]}"><title>{_esc(name)} {_esc(labels[i])}: '
                         f'{human(v)}</title></rect>')
    every = max(1, math.ceil(k / 8))
    for i in range(0, k, every):
        x = ML + (i + 0.5) * slot
        parts.append(f'<text x="{x:.1f}" y="{H - MB + 14}" text-anchor="middle" font-size="10" fill="#222">'
                     f'{_esc(str(labels[i])[:14])}</text>')
    parts.append("</svg>")
    return _figure(parts, list(series), note)


def share_chart(title: str, labels: Sequence[str], reference: Sequence[float], current: Sequence[float]) -> str:
    """Side-by-side bars of the reference and current share per bin or category."""
    return bar_chart(title, labels, {"reference": list(reference), "current": list(current)},
                     y_label="share of rows", x_label="bin" if len(labels) > 12 else "value")
