"""Delayed labels joined to the prediction log; metrics agree with scikit-learn."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from modelmill.monitoring import PerformanceMonitor, classification_metrics
from modelmill.project import Project

from .conftest import log_labels, log_predictions


def test_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 3000)
    p = np.clip(0.3 * y + rng.random(3000) * 0.7, 0, 1).round(2)  # rounded: ties exercise the rank AUC
    m = classification_metrics(y, p)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, p >= 0.5))
    assert m["precision"] == pytest.approx(skm.precision_score(y, p >= 0.5))
    assert m["recall"] == pytest.approx(skm.recall_score(y, p >= 0.5))
    assert m["auc"] == pytest.approx(skm.roc_auc_score(y, p))
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, p))
    assert m["brier"] == pytest.approx(skm.brier_score_loss(y, p))
    assert 0 <= m["calibration_error"] <= 1
    assert np.isnan(classification_metrics(np.ones(5), np.full(5, 0.9))["auc"])


def test_delayed_labels_join_by_request_and_roll_per_variant(project: Project) -> None:
    rng = np.random.default_rng(6)
    t0 = dt.datetime(2024, 5, 1, 10, tzinfo=dt.UTC)
    feats = pd.DataFrame({"x": rng.normal(size=400)})
    y = rng.integers(0, 2, 400)
    good = np.clip(0.6 * y + 0.4 * rng.random(400), 0, 1)
    ids_a = log_predictions(project, model="m", version=1, ts=t0, features=feats, outputs=good, latency_ms=4.0,
                            variant="a", spread_s=7200)
    ids_b = log_predictions(project, model="m", version=2, ts=t0, features=feats, outputs=rng.random(400),
                            latency_ms=9.0, variant="b", spread_s=7200)
    # labels arrive later, only for some requests, and one request is relabelled
    log_labels(project, ids_a[:300], y[:300], t0 + dt.timedelta(hours=3))
    log_labels(project, ids_b[:300], y[:300], t0 + dt.timedelta(hours=3))
    log_labels(project, ids_a[:1], 1 - y[:1], t0 + dt.timedelta(hours=4))
    perf = PerformanceMonitor(project)
    joined = perf.joined()
    assert joined.num_rows == 600
    summary = {r["variant"]: r for r in perf.summary()}
    expected_y = y[:300].copy()
    expected_y[0] = 1 - expected_y[0]
    assert summary["a"]["auc"] == pytest.approx(skm.roc_auc_score(expected_y, good[:300]))
    assert summary["a"]["auc"] > 0.9 > summary["b"]["auc"]
    rolling = perf.rolling(window="1h")
    assert {(r["variant"], r["bucket"].hour) for r in rolling} == {("a", 10), ("a", 11), ("b", 10), ("b", 11)}
    assert sum(r["n"] for r in rolling) == 600
    lat = {r["variant"]: r for r in perf.latency(window="1d")}
    assert lat["a"]["p95_ms"] == pytest.approx(4.0) and lat["b"]["n"] == 400


@pytest.mark.parametrize("seconds", [None, 3600.0, 86400.0])
def test_grouped_metrics_at_once_equal_classification_metrics_per_group(seconds: float | None) -> None:
    """The monitor computes every (model, version, variant, bucket) group's binary metrics at once (grouped
    sums and one grouped rank); each row equals classification_metrics of that group's rows, including
    groups of one class (AUC NaN), no positive prediction (precision NaN), ties and a null variant."""
    import math

    import pyarrow as pa

    from modelmill.monitoring.performance import _grouped

    rng = np.random.default_rng(11)
    n = 4_000
    frame = pd.DataFrame({"model": rng.choice(["a", "b"], n), "version": rng.integers(1, 4, n),
                          "variant": rng.choice(np.array(["x", "y", None], dtype=object), n),
                          "ts": pd.to_datetime(rng.integers(0, 3 * 86400, n), unit="s", utc=True),
                          "label": rng.integers(0, 2, n).astype(float), "output": rng.random(n).round(2)})
    frame.loc[frame.model == "b", "label"] = 1.0  # one class: AUC is NaN
    frame.loc[(frame.model == "a") & (frame.version == 3), "output"] = 0.2  # no positive prediction
    rows = _grouped(pa.Table.from_pandas(frame, preserve_index=False), ("model", "version", "variant"), seconds, 0.5)
    keys = ["model", "version", "variant"] + (["bucket"] if seconds else [])
    if seconds:
        epoch = (frame.ts - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
        frame["bucket"] = epoch // int(seconds) * int(seconds)
    groups = list(frame.groupby(keys, sort=True, dropna=False))
    assert len(rows) == len(groups) > 10
    for row, (_, part) in zip(rows, groups, strict=True):
        want = classification_metrics(part.label.to_numpy(), part.output.to_numpy())
        assert list(row)[len(keys):] == list(want)
        for name, value in want.items():
            assert (math.isnan(value) and math.isnan(row[name])) or row[name] == pytest.approx(value, abs=1e-12), name
    assert any(math.isnan(r["auc"]) for r in rows) and any(math.isnan(r["precision"]) for r in rows)
