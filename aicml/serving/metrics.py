"""Prometheus metrics of the model server, on the shared registry (names the dashboards use)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from aicml.observability.metrics import MODEL_DEPLOYMENTS_ACTIVE, REGISTRY

HTTP_REQUESTS = Counter(
    "aicml_http_requests",
    "HTTP requests answered by the model server, by model, route and status code.",
    ["model", "route", "status"],
    registry=REGISTRY,
)
REQUEST_LATENCY = Histogram(
    "aicml_request_latency_seconds",
    "Time from request start to response, by model and route.",
    ["model", "route"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    registry=REGISTRY,
)
SHADOW_DISAGREEMENTS = Counter(
    "aicml_shadow_disagreements",
    "Shadow requests where the challenger's prediction differed from the champion's, by model.",
    ["model"],
    registry=REGISTRY,
)
BATCH_ROWS = Histogram(
    "aicml_predict_batch_rows",
    "Rows per predict call after micro-batching, by model.",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096),
    registry=REGISTRY,
)
PREDICTION_LOG_RECORDS = Counter(
    "aicml_prediction_log_records",
    "Sampled predictions (requests) of the prediction log by outcome: enqueued, dropped (queue full), "
    "written, failed (could not be written).",
    ["model", "outcome"],
    registry=REGISTRY,
)
PREDICTION_LOG_QUEUE_ROWS = Gauge(
    "aicml_prediction_log_queue_rows",
    "Prediction rows waiting for the prediction log's writer, by model.",
    ["model"],
    multiprocess_mode="livesum",
    registry=REGISTRY,
)

__all__ = [
    "BATCH_ROWS",
    "HTTP_REQUESTS",
    "MODEL_DEPLOYMENTS_ACTIVE",
    "PREDICTION_LOG_QUEUE_ROWS",
    "PREDICTION_LOG_RECORDS",
    "REQUEST_LATENCY",
    "SHADOW_DISAGREEMENTS",
]
