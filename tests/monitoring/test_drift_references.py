"""References that fit the data (rolling and seasonal, from the prediction log) and importance-weighted drift.

Every test writes the log through the server's own writer and stores profiles in the real ReferenceStore;
the monitor reads them back as it does in production."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from modelmill.errors import ConfigError, InputError
from modelmill.features import FeatureStore
from modelmill.monitoring import Monitor, MonitoringConfig, ReferenceStore
from modelmill.monitoring.alerts import Rule
from modelmill.monitoring.drift import DriftOptions
from modelmill.monitoring.reference import ReferenceProfile
from modelmill.project import Project
from modelmill.registry import Field, Registry, Signature
from tests.prediction_log import prediction_log

from .conftest import log_predictions

T0 = dt.datetime(2013, 7, 1, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)


def _traffic(rng: np.random.Generator, n: int, shift: float = 0.0) -> pd.DataFrame:
    return pd.DataFrame({"temp": rng.normal(5 + shift, 6, n), "wind": rng.gamma(2, 3, n)})


def _log_hour(project: Project, rng: np.random.Generator, at: dt.datetime, shift: float, n: int = 600) -> None:
    log_predictions(project, model="flights", version=1, ts=at, features=_traffic(rng, n, shift),
                    outputs=rng.beta(2, 5, n), latency_ms=3.0, spread_s=3000)


def _monitor(project: Project, **drift: object) -> Monitor:
    """A monitor of hourly windows, calibrated thresholds; a window drifts when one of its three columns does."""
    drift = {"drift_share": 0.3, "calibrated": True, **drift}
    return Monitor(project, MonitoringConfig.from_section({"window": "1h", "models": ["flights"], "drift": drift}))


def _store_training(project: Project, rng: np.random.Generator) -> None:
    """A training profile of unshifted traffic (the summer's traffic below is warmer)."""
    ReferenceStore(project).compute("flights", 1, _traffic(rng, 4000), predictions=rng.beta(2, 5, 4000))


# ---- options ------------------------------------------------------------------------------------


def test_reference_options_are_validated_and_read_per_model() -> None:
    with pytest.raises(InputError) as exc:
        DriftOptions(reference="seasonal")
    assert exc.value.field == "season"
    with pytest.raises(InputError) as exc:
        DriftOptions(reference="last_week")
    assert exc.value.field == "reference"
    with pytest.raises(InputError) as exc:
        DriftOptions(reference="rolling", reference_windows=0)
    assert exc.value.field == "reference_windows"
    with pytest.raises(InputError) as exc:
        DriftOptions.from_mapping({"reference": "seasonal", "season": "a week"})
    assert exc.value.field == "monitoring.drift.season"
    config = MonitoringConfig.from_section({"drift": {"reference": "rolling", "reference_windows": 6,
                                                      "models": {"flights": {"reference": "seasonal",
                                                                             "season": "365d"}}}})
    assert (config.drift.reference, config.drift.reference_windows) == ("rolling", 6)
    flights = config.drift.for_model("flights")
    assert (flights.reference, flights.season, flights.reference_windows) == ("seasonal", 365 * 86400.0, 6)
    assert config.drift.for_model("clicks") is config.drift


def test_the_score_option_belongs_to_drift_rules() -> None:
    assert Rule.from_mapping({"name": "D", "kind": "drift_share", "threshold": 0.3, "score": "importance"}
                             ).score == "importance"
    with pytest.raises(ConfigError):
        Rule.from_mapping({"name": "D", "kind": "drift_share", "threshold": 0.3, "score": "weighted"})
    with pytest.raises(ConfigError):
        Rule.from_mapping({"name": "L", "kind": "latency_p95", "threshold": 50, "score": "importance"})


# ---- rolling and seasonal references -------------------------------------------------------------


def test_a_rolling_reference_follows_the_recent_windows_where_the_training_one_always_fires(
        project: Project) -> None:
    rng = np.random.default_rng(5)
    _store_training(project, rng)
    for h in range(3):  # three warm hours: every one drifted from the training data, none from each other
        _log_hour(project, rng, T0 + h * HOUR, shift=12.0)
    _log_hour(project, rng, T0 + 3 * HOUR, shift=30.0)  # then a real change
    third, fourth = (T0 + 3 * HOUR).timestamp(), (T0 + 4 * HOUR).timestamp()

    fixed = _monitor(project).run_once(now=third)["windows"][0]
    assert fixed["status"] == "fail" and "temp" in fixed["drifted"]
    assert fixed["reference"] == {"kind": "training"}

    rolling = _monitor(project, reference="rolling", reference_windows=2)
    quiet = rolling.run_once(now=third)["windows"][0]
    assert quiet["status"] == "pass" and quiet["drifted"] == []
    assert quiet["reference"]["kind"] == "rolling" and quiet["reference"]["n_rows"] == 1200  # hours 0 and 1
    assert quiet["reference"]["start"] == (T0 + 0 * HOUR).timestamp()
    assert quiet["reference"]["end"] == (T0 + 2 * HOUR).timestamp()
    changed = rolling.run_once(now=fourth)["windows"][0]
    assert changed["status"] == "fail" and "temp" in changed["drifted"]


def test_a_rolling_reference_needs_no_training_profile(project: Project) -> None:
    rng = np.random.default_rng(6)
    for h in range(3):
        _log_hour(project, rng, T0 + h * HOUR, shift=0.0)
    out = _monitor(project, reference="rolling").run_once(now=(T0 + 3 * HOUR).timestamp())
    window = out["windows"][0]
    assert window["status"] == "pass" and window["reference"]["n_rows"] == 1200
    assert window["importance_score"] is None  # nothing stored to weight by


@pytest.mark.parametrize("drift", [{"reference": "rolling"}, {"reference": "seasonal", "season": "1d"}])
def test_a_reference_with_no_rows_in_its_span_is_no_data_never_a_pass(project: Project,
                                                                         drift: dict[str, object]) -> None:
    rng = np.random.default_rng(7)
    _store_training(project, rng)  # a training profile exists, but it is not the reference asked for
    _log_hour(project, rng, T0, shift=0.0)
    out = _monitor(project, **drift).run_once(now=(T0 + HOUR).timestamp())
    window = out["windows"][0]
    assert window["status"] == "no_data", window
    assert out["status"] == "no_data"
    assert f"the {drift['reference']} reference of flights" in window["reason"]
    assert window["reference"]["n_rows"] == 0 and window["drift_share"] is None


def test_a_seasonal_reference_compares_with_the_same_window_a_season_ago(project: Project) -> None:
    rng = np.random.default_rng(8)
    _store_training(project, rng)
    day = dt.timedelta(days=1)
    _log_hour(project, rng, T0 + 10 * HOUR, shift=12.0)  # yesterday 10:00, warm
    _log_hour(project, rng, T0 + day + 9 * HOUR, shift=0.0)  # today 09:00, cool: the rolling reference
    _log_hour(project, rng, T0 + day + 10 * HOUR, shift=12.0)  # today 10:00, warm as yesterday
    now = (T0 + day + 11 * HOUR).timestamp()

    seasonal = _monitor(project, reference="seasonal", season="1d").run_once(now=now)["windows"][0]
    assert seasonal["status"] == "pass", seasonal
    assert seasonal["reference"]["start"] == (T0 + 10 * HOUR).timestamp()
    assert seasonal["reference"]["n_outputs"] == 600
    rolling = _monitor(project, reference="rolling", reference_windows=1).run_once(now=now)["windows"][0]
    assert rolling["status"] == "fail" and "temp" in rolling["drifted"]
    fixed = _monitor(project).run_once(now=now)["windows"][0]
    assert fixed["status"] == "fail"


def test_a_seasonal_reference_uses_other_versions_features_but_only_its_own_outputs(project: Project) -> None:
    rng = np.random.default_rng(9)
    day = dt.timedelta(days=1)
    feats = _traffic(rng, 600)
    log_predictions(project, model="flights", version=7, ts=T0, features=feats, outputs=rng.beta(2, 5, 600),
                    latency_ms=3.0, spread_s=3000)  # a season ago version 7 answered
    _log_hour(project, rng, T0 + day, shift=0.0)  # version 1 answers now
    window = _monitor(project, reference="seasonal", season="1d").run_once(
        now=(T0 + day + HOUR).timestamp())["windows"][0]
    assert window["status"] == "pass"
    assert window["reference"]["n_rows"] == 600 and window["reference"]["n_outputs"] == 0
    assert "not compared" in window["reference"]["outputs"]


def _replayed(project: Project, rng: np.random.Generator, at: dt.datetime, shift: float, n: int = 300) -> None:
    """Requests answered now (wall clock) whose features were judged at ``at`` + i * 10 s (event time)."""
    X = _traffic(rng, n, shift).to_numpy()
    with prediction_log(project.offline) as log:
        for i in range(n):
            features_at = int((at + dt.timedelta(seconds=10 * i)).timestamp() * 1e6)
            log.append(uuid.uuid4().hex, "flights", 1, "main", None, ("temp", "wind"), X[i:i + 1],
                       np.array([0.3]), 2.0, entities={"id": i}, features_at=features_at)


def test_the_seasonal_reference_works_on_the_event_clock(project: Project) -> None:
    rng = np.random.default_rng(10)
    day = dt.timedelta(days=1)
    _replayed(project, rng, T0, shift=12.0)
    _replayed(project, rng, T0 + day, shift=12.0)
    config = MonitoringConfig.from_section({"window": "1h", "clock": "event", "drift": {
        "reference": "seasonal", "season": "1d", "drift_share": 0.3, "calibrated": True}})
    now = (T0 + day + HOUR).timestamp()
    window = Monitor(project, config).run_once(now=now)["windows"][0]
    assert window["status"] == "pass" and window["n_rows"] == 300
    assert window["reference"]["n_rows"] == 300  # found by event time: every row was answered today
    wall = Monitor(project, MonitoringConfig.from_section({"window": "1h", "drift": {
        "reference": "seasonal", "season": "1d"}})).run_once(now=now)
    assert wall["windows"] == [] and wall["status"] == "no_data"  # nothing answered in 2013 on the wall clock
    assert FeatureStore(project).watermark() is None  # the event clock was given `now`, not a watermark


# ---- importance-weighted drift --------------------------------------------------------------------

SIGNATURE = Signature(inputs=[Field("signal", "float64"), Field("noise", "float64")])


def _register_with_importance(project: Project) -> None:
    rng = np.random.default_rng(11)
    X = pd.DataFrame({"signal": rng.normal(size=3000), "noise": rng.normal(size=3000)})
    y = (X["signal"] + 0.2 * rng.normal(size=3000) > 0).astype(int)
    model = LogisticRegression().fit(X.to_numpy(), y)
    Registry(project).register("flights", model, flavor="sklearn", signature=SIGNATURE,
                               training_data=X.assign(late=y), lineage={"label": "late"})


def _log_noise_shift(project: Project, *, hours: int = 1) -> None:
    rng = np.random.default_rng(12)
    n = 1500
    model = Registry(project).load(Registry(project).get("flights", 1))
    for h in range(hours):
        X = pd.DataFrame({"signal": rng.normal(size=n), "noise": rng.normal(3.0, 1.0, size=n)})  # noise moves
        log_predictions(project, model="flights", version=1, ts=T0 + h * HOUR, features=X,
                        outputs=model.predict(X.to_numpy()), latency_ms=3.0, spread_s=3000)


def test_registration_stores_permutation_importance_with_the_profile(project: Project) -> None:
    _register_with_importance(project)
    profile = ReferenceStore(project).load("flights", 1)
    assert profile.importance is not None
    assert profile.importance["signal"] > 0.9 > profile.importance["noise"]
    assert "log-loss" in profile.importance_note  # the lineage's label column was there: the loss's rise
    again = ReferenceProfile.from_bytes(profile.to_bytes())
    assert again.importance == profile.importance and again.importance_note == profile.importance_note


def test_an_importance_rule_ignores_drift_in_a_feature_the_model_does_not_use(project: Project) -> None:
    _register_with_importance(project)
    _log_noise_shift(project)
    rules = [{"name": "ShareHigh", "kind": "drift_share", "threshold": 0.3},
             {"name": "WeightedHigh", "kind": "drift_share", "threshold": 0.3, "score": "importance"}]
    monitor = Monitor(project, MonitoringConfig.from_section({"window": "1h", "models": ["flights"],
                                                              "rules": rules}))
    out = monitor.run_once(now=(T0 + HOUR).timestamp())
    window = out["windows"][0]
    assert window["drifted"] == ["noise"]
    assert window["drift_share"] == pytest.approx(1 / 3)  # noise, of signal, noise and the outputs
    assert window["importance_score"] is not None and window["importance_score"] < 0.1
    status = {r["rule"]: r for r in out["rules"]}
    assert status["ShareHigh"]["status"] == "fail" and status["WeightedHigh"]["status"] == "pass"
    assert "score_fallback" not in status["WeightedHigh"]
    assert [a["rule"] for a in out["alerts_changed"]] == ["ShareHigh"]


def test_an_importance_rule_without_stored_importance_falls_back_to_the_share_and_says_so(
        project: Project) -> None:
    rng = np.random.default_rng(13)
    _store_training(project, rng)  # ReferenceStore.compute: no model, so no importance
    _log_hour(project, rng, T0, shift=30.0)
    rule = {"name": "WeightedHigh", "kind": "drift_share", "threshold": 0.3, "score": "importance"}
    out = Monitor(project, MonitoringConfig.from_section({"window": "1h", "rules": [rule]})).run_once(
        now=(T0 + HOUR).timestamp())
    window = out["windows"][0]
    assert window["importance_score"] is None and window["drift_share"] >= 1 / 3
    status = out["rules"][0]
    assert status["status"] == "fail"  # measured by the share, not skipped
    assert "drifted share is used instead" in status["score_fallback"]["flights@1"]
    assert "without the model" in status["score_fallback"]["flights@1"]  # and why there is none


def test_importance_is_measured_on_the_holdout_the_lineage_names(project: Project, tmp_path: Path) -> None:
    rng = np.random.default_rng(14)
    X = pd.DataFrame({"signal": rng.normal(size=2000), "noise": rng.normal(size=2000)})
    y = (X["signal"] > 0).astype(int)
    model = LogisticRegression().fit(X.to_numpy(), y)
    holdout = tmp_path / "holdout.parquet"
    X.assign(late=y).tail(500).to_parquet(holdout)
    Registry(project).register("flights", model, flavor="sklearn", signature=SIGNATURE, training_data=X,
                               lineage={"label": "late", "holdout_path": str(holdout)})
    profile = ReferenceStore(project).load("flights", 1)
    assert profile.importance is not None and profile.importance["signal"] > 0.9
    assert f"on 500 rows of the holdout {holdout}" in profile.importance_note


def test_importance_that_cannot_be_measured_is_none_with_the_reason(project: Project) -> None:
    rng = np.random.default_rng(15)
    X = pd.DataFrame({"signal": rng.normal(size=500), "noise": rng.normal(size=500)})
    model = LogisticRegression().fit(X.to_numpy(), (X["signal"] > 0).astype(int))
    labels = np.where(X["signal"] > 0, "late", "on time")  # not numbers: no loss to measure
    Registry(project).register("flights", model, flavor="sklearn", signature=SIGNATURE,
                               training_data=X.assign(late=labels), lineage={"label": "late"})
    profile = ReferenceStore(project).load("flights", 1)  # the profile is still made
    assert profile.importance is None
    assert profile.importance_note.startswith("permutation importance on the training data failed")


def test_a_loop_drift_rule_takes_the_importance_score() -> None:
    from modelmill.loop.config import parse_models

    models = {"flights": {"pipeline": {"function": "p:q"}, "gate": {"min": {"auc": 0.6}},
                          "rules": {"drift": {"share": 0.3, "score": "importance"}}}}
    (rule,) = parse_models(models).model("flights").monitoring_rules()
    assert (rule.kind, rule.score, rule.threshold) == ("drift_share", "importance", 0.3)
    models["flights"]["rules"] = {"drift": {"share": 0.3, "score": "weighted"}}
    with pytest.raises(ConfigError) as exc:
        parse_models(models)
    assert "models.flights.rules.drift.score" in str(exc.value)
