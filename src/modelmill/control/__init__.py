"""The control plane: one implementation of what an operator does, behind both the CLI and HTTP.

Each function takes the project and plain arguments, does one thing (read the registry, start a
rollout, stop an experiment, trigger a pipeline, read the monitor's last word) and returns a
JSON-ready dict. ``modelmill models|rollout|experiment|pipeline ...`` print that dict (``--json``) or a
table of it; the ``/v1`` routes of :mod:`modelmill.serving` answer it. A change is made with an
``actor`` (``cli``, or over HTTP ``token:<name>``), which every audit row it writes names.

The ``*_request`` functions turn a JSON body into the keyword arguments of the matching function,
refusing a wrong field with an :class:`~modelmill.errors.InputError` that names it.

    registry     list_models, list_versions, version_detail
    rollouts     list_rollouts, start_rollout, rollout_status, promote_rollout, rollback_rollout,
                 drive_rollout
    experiments  create_experiment, list_experiments, experiment_status, experiment_results,
                 analyze_experiment, stop_experiment
    pipelines    trigger_pipeline, run_status
    monitoring   monitoring_status
"""

from __future__ import annotations

from modelmill.control.experiments import (
    analyze_experiment,
    create_experiment,
    create_request,
    experiment_results,
    experiment_status,
    list_experiments,
    stop_experiment,
)
from modelmill.control.monitoring import monitoring_status
from modelmill.control.pipelines import run_status, trigger_pipeline, trigger_request
from modelmill.control.registry import list_models, list_versions, version_detail
from modelmill.control.rollouts import (
    drive_rollout,
    list_rollouts,
    promote_rollout,
    rollback_rollout,
    rollout_status,
    start_request,
    start_rollout,
)

__all__ = [
    "analyze_experiment",
    "create_experiment",
    "create_request",
    "drive_rollout",
    "experiment_results",
    "experiment_status",
    "list_experiments",
    "list_models",
    "list_rollouts",
    "list_versions",
    "monitoring_status",
    "promote_rollout",
    "rollback_rollout",
    "rollout_status",
    "run_status",
    "start_request",
    "start_rollout",
    "stop_experiment",
    "trigger_pipeline",
    "trigger_request",
    "version_detail",
]
