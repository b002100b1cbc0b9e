"""The clicks model's retraining pipeline: training set → fit → register (with its reference profile).

``modelmill pipeline run modelmill.demo.clicks_pipeline:RETRAIN -p model=clicks -p window_hours=1 ...``
trains on the newest ``window_hours`` of the ingested ``clicks`` table (event time: the scenario
replays simulated hours, so "the newest" is judged by the events, not the wall clock). The last
``holdout_share`` of that window is kept out of training: the output ``holdout`` (label ``clicked``)
is what the loop's gate (``[models.clicks.gate]``) judges the candidate, and production, on; it is
also written to ``holdout_path`` (lineage) for ``modelmill gate --data``. The same fixed params serve
the first model and every retraining the loop starts.

The training set is read afresh on every run (``cache=False``): with fixed params a cached read
would hand every retraining the first run's data. The steps after it are cached on its content.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pandas as pd

from modelmill.demo.clicks_features import REQUEST_FEATURES, SERVICE
from modelmill.errors import InputError
from modelmill.features import FeatureStore
from modelmill.registry import Field, Registry, Signature
from modelmill.training import Pipeline, Step, StepContext, register_pipeline, step
from modelmill.training.trainers import train

__all__ = ["LABEL", "RETRAIN", "entity_frame", "feature_columns"]

LABEL = "clicked"
TABLE = "clicks"


def entity_frame(clicks: pd.DataFrame) -> pd.DataFrame:
    """What a prediction request knows about an impression: the user, the time, the request-time features."""
    device = clicks["device"].astype(str).to_numpy()
    return pd.DataFrame({
        "user_id": clicks["user_id"].astype("int64").to_numpy(),
        "event_timestamp": pd.to_datetime(clicks["ts"], utc=True).to_numpy(),
        "session_len": clicks["session_len"].astype("float64").to_numpy(),
        "device_ios": (device == "ios").astype("float64"),
        "device_web": (device == "web").astype("float64"),
    })


def feature_columns(frame: pd.DataFrame) -> list[str]:
    """Model inputs: every feature-service column (``view__feature``) then the request-time features."""
    return [*(c for c in frame.columns if "__" in c), *REQUEST_FEATURES]


def _build_training_set(ctx: StepContext, window_hours: float,
                        holdout_share: float) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, str]]:
    offline = ctx.project.offline
    if not offline.exists(TABLE):
        raise InputError("clicks", "no clicks were ingested yet (offline table 'clicks' is missing)")
    with offline.connect([TABLE]) as con:
        found = con.execute(f"SELECT max(ts) FROM {TABLE}").fetchone()
        newest = found[0] if found else None
        if newest is None:
            raise InputError("clicks", "the offline table 'clicks' has no events yet")
        lo = pd.Timestamp(newest) - pd.Timedelta(hours=float(window_hours))
        clicks = con.execute(f"SELECT user_id, ts, session_len, device, clicked FROM {TABLE} WHERE ts > ? "
                             "ORDER BY ts, event_id", [lo.to_pydatetime()]).df()
    frame = FeatureStore(ctx.project).get_training_set(entity_frame(clicks), SERVICE, full_feature_names=True)
    frame = frame.rename(columns=lambda c: c.replace(":", "__"))
    frame[LABEL] = clicks[LABEL].astype("int64").to_numpy()
    cut = int(len(frame) * (1.0 - float(holdout_share)))
    train_set, holdout = frame.iloc[:cut].reset_index(drop=True), frame.iloc[cut:].reset_index(drop=True)
    columns = [*feature_columns(frame), LABEL]
    digest = hashlib.sha256(pd.util.hash_pandas_object(holdout[columns]).to_numpy().tobytes()).hexdigest()[:16]
    path = ctx.project.settings.home / "training_sets" / f"clicks-holdout-{digest}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    holdout[columns].to_parquet(path, index=False)
    data = {"data_snapshot": f"clicks {lo.isoformat()}..{pd.Timestamp(newest).isoformat()} ({len(frame)} impressions)",
            "feature_service": SERVICE, "holdout_path": str(path)}
    ctx.record(**data)
    return train_set, holdout[columns], data


build_training_set = Step(_build_training_set, inputs=["window_hours", "holdout_share"],
                          outputs=["train_set", "holdout", "data"], name="build_training_set", cache=False)


@step(inputs=["train_set", "trainer", "seed"], outputs=["trained"])
def fit(ctx: StepContext, train_set: pd.DataFrame, trainer: str, seed: int) -> Any:
    columns = feature_columns(train_set)
    # Shallow and slow: an hour of clicks is a few thousand rows of a noisy, smooth response.
    return train(trainer, train_set[[*columns, LABEL]], LABEL, run=ctx.run, seed=seed, max_iter=80,
                 learning_rate=0.05, max_leaf_nodes=15, min_samples_leaf=40)


@step(inputs=["trained", "train_set", "holdout", "data", "model"], outputs=["registered"])
def register(ctx: StepContext, trained: Any, train_set: pd.DataFrame, holdout: pd.DataFrame, data: dict[str, str],
             model: str) -> dict[str, Any]:
    columns = feature_columns(train_set)
    signature = Signature(inputs=[Field(c, "float64") for c in columns],
                          outputs=[Field("click_probability", "float64")])
    lineage = {**data, "pipeline_run": ctx.pipeline_run_id, "feature_definitions": SERVICE}
    # training_data: the profile monitoring compares this version's served features and outputs with. The
    # holdout, not the rows it was fit on: its outputs on unseen rows are what serving sees (in-sample ones
    # are more spread, and the output test would call that drift).
    version = Registry(ctx.project).register(model, trained.native, flavor=trained.flavor, signature=signature,
                                             run_id=trained.run_id or ctx.run.run_id, metrics=trained.metrics,
                                             lineage=lineage, actor="pipeline:clicks_retrain",
                                             training_data=holdout[columns])
    ctx.record(model_version=f"{model}@{version.version}")
    return {"version": version.version, "auc": trained.metrics.get("auc"), "rows": len(train_set)}


RETRAIN = register_pipeline(Pipeline("clicks_retrain", [build_training_set, fit, register]))
