"""The flights model's training pipelines.

``flights_retrain`` (training set → fit → register → gate) trains the first model: its params are the
model name and the training window (ISO times); the last ``holdout_days`` of the window are kept out of
training and are what the gate judges the candidate (and production) on.

``flights_retrain_recent`` is what the loop runs (``[models.flights_delay.pipeline]`` in the demo's
``modelmill.toml``) when a rule fires: the same steps over the last ``days`` before the newest event the
online store has seen (the event clock's now), ending at ``register``; the loop's own gate
(``[models.flights_delay.gate]``) judges the version on its ``holdout`` output, and the loop rolls it out.
"""

from __future__ import annotations

import io
from typing import Any

import pandas as pd

from modelmill.demo.definitions import REQUEST_FEATURES, SERVICE
from modelmill.features import FeatureStore
from modelmill.registry import Field, Registry, Signature, gate
from modelmill.training import Pipeline, Step, StepContext, register_pipeline, step
from modelmill.training.trainers import train

__all__ = ["LABEL", "RECENT", "RETRAIN", "entity_frame", "feature_columns"]

LABEL = "late"


def entity_frame(flights: pd.DataFrame) -> pd.DataFrame:
    """What a prediction request knows about a flight: its keys, time and request-time features."""
    local = flights["sched_dep"].dt.tz_convert("America/New_York")
    return pd.DataFrame({
        "flight_id": flights["flight_id"].to_numpy(),
        "origin": flights["origin"].to_numpy(),
        "carrier": flights["carrier"].to_numpy(),
        "route": flights["route"].to_numpy(),
        "tailnum": flights["tailnum"].fillna("UNKNOWN").to_numpy(),
        "event_timestamp": flights["sched_dep"].to_numpy(),
        "dep_hour": local.dt.hour.astype("float64").to_numpy(),
        "weekday": local.dt.weekday.astype("float64").to_numpy(),
        "distance": flights["distance"].astype("float64").to_numpy(),
    })


def feature_columns(frame: pd.DataFrame) -> list[str]:
    """Model inputs: every feature-service column (``view__feature``) then the request-time features."""
    served = [c for c in frame.columns if "__" in c]
    return [*served, *REQUEST_FEATURES]


@step(inputs=["start", "end", "holdout_days"], outputs=["train_set", "holdout_set", "data"])
def build_training_set(ctx: StepContext, start: str, end: str,
                       holdout_days: int) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, str]]:
    from modelmill.datasets import load_flights

    flights = load_flights()
    lo, hi = pd.Timestamp(start), pd.Timestamp(end)
    window = flights[(flights["sched_dep"] >= lo) & (flights["sched_dep"] < hi) & (flights["arrived_at"] < hi)
                     & flights[LABEL].notna()]
    entities = entity_frame(window)
    store = FeatureStore(ctx.project)
    frame = store.get_training_set(entities, SERVICE, full_feature_names=True)
    frame = frame.rename(columns=lambda c: c.replace(":", "__"))
    frame[LABEL] = window[LABEL].astype("int64").to_numpy()
    cut = hi - pd.Timedelta(days=holdout_days)
    is_train = frame["event_timestamp"] < cut
    snapshot = f"training_sets/{SERVICE}/{lo:%Y%m%d}-{hi:%Y%m%d}.parquet"
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    ctx.project.artifacts.put_bytes(snapshot, buf.getvalue())
    versions = {d.name: d.version for d in store.definitions()}
    data = {"training_set": ctx.project.artifacts.uri(snapshot), "data_snapshot": f"flights {start}..{end}",
            "feature_version": f"{SERVICE} v{versions.get(SERVICE, '?')}"}
    ctx.record(**data)
    return frame[is_train].reset_index(drop=True), frame[~is_train].reset_index(drop=True), data


@step(inputs=["train_set", "trainer", "seed"], outputs=["trained"])
def fit(ctx: StepContext, train_set: pd.DataFrame, trainer: str, seed: int) -> Any:
    columns = feature_columns(train_set)
    return train(trainer, train_set[[*columns, LABEL]], LABEL, run=ctx.run, seed=seed, max_iter=150,
                 learning_rate=0.08)


@step(inputs=["trained", "holdout_set", "data", "model", "min_auc", "max_regression"], outputs=["decision"])
def register_and_gate(ctx: StepContext, trained: Any, holdout_set: pd.DataFrame, data: dict[str, str], model: str,
                      min_auc: float, max_regression: float) -> dict[str, Any]:
    registry = Registry(ctx.project)
    columns = feature_columns(holdout_set)
    version = _register(ctx, registry, trained, columns, data, model, "flights_retrain")
    against = f"{model}@production" if "production" in registry.aliases(model) else None
    result = gate(registry, version, data=holdout_set[[*columns, LABEL]], against=against, label=LABEL,
                  minimum={"auc": min_auc}, max_regression={"auc": max_regression}, actor="pipeline:flights_retrain")
    return {"version": version.version, "accepted": result.accepted, "reason": result.reason,
            "auc": result.metrics.get("auc"), "baseline_auc": (result.baseline_metrics or {}).get("auc"),
            "rows": result.rows}


def _register(ctx: StepContext, registry: Registry, trained: Any, columns: list[str], data: dict[str, str],
              model: str, pipeline: str) -> Any:
    signature = Signature(inputs=[Field(c, "float64") for c in columns], outputs=[Field("late_probability", "float64")])
    lineage = {**data, "feature_service": SERVICE, "pipeline_run": ctx.pipeline_run_id,
               "feature_definitions": SERVICE}
    version = registry.register(model, trained.native, flavor=trained.flavor, signature=signature,
                                run_id=trained.run_id or ctx.run.run_id, metrics=trained.metrics, lineage=lineage,
                                actor=f"pipeline:{pipeline}")
    ctx.record(model_version=f"{model}@{version.version}")
    return version


RETRAIN = register_pipeline(Pipeline("flights_retrain", [build_training_set, fit, register_and_gate]))


def _recent_window(ctx: StepContext, days: int) -> tuple[str, str]:
    """The last ``days`` up to the online store's watermark (the replay's now; the wall clock without one)."""
    mark = FeatureStore(ctx.project).watermark()
    end = pd.Timestamp(mark, unit="us", tz="UTC") if mark else pd.Timestamp.now(tz="UTC")
    start = end - pd.Timedelta(days=int(days))
    ctx.record(window=f"{start.isoformat()}..{end.isoformat()}")
    return start.isoformat(), end.isoformat()


# Runs on every pipeline run: with fixed params a cached window would hand every retraining the first one's.
recent_window = Step(_recent_window, inputs=["days"], outputs=["start", "end"], name="recent_window", cache=False)


@step(inputs=["trained", "holdout_set", "data", "model"], outputs=["version", "holdout"])
def register(ctx: StepContext, trained: Any, holdout_set: pd.DataFrame, data: dict[str, str],
             model: str) -> tuple[int, pd.DataFrame]:
    """Register the candidate; the loop gates it on ``holdout`` (the model's inputs and the label)."""
    columns = feature_columns(holdout_set)
    version = _register(ctx, Registry(ctx.project), trained, columns, data, model, "flights_retrain_recent")
    return version.version, holdout_set[[*columns, LABEL]].reset_index(drop=True)


RECENT = register_pipeline(Pipeline("flights_retrain_recent", [recent_window, build_training_set, fit, register]))
