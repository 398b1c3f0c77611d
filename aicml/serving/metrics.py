"""Prometheus metrics of the model server, on the shared registry (names the dashboards use)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

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

__all__ = [
    "BATCH_ROWS",
    "HTTP_REQUESTS",
    "MODEL_DEPLOYMENTS_ACTIVE",
    "REQUEST_LATENCY",
    "SHADOW_DISAGREEMENTS",
]
