"""Monitoring: drift, delayed-label performance, alerts that act, Prometheus gauges and HTML reports.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> detect_drift({"x": rng.normal(size=2000)}, {"x": rng.normal(1, 1, 2000)}).dataset_drift
    True
"""

from __future__ import annotations

from modelmill.monitoring.alerts import (
    ActionRegistry,
    Alert,
    AlertEvaluator,
    AlertmanagerSink,
    LogSink,
    Rule,
    WebhookSink,
    alertmanager_payload,
    default_actions,
)
from modelmill.monitoring.drift import (
    ColumnDrift,
    ColumnOptions,
    ColumnSummary,
    DriftOptions,
    DriftReport,
    StatTest,
    compare,
    detect_drift,
    register_test,
    summarize,
)
from modelmill.monitoring.estimate import Estimate, EstimatedMetric
from modelmill.monitoring.exporter import MonitoringExporter
from modelmill.monitoring.monitor import Monitor, MonitoringConfig, ProjectMeasure
from modelmill.monitoring.performance import PerformanceMonitor, classification_metrics, log_losses
from modelmill.monitoring.reference import ReferenceProfile, ReferenceStore
from modelmill.monitoring.report import render_report, write_report

__all__ = [
    "ActionRegistry",
    "Alert",
    "AlertEvaluator",
    "AlertmanagerSink",
    "ColumnDrift",
    "ColumnOptions",
    "ColumnSummary",
    "DriftOptions",
    "DriftReport",
    "Estimate",
    "EstimatedMetric",
    "LogSink",
    "Monitor",
    "MonitoringConfig",
    "MonitoringExporter",
    "PerformanceMonitor",
    "ProjectMeasure",
    "ReferenceProfile",
    "ReferenceStore",
    "Rule",
    "StatTest",
    "WebhookSink",
    "alertmanager_payload",
    "classification_metrics",
    "compare",
    "default_actions",
    "detect_drift",
    "log_losses",
    "register_test",
    "render_report",
    "summarize",
    "write_report",
]
