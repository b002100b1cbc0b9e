"""Training: experiment tracking, pipelines of cached steps with lineage, a scheduler, and trainers.

    with modelmill.start_run(experiment="late-arrivals") as run:
        run.log_params({"lr": 0.05})
        run.log_metric("auc", 0.81, step=1)

Trainers live in :mod:`modelmill.training.trainers` (imported on use: LightGBM, XGBoost, CatBoost
and torch are optional).
"""

from __future__ import annotations

from modelmill.training.pipeline import (
    Pipeline,
    PipelineResult,
    Step,
    StepContext,
    StepResult,
    get_pipeline,
    pipeline_runs_of,
    register_pipeline,
    registered_pipelines,
    step,
)
from modelmill.training.scheduler import Scheduler, TriggerInfo, trigger
from modelmill.training.tracking import MetricPoint, Run, RunInfo, Runs, start_run

__all__ = [
    "MetricPoint",
    "Pipeline",
    "PipelineResult",
    "Run",
    "RunInfo",
    "Runs",
    "Scheduler",
    "Step",
    "StepContext",
    "StepResult",
    "TriggerInfo",
    "get_pipeline",
    "pipeline_runs_of",
    "register_pipeline",
    "registered_pipelines",
    "start_run",
    "step",
    "trigger",
]
