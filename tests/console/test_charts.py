"""The console's chart and number code, which report.html shares: gaps, intervals, legends, 12.3k."""

from __future__ import annotations

import math
import re

import pytest

from modelmill.console.charts import Point, bar_chart, human, line_chart, ticks
from modelmill.console.intervals import auc_interval, metric_interval, wilson
from modelmill.monitoring.report import latency_charts, metric_charts, render_report


@pytest.mark.parametrize(("value", "text"), [
    (0, "0"), (1, "1"), (0.5, "0.5"), (12_345, "12.3k"), (8_820.0, "8.82k"), (999.96, "1k"), (1_000, "1k"),
    (2_500_000, "2.5M"), (3.2e9, "3.2B"), (-4_567, "-4.57k"), (0.000123, "0.000123"), (0.33333, "0.333"),
    (None, "–"), (math.nan, "–"), (math.inf, "∞"), (True, "True"), ("v2", "v2"),
])
def test_human_numbers_read_as_people_read_them(value: object, text: str) -> None:
    assert human(value) == text
    assert "e+" not in human(value) and "e-" not in human(value)


def test_ticks_are_round_and_cover_the_range() -> None:
    assert ticks(0, 1) == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert ticks(0, 8_820) == [0, 2_000, 4_000, 6_000, 8_000]
    assert ticks(3, 3) == [3]


def _polylines(svg: str) -> list[list[tuple[float, float]]]:
    return [[tuple(map(float, p.split(","))) for p in m.split()]  # type: ignore[misc]
            for m in re.findall(r'<polyline points="([^"]*)"', svg)]


def test_a_window_with_no_data_is_a_gap_not_a_line_across_it() -> None:
    points = [Point(0, 0.1), Point(60, 0.2), Point(120, None), Point(180, 0.3), Point(240, 0.25)]
    svg = line_chart("drift", {"v1": points}, y_label="distance")
    lines = _polylines(svg)
    assert [len(line) for line in lines] == [2, 2]  # two runs, nothing drawn through t=120
    assert lines[0][-1][0] < lines[1][0][0]
    assert svg.count('class="gap"') == 1 and "no data" in svg


def test_a_long_step_in_time_is_a_gap_too() -> None:
    hourly = [Point(h * 3600.0, 0.5) for h in (0, 1, 2, 3, 9, 10, 11)]  # 6 hours missing
    svg = line_chart("auc", {"v1": hourly}, y_label="auc")
    assert [len(line) for line in _polylines(svg)] == [4, 3]
    assert svg.count('class="gap"') == 1
    joined = line_chart("auc", {"v1": hourly}, y_label="auc", auto_gaps=False)
    assert [len(line) for line in _polylines(joined)] == [7] and 'class="gap"' not in joined


def test_points_carry_their_interval_and_sample_size() -> None:
    svg = line_chart("precision", {"v1": [Point(0, 0.5, 4, 0.15, 0.85), Point(60, 0.6, 12_000, 0.59, 0.61)]},
                     y_label="precision")
    assert svg.count('class="band"') == 1
    assert "n=4" in svg and "n=12k" in svg and "95% CI [0.15, 0.85]" in svg


def test_legend_is_html_that_wraps_with_every_name_whole() -> None:
    names = [f"flights_delay@{v} treatment-with-a-long-variant-name {q}" for v in range(4) for q in ("p50", "p99")]
    svg = line_chart("many", {n: [Point(0, 1), Point(1, 2)] for n in names}, y_label="ms")
    legend = re.search(r'<ul class="legend">(.*?)</ul>', svg)
    assert legend is not None
    for name in names:
        assert f"</i>{name}</li>" in legend.group(1)


def test_bar_labels_are_human_numbers() -> None:
    svg = bar_chart("dist", ["8.82k", "12.3k"], {"v1": [0.4, 0.6]}, y_label="share")
    assert "8.82k" in svg and "e+03" not in svg
    assert "no data" in bar_chart("dist", [], {}, y_label="share")


def test_wilson_and_auc_intervals() -> None:
    low, high = wilson(1.0, 3)
    assert low == pytest.approx(0.4385, abs=1e-3) and high == 1.0
    narrow = wilson(0.5, 10_000)
    assert narrow[1] - narrow[0] < 0.02
    lo, hi = auc_interval(0.8, 50, 50)
    assert lo < 0.8 < hi and hi - lo < 0.2
    assert math.isnan(auc_interval(0.8, 0, 10)[0])


def test_metric_intervals_use_each_metric_s_own_denominator() -> None:
    row = {"n": 100, "positive_rate": 0.2, "accuracy": 0.9, "recall": 0.5, "precision": 1 / 3, "auc": 0.7,
           "log_loss": 0.4}
    assert metric_interval("accuracy", row)[2] == 100
    assert metric_interval("recall", row)[2] == 20
    assert metric_interval("precision", row)[2] == 30  # 10 true positives of 30 positive predictions
    assert metric_interval("auc", row)[0] is not None
    assert metric_interval("log_loss", row) == (None, None, 100)
    assert metric_interval("precision", {"n": 5, "precision": math.nan}) == (None, None, 5)


def test_report_states_its_scope_and_gets_the_fixes() -> None:
    import datetime as dt

    at = dt.datetime(2013, 3, 1, tzinfo=dt.UTC)
    metrics = [{"bucket": at + dt.timedelta(hours=h), "model": "m", "version": 1, "variant": "all", "n": 3,
                "positive_rate": 1.0, "precision": 1.0, "recall": 1.0, "accuracy": 1.0} for h in (0, 1, 2, 6, 7)]
    latency = [{"bucket": at, "model": "m", "version": v, "variant": var, "n": 10, "p50_ms": 1.0, "p95_ms": 2.0,
                "p99_ms": 3.0} for v in (1, 2) for var in ("stable", "candidate", "shadow")]
    charts = latency_charts(latency)
    assert len(charts) == 6  # one chart per latency series, not six series in one
    drawn = metric_charts(metrics)
    assert any('class="gap"' in c for c in drawn) and any("n=3" in c for c in drawn)
    from modelmill.monitoring.drift import detect_drift, summarize

    ref = {"x": [float(i) for i in range(2000)]}
    cur = {"x": [float(i) + 5000 for i in range(2000)]}
    import numpy as np

    refs, curs = {k: np.array(v) for k, v in ref.items()}, {k: np.array(v) for k, v in cur.items()}
    doc = render_report(drift=detect_drift(refs, curs), reference=summarize(refs), current=summarize(curs),
                        metrics=metrics, latency=latency,
                        scope={"model": "m", "version": 3, "window_start": at.timestamp(),
                               "window_end": at.timestamp() + 3600, "n_rows": 2000, "reference_rows": 2000})
    assert "Covers model <b>m@3</b>, window 2013-03-01 00:00 to 2013-03-01 01:00 UTC, 2k rows" in doc
    assert "e+03" not in doc and "e+0" not in doc
    assert not re.search(r"<script|<link|src=|https?://", doc)


def test_rows_without_a_time_on_the_chosen_clock_are_left_out() -> None:
    rows = [{"bucket": None, "model": "m", "version": 1, "variant": "all", "n": 5, "p50_ms": 1.0, "p95_ms": 2.0,
             "p99_ms": 3.0}, {"bucket": 3600.0, "model": "m", "version": 1, "variant": "all", "n": 5, "p50_ms": 1.0,
                              "p95_ms": 2.0, "p99_ms": 3.0}]
    [chart] = latency_charts(rows)
    assert chart.count("<circle") == 3  # one point per percentile: the row with no time is not drawn
    assert metric_charts([{**rows[0], "accuracy": 0.5}]) == []


def test_the_experiment_page_shows_each_variant_with_n_the_interval_srm_and_the_decision() -> None:
    import numpy as np
    import pandas as pd

    from modelmill.console.pages import experiment_body
    from modelmill.experiments import analyze_frame

    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"variant": ["control"] * 4000 + ["treatment"] * 4000,
                          "clicked": np.r_[rng.random(4000) < 0.10, rng.random(4000) < 0.13].astype(int)})
    analysis = analyze_frame(frame, variant_column="variant", metric="clicked", min_sample_size=1000)
    d = analysis.as_dict()
    res = {"experiment": {"model": "m", "status": "running", "primary_metric": "clicked", "srm_p_value": 0.8,
                          "exposures": {"control": 4000, "treatment": 4000}, "min_sample_reached": True},
           "analysis": d, "decisions": [{"treatment": "treatment", "decision": d["decision"], "reason": d["reason"]}],
           "no_data": None}
    body = experiment_body(res)
    lo, hi = d["ci_abs"]
    assert f"[{human(lo)}, {human(hi)}]" in body and "4k" in body and d["decision"] in body
    assert 'class="badge ok">pass' in body  # SRM p = 0.8
    empty = experiment_body({**res, "experiment": {**res["experiment"], "exposures": {"control": 0, "treatment": 0},
                                                   "srm_p_value": 1.0}, "analysis": None, "no_data": "nothing yet"})
    assert 'class="badge ok">pass' not in empty and "no data" in empty  # nobody exposed: no data, not a pass
