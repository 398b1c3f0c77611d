"""The monitor's Prometheus gauges, declared like the seed's metrics (``aicml.observability.metrics``): in its
registry, and in multiprocess mode ``mostrecent`` so the exporter serves the last monitor run's values after
the flow's process has ended."""

from __future__ import annotations

from prometheus_client import Gauge

from aicml.observability.metrics import REGISTRY

MODEL_DRIFT_SCORE = Gauge(
    "ml_model_drift_score",
    "Drift of a served model's inputs (per feature) and outputs (feature=prediction) against its training "
    "snapshot: KS for numbers, TVD for categories, 0..1; set by the monitor-model flow.",
    ["model", "feature"],
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)
MODEL_LIVE_METRIC = Gauge(
    "ml_model_live_metric",
    "A served model's test metric on labelled live traffic (f1_macro, accuracy; r2, rmse, mae), by model "
    "and metric; set by the monitor-model flow.",
    ["model", "metric"],
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)


def record(model: str, drift_scores: dict[str, float], live_metrics: dict[str, float]) -> None:
    """Set the gauges of one monitor run."""
    for feature, value in drift_scores.items():
        MODEL_DRIFT_SCORE.labels(model=model, feature=feature).set(value)
    for metric, value in live_metrics.items():
        MODEL_LIVE_METRIC.labels(model=model, metric=metric).set(value)
