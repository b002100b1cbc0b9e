"""Prometheus gauges for drift, model quality and alerts.

The gauges live on a ``prometheus_client`` registry — by default the global one,
so ``modelmill serve``'s /metrics carries them; :meth:`MonitoringExporter.serve`
exposes them on a port of their own for a monitor that runs apart from serving.

    >>> from prometheus_client import CollectorRegistry, generate_latest
    >>> ex = MonitoringExporter(registry=CollectorRegistry())
    >>> ex.set_model_metric("flights", 3, "main", "auc", 0.71)
    >>> b'modelmill_model_metric{metric="auc",model="flights",variant="main",version="3"} 0.71' in generate_latest(ex.registry)
    True
"""

from __future__ import annotations

from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Gauge, start_http_server

from modelmill.monitoring.drift import DriftReport

__all__ = ["MonitoringExporter"]


class MonitoringExporter:
    """Drift, performance and alert gauges, labelled by model, version (and feature / variant / metric)."""

    def __init__(self, *, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else REGISTRY
        r = self.registry
        mv = ["model", "version"]
        self.drift_share = _gauge("modelmill_drift_share", "Share of features whose drift test fired", mv, r)
        self.dataset_drift = _gauge("modelmill_dataset_drift", "1 when the dataset drifted", mv, r)
        self.feature_drift = _gauge("modelmill_feature_drift", "1 when the feature's drift test fired",
                                    [*mv, "feature"], r)
        self.feature_score = _gauge("modelmill_feature_drift_score", "The feature's drift statistic",
                                    [*mv, "feature", "test"], r)
        self.feature_psi = _gauge("modelmill_feature_psi", "Population stability index of the feature",
                                  [*mv, "feature"], r)
        self.prediction_drift = _gauge("modelmill_prediction_drift_score",
                                       "Drift statistic of the model's outputs", [*mv, "test"], r)
        self.model_metric = _gauge("modelmill_model_metric", "Model quality on labelled predictions",
                                   [*mv, "variant", "metric"], r)
        self.labelled = _gauge("modelmill_labelled_predictions", "Predictions joined to a label",
                               [*mv, "variant"], r)
        self.alert_active = _gauge("modelmill_alert_active", "1 while a modelmill alert fires",
                                   ["alertname"], r)
        self.last_run = _gauge("modelmill_monitor_last_run_timestamp_seconds",
                               "When the monitor last evaluated", [], r)

    def __repr__(self) -> str:
        return f"MonitoringExporter(registry={'global' if self.registry is REGISTRY else 'own'})"

    def set_drift(self, model: str, version: int | str, report: DriftReport, *,
                  prediction_column: str = "__prediction__") -> None:
        v = str(version)
        self.drift_share.labels(model, v).set(report.drift_share)
        self.dataset_drift.labels(model, v).set(1.0 if report.dataset_drift else 0.0)
        for name, col in report.columns.items():
            if name == prediction_column:
                self.prediction_drift.labels(model, v, col.test).set(col.statistic)
                continue
            self.feature_drift.labels(model, v, name).set(1.0 if col.drift else 0.0)
            self.feature_score.labels(model, v, name, col.test).set(col.statistic)
            self.feature_psi.labels(model, v, name).set(col.psi)

    def set_model_metric(self, model: str, version: int | str, variant: str, metric: str, value: float) -> None:
        self.model_metric.labels(model, str(version), variant, metric).set(value)

    def set_performance(self, rows: list[dict[str, Any]], metrics: tuple[str, ...]) -> None:
        """Rows from :meth:`PerformanceMonitor.summary` (model, version, variant, metrics…)."""
        for row in rows:
            for m in metrics:
                if m in row and row[m] == row[m]:  # skip NaN: an undefined metric is absent, not zero
                    self.set_model_metric(row["model"], row["version"], row["variant"], m, float(row[m]))
            self.labelled.labels(row["model"], str(row["version"]), row["variant"]).set(row.get("n", 0))

    def set_alerts(self, firing: set[str], known: list[str]) -> None:
        for name in known:
            self.alert_active.labels(name).set(1.0 if name in firing else 0.0)

    def mark_run(self, at: float) -> None:
        self.last_run.set(at)

    def serve(self, port: int, *, addr: str = "127.0.0.1") -> tuple[Any, Any]:
        """Expose the registry at ``http://addr:port/metrics`` from a background thread."""
        return start_http_server(port, addr=addr, registry=self.registry)


def _gauge(name: str, doc: str, labels: list[str], registry: CollectorRegistry) -> Gauge:
    # The global registry may already hold the gauge (a second exporter in one process): reuse it.
    existing = getattr(registry, "_names_to_collectors", {}).get(name)
    if isinstance(existing, Gauge):
        return existing
    return Gauge(name, doc, labels, registry=registry)
