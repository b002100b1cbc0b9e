"""The loop: one declarative ``[models.NAME]`` table per model, run by ``modelmill loop``.

The format (every key is checked by :mod:`modelmill.loop.config`; an unknown key is an error naming it)::

    [models.clicks]
    feature_service = "clicks_features"   # optional: the service the model is served from (shown in status)

    [models.clicks.pipeline]              # required: what retrains the model
    function = "mypkg.pipes:retrain"      # 'module:attr' naming a modelmill Pipeline, or a registered name
    params = { days = 30 }                # the pipeline's params; `model` and `feature_service` are added
                                          # when the pipeline takes them as inputs and params do not set them
    cron = "0 3 * * *"                    # optional: also retrain on this schedule (UTC)

    [models.clicks.gate]                  # required: what a retrained version must meet (registry.gate)
    label = "clicked"                     # label column of the holdout (default "label")
    data = "holdout"                      # the pipeline output holding the labelled holdout frame (default)
    against = "production"                # alias it must not regress against (default; unset: skipped)
    min = { auc = 0.70 }                  # absolute minimums      } at least one of the three
    max = { logloss = 0.60 }              # absolute maximums      }
    max_regression = { auc = 0.01 }       # how much worse than `against` it may be
    max_calibration_error = 0.10          # optional: max = { calibration_error = 0.10 } (expected calibration
                                          # error); max_log_loss is max = { logloss = ... }
    max_log_loss_increase = 0.01          # optional: max_regression = { logloss = 0.01 }. A metric that cannot
                                          # be computed (outputs that are not probabilities) fails as no data

    [models.clicks.rules.drift]           # each rule optional; each fires, then acts (default: retrain)
    share = 0.3                           # share of drifted columns above which it fires, in (0, 1]
    score = "share"                       # or "importance": the drifted features' share of the importance
    window = "1h"                         # every rule: its window (default 1h), "90s" / "15m" / "1h" / "7d"
    for = "0s"                            # every rule: how long it must hold before firing (default 0)
    actions = ["retrain"]                 # every rule: any of "retrain", "rollback"
    severity = "warning"                  # every rule: the alert's severity label

    [models.clicks.rules.metric_drop]     # a delayed-label metric below baseline - margin
    metric = "auc"                        # auc | accuracy | precision | recall (default auc)
    margin = 0.05                         # default 0.05
    baseline = 0.80                       # optional; default: the metric registered with the served version
    min_labels = 100                      # fewer labelled predictions in the window: no data (default 100)
    window = "6h"

    [models.clicks.rules.estimated_metric_drop]  # the same before labels: estimated from the probabilities
    metric = "log_loss"                   # accuracy | auc | log_loss (a log loss fires above baseline + margin)
    margin = 0.05                         # baseline as metric_drop's (the gate's holdout metric by default)
    min_rows = 100                        # fewer predictions in the window: no data (default 100)
    window = "1h"

    [models.clicks.rules.latency]
    p95_ms = 50                           # p95 latency above which it fires
    window = "5m"

    [models.clicks.rules.error_rate]      # from the prediction log: 422 and 5xx answers per request
    max_rate = 0.02                       # error rate above which it fires, in [0, 1)
    min_requests = 100                    # fewer requests in the window: no data (default 100)
    window = "5m"

    [models.clicks.rollout]               # optional: how an accepted version is rolled out
    plan = ["shadow", 5, 50, 100]         # or "shadow,5,50,100" (default shadow,5,10,50,100)
    min_requests = 100                    # candidate requests per stage (at least guardrails.min_samples)
    stage_seconds = "60s"
    max_stage_seconds = "10m"             # a stage without data this long: on_timeout (default 10x, >= 10m)
    on_timeout = "rollback"               # or "hold"

    [models.clicks.rollout.guardrails]    # rollout.guardrails.Guardrails; false turns a check off
    max_error_rate_increase = 0.01
    max_latency_ratio = 1.5
    latency_slack_ms = 5.0
    max_output_shift = 0.2
    max_label_loss_increase = 0.02
    max_estimated_loss_increase = 0.02    # off unless set: expected log loss before labels (calibrated models)
    significance = 0.05
    min_errors = 3
    min_samples = 50

Each model's rules become ``[monitoring]`` rules named ``NAME.KIND`` (``clicks.drift``) evaluated by the one
alert evaluator (:class:`~modelmill.monitoring.AlertEvaluator`); ``[monitoring]`` still gives the sinks, the
drift options and ``metrics_url``. Two models may not share a pipeline: a run's model is known by its pipeline.

A round of the loop (:class:`Loop`, ``modelmill loop``), for every configured model, only while this process
holds the database lease (:class:`Lease`; a second ``modelmill loop`` waits as follower and takes over when the
lease expires):

1. the monitor: drift of the served versions, then the model's rules; a rule that starts firing queues the
   retraining pipeline (one trigger per alert episode);
2. the scheduler: runs the queued triggers (and the cron ticks);
3. the decisions: a finished run's version (the run's lineage ``model_version``) is gated on the run's ``data``
   output; an accepted one starts a rollout with the configured plan and guardrails; each step is kept in
   ``loop_decisions``, so a restarted loop resumes where it stopped;
4. the rollout controllers: each active rollout is stepped to promotion or rollback.
"""

from __future__ import annotations

from modelmill.loop.config import (
    ACTIONS,
    RULE_KINDS,
    GateSpec,
    LoopConfig,
    ModelLoop,
    PipelineSpec,
    RolloutSpec,
    RuleSpec,
    load_loop_config,
    parse_models,
)
from modelmill.loop.decisions import Decider
from modelmill.loop.lease import Lease
from modelmill.loop.measure import LoopMeasure
from modelmill.loop.runner import Loop, pipeline_params
from modelmill.loop.status import loop_status

__all__ = [
    "ACTIONS",
    "RULE_KINDS",
    "Decider",
    "GateSpec",
    "Lease",
    "Loop",
    "LoopConfig",
    "LoopMeasure",
    "ModelLoop",
    "PipelineSpec",
    "RolloutSpec",
    "RuleSpec",
    "load_loop_config",
    "loop_status",
    "parse_models",
    "pipeline_params",
]
