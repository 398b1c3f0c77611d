"""The platform's Prometheus metrics, defined once; every service imports them from here.

Names are the platform's (`ml_training_jobs_total`, ...). prometheus_client adds `_total` to counters
and `_bucket`/`_sum`/`_count` to histograms on exposition, as Prometheus expects.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)


def exposition() -> bytes:
    """The metrics of this process, or of every process sharing ``PROMETHEUS_MULTIPROC_DIR``."""
    import os

    from prometheus_client import generate_latest, multiprocess

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)
        return generate_latest(merged)
    return generate_latest(REGISTRY)


TRAINING_JOBS = Counter(
    "ml_training_jobs",
    "Training jobs finished, by outcome (success, failure).",
    ["outcome"],
    registry=REGISTRY,
)
MODEL_DEPLOYMENTS_ACTIVE = Gauge(
    "ml_model_deployments_active",
    "Model deployments currently serving, by model.",
    ["model"],
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
PIPELINE_EXECUTIONS_DURATION = Histogram(
    "ml_pipeline_executions_duration",
    "Wall time of pipeline executions in seconds, by flow and outcome.",
    ["flow", "outcome"],
    buckets=(1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200),
    registry=REGISTRY,
)
PIPELINE_EXECUTIONS = Counter(
    "ml_pipeline_executions",
    "Pipeline executions finished, by flow and outcome.",
    ["flow", "outcome"],
    registry=REGISTRY,
)
AGENT_ORCHESTRATION_REQUESTS = Counter(
    "ml_agent_orchestration_requests",
    "Agent coordination requests, by pattern and outcome.",
    ["pattern", "outcome"],
    registry=REGISTRY,
)
DATA_INTEGRATION_RECORDS = Counter(
    "ml_data_integration_records_processed",
    "Records processed by data integration, by source and outcome (ingested, accepted, set_aside, quarantined, rejected).",
    ["source", "outcome"],
    registry=REGISTRY,
)
RESOURCE_SECONDS = Counter(
    "ml_resource_seconds",
    "Seconds of each resource flow runs used (wall, cpu, gpu) and, on Kubernetes, requested (requested_cpu: "
    "core-seconds, requested_gpu: GPU-seconds, requested_memory_gib: GiB-seconds), by flow, deployment and team.",
    ["resource", "flow", "deployment", "team"],
    registry=REGISTRY,
)

SEED_METRIC_NAMES = (
    "ml_training_jobs_total",
    "ml_model_deployments_active",
    "ml_pipeline_executions_duration",
    "ml_agent_orchestration_requests",
    "ml_data_integration_records_processed",
)


class Execution:
    """What ``pipeline_execution`` yields: the elapsed seconds once the block has ended."""

    def __init__(self) -> None:
        self.seconds = 0.0


@contextlib.contextmanager
def pipeline_execution(flow: str) -> Iterator[Execution]:
    """Count and time one execution of ``flow``: ``success`` when the block returns, ``failure`` when it raises.

    The one place the flows record ``ml_pipeline_executions`` and its duration histogram.
    """
    execution, started, outcome = Execution(), time.perf_counter(), "failure"
    try:
        yield execution
        outcome = "success"
    finally:
        execution.seconds = time.perf_counter() - started
        PIPELINE_EXECUTIONS_DURATION.labels(flow=flow, outcome=outcome).observe(execution.seconds)
        PIPELINE_EXECUTIONS.labels(flow=flow, outcome=outcome).inc()
