"""The `monitor-model` flow: one window of a served model's logged traffic against its champion's training
snapshot (drift of inputs and predictions, live metric from joined labels, data quality, latency, errors);
a table artifact, an HTML report in the version's MLflow run, Prometheus gauges, and the events
`aicml.model.drift.detected` / `aicml.model.performance.degraded` when a threshold is crossed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event
from pydantic import BaseModel, ConfigDict, Field

from aicml.monitoring import metrics as monitor_metrics
from aicml.monitoring.labels import read_labels
from aicml.monitoring.monitor import MonitorReport, Thresholds, monitor_window, reference_predictions
from aicml.monitoring.predictions import prediction_log_root, read_predictions
from aicml.monitoring.reference import Reference, load_reference
from aicml.monitoring.report import write_html
from aicml.names import ResourceName, slug
from aicml.registry.tracking import Tracking
from aicml.stack.overrides import resolve_params
from aicml.usage.tasks import metered
from tasks.context import data_dir, settings, tracking_of
from tasks.validate import artifact_page_url

DRIFT_EVENT = "aicml.model.drift.detected"
DEGRADED_EVENT = "aicml.model.performance.degraded"


class MonitorThresholds(BaseModel):
    """When the monitor emits its events; set per model in the deployment's preset."""

    drift: float = Field(
        default=0.2, gt=0, le=1, description="Per-feature KS / TVD beyond which a feature drifted."
    )
    prediction_drift: float = Field(
        default=0.2, gt=0, le=1, description="KS / TVD of the predictions beyond which the output drifted."
    )
    metric_drop: float = Field(
        default=0.05,
        ge=0,
        description="How far the live test metric (f1_macro or r2) may fall below the training one.",
    )
    min_rows: int = Field(default=100, ge=1, description="Fewest logged predictions drift is judged on.")
    min_labelled: int = Field(
        default=50, ge=1, description="Fewest labelled predictions the live metric is computed on."
    )


class MonitorParams(BaseModel):
    """Parameters of `monitor-model`; Prefect builds the deployment form from these."""

    model_config = ConfigDict(hide_input_in_errors=True)

    model_name: ResourceName = Field(description="The served model (registry name) to watch.")
    alias: str = Field(default="champion", description="The registry alias whose version is judged.")
    window_hours: float = Field(
        default=1.0, gt=0, le=24 * 31, description="Hours of traffic each run looks at."
    )
    window_end: datetime | None = Field(
        default=None, description="End of the window (UTC); now when empty (set it to re-judge a past hour)."
    )
    thresholds: MonitorThresholds = Field(
        default_factory=MonitorThresholds, description="Thresholds of the events."
    )
    emit_events: bool = Field(
        default=True, description="Emit the drift / degradation events (retraining triggers)."
    )


class MonitorResult(BaseModel):
    """What one monitor run found."""

    model_name: str
    version: str
    window_start: datetime
    window_end: datetime
    rows: int
    error_rate: float
    latency_ms: dict[str, float]
    drifted_features: list[str]
    drift_scores: dict[str, float]
    prediction_drifted: bool
    metric: str
    live_metrics: dict[str, float]
    training_metrics: dict[str, float]
    labelled_rows: int
    degraded: bool
    quality_failures: int
    report_path: str
    report_artifact: str | None
    events: list[str]


@metered
@task(name="load-reference", retries=1, cache_policy=NO_CACHE, persist_result=False, timeout_seconds=900)
def load_champion_reference(model: str, alias: str, tracking: Tracking, home: Path) -> Reference:
    """The champion's training snapshot, suite and metrics, with its predictions on the snapshot (cached per
    version under ``<home>/monitoring``)."""
    logger = get_run_logger()
    reference = load_reference(tracking.client(), model, alias=alias, suites_dir=data_dir("suites", home))
    cache = data_dir("monitoring", home) / model / f"reference-predictions-v{reference.version}.parquet"
    if cache.is_file():
        reference.predictions = pd.read_parquet(cache)["prediction"]
    else:
        tracking.activate()
        try:
            reference.predictions = reference_predictions(f"models:/{model}/{reference.version}", reference)
            cache.parent.mkdir(parents=True, exist_ok=True)
            reference.predictions.to_frame().to_parquet(cache, index=False)
        except Exception as exc:  # a model that cannot be loaded here: no prediction drift, said so
            logger.warning(
                "Prediction drift skipped: %s version %s cannot predict here: %s",
                model,
                reference.version,
                exc,
            )
    logger.info(
        "Reference: %s version %s, snapshot %s (%d rows), suite %s",
        model, reference.version, reference.snapshot_path, len(reference.frame), reference.suite_path or "none",
    )  # fmt: skip
    return reference


@metered
@task(name="judge-window", cache_policy=NO_CACHE, persist_result=False, timeout_seconds=1800)
def judge_window(
    reference: Reference, start: datetime, end: datetime, thresholds: Thresholds, home: Path
) -> MonitorReport:
    """Read the window's logged predictions and their labels; judge them against the reference."""
    root, storage = prediction_log_root(home)
    window = read_predictions(root, reference.model, start, end, storage)
    labels = read_labels(data_dir("labels", home), reference.model, start, end)
    return monitor_window(window, labels, reference, start, end, thresholds)


@metered
@task(name="publish-report", retries=1, cache_policy=NO_CACHE, persist_result=False, timeout_seconds=600)
def publish_report(
    report: MonitorReport, reference: Reference, tracking: Tracking, home: Path
) -> tuple[str, str | None]:
    """The table artifact, the HTML report (in the version's MLflow run, linked from a link artifact) and the
    gauges; (report path, MLflow artifact path)."""
    logger = get_run_logger()
    key = slug(f"monitor-{report.model}")
    verdict = []
    if report.drift_detected:
        verdict.append(f"drift: {', '.join(report.drifted_features) or 'predictions'}")
    if report.degraded:
        verdict.append(f"{report.metric} down {report.metric_drop:.3f}")
    create_table_artifact(
        table=report.summary_rows(),
        key=key,
        description=f"{report.model} v{report.version}, {report.rows} predictions: {'; '.join(verdict) or 'quiet'}",
    )
    stamp = report.end.strftime("%Y%m%dT%H%M%SZ")
    path = write_html(report, data_dir("monitoring", home) / report.model / f"report-{stamp}.html")
    monitor_metrics.record(report.model, report.drift_scores(), report.live)
    artifact = f"monitoring/{path.name}"
    try:
        client = tracking.client()
        client.log_artifact(reference.run_id, str(path), "monitoring")
        figures = path.with_suffix(".json")  # the run's figures, which the weekly audit reads
        if figures.exists():
            client.log_artifact(reference.run_id, str(figures), "monitoring")
        create_link_artifact(
            link=artifact_page_url(tracking, reference.experiment_id, reference.run_id, artifact),
            link_text=f"Monitor report of {report.model} v{report.version} (MLflow)",
            key=f"{key}-report",
            description=f"Window {report.start.isoformat()} to {report.end.isoformat()}",
        )
    except Exception as exc:  # the verdict stands without the copy in MLflow; say where the file is
        logger.warning("Report kept at %s; not logged to MLflow run %s: %s", path, reference.run_id, exc)
        return str(path), None
    return str(path), artifact


def emit_verdict(report: MonitorReport) -> list[str]:
    """The events of a report whose drift or live metric crossed its threshold; their names."""
    resource = {
        "prefect.resource.id": f"aicml.model.{report.model}",
        "prefect.resource.name": report.model,
        "aicml.model": report.model,
        "aicml.version": report.version,
    }
    sent = []
    if report.drift_detected:
        emit_event(event=DRIFT_EVENT, resource=resource, payload=report.drift_evidence())
        sent.append(DRIFT_EVENT)
    if report.degraded:
        emit_event(event=DEGRADED_EVENT, resource=resource, payload=report.performance_evidence())
        sent.append(DEGRADED_EVENT)
    return sent


@flow(name="monitor-model", log_prints=False, persist_result=True)
def monitor_model(params: MonitorParams, overrides: dict[str, Any] | None = None) -> MonitorResult:
    """Judge the last `window_hours` of a served model's traffic against its champion's training snapshot.

    Args:
        params: The monitor's parameters (a deployment fills them from its preset).
        overrides: Fields of `params` to change for this run, by dotted path, e.g.
            {"window_hours": 24} or {"thresholds.drift": 0.3}; every other field keeps its value.
            The result is validated as a whole: a key that names no field, or a value of the wrong
            type, fails the run with an error naming it.
    """
    params = resolve_params(params, overrides, MonitorParams)
    logger = get_run_logger()
    s = settings()
    tracking = tracking_of(s)
    end = params.window_end or datetime.now(UTC)
    end = end.replace(tzinfo=UTC) if end.tzinfo is None else end.astimezone(UTC)
    start = end - timedelta(hours=params.window_hours)
    thresholds = Thresholds(**params.thresholds.model_dump())
    reference = load_champion_reference(params.model_name, params.alias, tracking, s.root)
    report = judge_window(reference, start, end, thresholds, s.root)
    path, artifact = publish_report(report, reference, tracking, s.root)
    events = emit_verdict(report) if params.emit_events else []
    logger.info(
        "%s v%s: %d logged predictions, drift on %s, %s live %s (training %s), %d quality failure(s)%s",
        report.model, report.version, report.rows, report.drifted_features or "nothing", report.labelled_rows,
        report.live.get(report.metric), report.baseline.get(report.metric), len(report.quality),
        f"; events: {', '.join(events)}" if events else "",
    )  # fmt: skip
    return MonitorResult(
        model_name=report.model,
        version=report.version,
        window_start=start,
        window_end=end,
        rows=report.rows,
        error_rate=report.error_rate,
        latency_ms=report.latency_ms,
        drifted_features=report.drifted_features,
        drift_scores=report.drift_scores(),
        prediction_drifted=bool(report.prediction_drift and report.prediction_drift.drifted),
        metric=report.metric,
        live_metrics=report.live,
        training_metrics=report.baseline,
        labelled_rows=report.labelled_rows,
        degraded=report.degraded,
        quality_failures=len(report.quality),
        report_path=path,
        report_artifact=artifact,
        events=events,
    )
