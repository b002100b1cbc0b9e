"""The delayed-label metrics `monitor` reports with no rules: per served version, by its task, with the count of
labelled predictions behind each, read through the one label join (the real prediction-log writer, write_labels)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import accuracy_score, log_loss, mean_absolute_error, mean_squared_error, roc_auc_score
from typer.testing import CliRunner

from modelmill.cli import app
from modelmill.config import load_settings
from modelmill.errors import ConfigError, InputError
from modelmill.monitoring import Monitor, MonitoringConfig
from modelmill.monitoring.monitor import DEFAULT_LABEL_WINDOW
from modelmill.monitoring.performance import task_metrics, task_of
from modelmill.project import Project
from modelmill.registry import Field, Registry, Signature
from modelmill.store.feedback import LabelTask, write_labels

from .conftest import log_predictions

T0 = dt.datetime(2026, 11, 30, 9, tzinfo=dt.UTC)
NOW = (T0 + dt.timedelta(hours=2)).timestamp()
SIGNATURE = Signature(inputs=[Field("x0", "float64"), Field("x1", "float64")])


def _register(project: Project, name: str, *, regression: bool = False, **kwargs: object) -> None:
    X = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0], [3.0, 1.0]])
    model = LinearRegression().fit(X, [0.0, 1.0, 2.0, 3.0]) if regression else \
        LogisticRegression().fit(X, [0, 0, 1, 1])
    Registry(project).register(name, model, flavor="sklearn", signature=SIGNATURE, **kwargs)  # type: ignore[arg-type]


def _traffic(project: Project, model: str, version: int, n: int, seed: int, *,
             at: dt.datetime = T0) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    features = pd.DataFrame({"x0": rng.normal(size=n), "x1": rng.normal(size=n)})
    outputs = np.round(rng.uniform(size=n), 2)  # rounded: ties, which the AUC must rank as sklearn does
    ids = log_predictions(project, model=model, version=version, ts=at, features=features, outputs=outputs,
                          latency_ms=2.0, spread_s=600)
    return ids, outputs


def _performance(result: dict[str, object]) -> dict[tuple[str, int], dict]:  # type: ignore[type-arg]
    rows = result["performance"]
    assert isinstance(rows, list)
    return {(r["model"], r["version"]): r for r in rows}


def test_binary_metrics_are_sklearns_on_exactly_the_labelled_predictions(project: Project) -> None:
    _register(project, "credit", metrics={"auc": 0.8})
    ids, outputs = _traffic(project, "credit", 1, 400, seed=1)
    other_ids, _ = _traffic(project, "credit", 2, 50, seed=2)  # another version: its labels are not these
    old_ids, _ = _traffic(project, "credit", 1, 30, seed=3, at=T0 - dt.timedelta(days=8))  # before the window
    rng = np.random.default_rng(4)
    labelled = sorted(rng.choice(400, size=230, replace=False).tolist())
    truth = {ids[i]: int(rng.integers(0, 2)) for i in labelled}
    labels = [{"id": rid, "label": y, "ts": "2026-11-30T11:00:00Z"} for rid, y in truth.items()]
    # a late correction wins, an older label sent afterwards does not, a resend is counted once
    corrected, stale = ids[labelled[0]], ids[labelled[1]]
    labels += [{"id": corrected, "label": 1 - truth[corrected], "ts": "2026-11-30T11:30:00Z"},
               {"id": stale, "label": 1 - truth[stale], "ts": "2026-11-30T10:00:00Z"},
               {"id": ids[labelled[2]], "label": truth[ids[labelled[2]]], "ts": "2026-11-30T11:00:00Z"},
               {"id": "never-predicted", "label": 1}]
    truth[corrected] = 1 - truth[corrected]
    labels += [{"id": r, "label": 1, "ts": "2026-11-30T11:00:00Z"} for r in other_ids[:20] + old_ids]
    counts = write_labels(project.offline, "credit", labels)
    assert counts.duplicates == 1 and counts.unknown == 1

    result = Monitor(project, MonitoringConfig.from_section({})).run_once(now=NOW)
    json.dumps(result)  # what `monitor --once --json` prints
    row = _performance(result)[("credit", 1)]
    index = {rid: i for i, rid in enumerate(ids)}
    y = np.array([truth[r] for r in truth])
    p = np.array([outputs[index[r]] for r in truth])
    assert row["task"] == "binary" and row["task_from"] == "declared" and row["n"] == 230 == len(y)  # probability
    assert row["status"] == "measured" and row["reason"] is None
    assert set(row["metrics"]) == {"auc", "log_loss", "accuracy"}
    assert row["window_end"] - row["window_start"] == DEFAULT_LABEL_WINDOW
    m = row["metrics"]
    assert abs(m["auc"]["value"] - roc_auc_score(y, p)) < 1e-9
    assert abs(m["log_loss"]["value"] - log_loss(y, p)) < 1e-9
    assert m["accuracy"]["value"] == pytest.approx(accuracy_score(y, p >= 0.5), abs=1e-12)
    assert {k: (v["n"], v["status"], v["reason"]) for k, v in m.items()} == dict.fromkeys(m, (230, "measured", None))
    v2 = _performance(result)[("credit", 2)]
    assert v2["n"] == 20 and v2["metrics"]["auc"] == {"value": None, "n": 20, "status": "no_data",
                                                      "reason": "the labels are of one class only"}
    assert v2["metrics"]["accuracy"]["status"] == "measured"


def test_without_labels_every_metric_is_no_data_with_n_zero(project: Project) -> None:
    _register(project, "credit")
    _traffic(project, "credit", 1, 40, seed=5)
    for labels in (False, True):  # no labels table at all; then labels, but of another model
        if labels:
            write_labels(project.offline, "other", [{"id": "x", "label": 1}])
        result = Monitor(project, MonitoringConfig.from_section({})).run_once(now=NOW)
        [row] = result["performance"]
        assert row["n"] == 0 and row["status"] == "no_data" and row["task"] == "binary"
        assert row["reason"] == "no labelled predictions in the window"
        none = {"value": None, "n": 0, "status": "no_data", "reason": "no labelled predictions in the window"}
        assert row["metrics"] == {m: none for m in ("auc", "log_loss", "accuracy")}


def test_a_regression_model_gets_mae_and_rmse(project: Project) -> None:
    _register(project, "price", regression=True, tags={"task": "regression"})
    ids, outputs = _traffic(project, "price", 1, 60, seed=6)
    y = np.random.default_rng(7).normal(size=60)
    write_labels(project.offline, "price", [{"id": r, "label": float(v)} for r, v in zip(ids, y, strict=True)],
                 now=NOW - 60)
    [row] = Monitor(project, MonitoringConfig.from_section({})).run_once(now=NOW)["performance"]
    assert row["task"] == "regression" and row["task_from"] == "declared" and set(row["metrics"]) == {"mae", "rmse"}
    assert abs(row["metrics"]["mae"]["value"] - mean_absolute_error(y, outputs)) < 1e-12
    assert abs(row["metrics"]["rmse"]["value"] - np.sqrt(mean_squared_error(y, outputs))) < 1e-12
    assert row["metrics"]["rmse"]["n"] == 60


def test_the_label_window_is_configurable_and_checked(project: Project) -> None:
    _register(project, "credit")
    ids, outputs = _traffic(project, "credit", 1, 20, seed=8)
    y = np.arange(20) % 2
    write_labels(project.offline, "credit", [{"id": r, "label": int(v)} for r, v in zip(ids, y, strict=True)],
                 now=NOW)
    # predictions made 1h50m to 2h before NOW: outside a 1h label window (then the version is not served in it)
    config = MonitoringConfig.from_section({"label_window": "1h"})
    assert config.label_window == 3600 and Monitor(project, config).performance(now=NOW) == []
    [row] = Monitor(project, MonitoringConfig.from_section({"label_window": "3h"})).performance(now=NOW)
    assert row["n"] == 20 and row["window_start"] == NOW - 3 * 3600
    with pytest.raises(InputError, match=r"monitoring\.label_window"):
        MonitoringConfig.from_section({"label_window": "soon"})
    for threshold in (1.5, 0, True, "0.5"):
        with pytest.raises(ConfigError, match=r"monitoring\.threshold"):
            MonitoringConfig.from_section({"threshold": threshold})
    [row] = Monitor(project, MonitoringConfig.from_section({"label_window": "3h", "threshold": 0.7})).performance(
        now=NOW)
    assert row["metrics"]["accuracy"]["value"] == accuracy_score(y, outputs >= 0.7) != accuracy_score(y, outputs >= 0.5)


def test_a_binary_models_labels_that_are_not_0_or_1_are_no_data() -> None:
    m = task_metrics("binary", np.array([0.0, 1.0, 2.0]), np.array([0.1, 0.9, 0.5]))
    assert {k: v["status"] for k, v in m.items()} == dict.fromkeys(("auc", "log_loss", "accuracy"), "no_data")
    assert m["auc"]["reason"] == "1 of 3 labels are not 0 or 1, as a binary model's labels must be"
    assert task_of(declared="binary", metrics={"rmse": 1.0}) == ("binary", "declared")
    assert task_of(declared=None, metrics={"rmse": 1.0}) == ("regression", "metrics")
    assert task_of(labels=np.array([0.0, 1.0, 1.0])) == ("binary", "labels")


def test_the_task_is_read_as_the_labels_route_reads_it(project: Project) -> None:
    # a 'probability' output is binary (no metrics registered); an unknown task measures nothing
    X, y = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0], [3.0, 1.0]]), [0, 0, 1, 1]
    reg = Registry(project)
    reg.register("prob", LogisticRegression().fit(X, y), flavor="sklearn",
                 signature=Signature(inputs=SIGNATURE.inputs, outputs=[Field("probability", "float64")]))
    _register(project, "odd", tags={"task": "ranking"})
    _register(project, "multi", tags={"task": "multiclass", "classes": "0,1,2"})
    for name in ("prob", "odd", "multi"):
        ids, _ = _traffic(project, name, 1, 10, seed=11)
        write_labels(project.offline, name, [{"id": r, "label": 2.5} for r in ids], now=NOW,
                     task=LabelTask(kind="regression"))
    rows = _performance(Monitor(project, MonitoringConfig.from_section({})).run_once(now=NOW))
    prob = rows[("prob", 1)]
    assert (prob["task"], prob["task_from"], prob["n"], prob["status"]) == ("binary", "declared", 10, "no_data")
    assert prob["metrics"]["auc"]["reason"] == "10 of 10 labels are not 0 or 1, as a binary model's labels must be"
    odd = rows[("odd", 1)]
    assert odd["task"] is None and odd["status"] == "no_data" and odd["metrics"] == {}
    assert "records task 'ranking'" in odd["reason"]
    multi = rows[("multi", 1)]  # 2.5 is none of its classes: its metrics are no data, not a guess
    assert (multi["task"], multi["status"], sorted(multi["metrics"])) == (
        "multiclass", "no_data", ["accuracy", "log_loss", "macro_f1"])
    assert multi["reason"] == ("10 of 10 labels are not one of the classes 0, 1, 2, as this multiclass model's "
                               "labels must be")
    assert all(m["status"] == "no_data" and m["n"] == 10 for m in multi["metrics"].values())


def test_monitor_once_prints_the_metrics_as_json_and_as_a_table(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in __import__("os").environ if k.startswith("MODELMILL_")]:
        monkeypatch.delenv(key)
    (tmp_path / "modelmill.toml").write_text('home = ".modelmill"\n')
    monkeypatch.chdir(tmp_path)
    with Project(load_settings(cwd=tmp_path)) as project:
        _register(project, "credit", metrics={"auc": 0.7})
        now = dt.datetime.now(dt.UTC)
        ids, outputs = _traffic(project, "credit", 1, 80, seed=9, at=now - dt.timedelta(minutes=20))
        y = (np.random.default_rng(10).uniform(size=80) < outputs).astype(int)
        write_labels(project.offline, "credit", [{"id": r, "label": int(v)} for r, v in zip(ids, y, strict=True)])
    out = CliRunner().invoke(app, ["monitor", "--once", "--json"])
    assert out.exit_code == 3, out.output  # no reference profile: the drift check has no data
    [row] = json.loads(out.stdout)["performance"]
    assert row["model"] == "credit" and row["version"] == 1 and row["n"] == 80
    assert abs(row["metrics"]["auc"]["value"] - roc_auc_score(y, outputs)) < 1e-9
    text = CliRunner().invoke(app, ["monitor", "--once"])
    assert "delayed-label metrics (predictions of the last 7d with a label)" in text.stdout
    assert f"{roc_auc_score(y, outputs):.4f}" in text.stdout and "log_loss" in text.stdout
