"""The `audit-models` flow: the weekly performance audit of every registered model with an alias (live metric
over time, drift, data volume, last retrain, open alerts) as a markdown artifact, and each model's part in
its champion's MLflow run as ``audit/<date>.md``."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field

from aicml.errors import RegistryError
from aicml.monitoring.audit import ModelAudit, aliased_models, audit_model, render_audit, summary_database_url
from aicml.names import ResourceName
from aicml.registry.tracking import Tracking
from aicml.stack.overrides import resolve_params
from aicml.usage.tasks import metered
from tasks.context import data_dir, settings, tracking_of

ARTIFACT_KEY = "audit-models"


class AuditParams(BaseModel):
    """Parameters of `audit-models`; Prefect builds the deployment form from these."""

    model_config = ConfigDict(hide_input_in_errors=True)

    days: int = Field(
        default=7, ge=1, le=366, description="Days of history each audit covers, up to its end."
    )
    end: datetime | None = Field(
        default=None,
        description="End of the audited period (UTC); now when empty (set it to redo a past week).",
    )
    models: list[ResourceName] = Field(
        default_factory=list,
        description="Registered models to audit; empty: every registered model that has an alias.",
    )
    log_to_mlflow: bool = Field(
        default=True,
        description="Log each model's part as audit/<date>.md to its champion version's MLflow run.",
    )


class ModelAuditResult(BaseModel):
    model_name: str
    aliases: dict[str, str]
    monitor_runs: int
    live_metric: dict[str, float]
    drifted: dict[str, int]
    logged_predictions: int | None
    latest_version: str | None
    open_alerts: list[dict[str, Any]]
    mlflow_run_id: str | None
    mlflow_artifact: str | None


class AuditResult(BaseModel):
    """What one audit reported."""

    start: datetime
    end: datetime
    models: list[ModelAuditResult]
    markdown: str
    artifact_key: str


@metered
@task(name="audit-model", retries=1, cache_policy=NO_CACHE, persist_result=False, timeout_seconds=900)
def collect_audit(
    model: str,
    aliases: dict[str, str],
    start: datetime,
    end: datetime,
    tracking: Tracking,
    home: Path,
    database_url: str | None,
) -> ModelAudit:
    """One model's figures over the period (monitor summaries, log volume, versions, audit log)."""
    return audit_model(
        tracking.client(), model, aliases, start, end,
        monitoring_dir=data_dir("monitoring", home), audit_dir=home / "audit", database_url=database_url,
    )  # fmt: skip


@metered
@task(name="log-audit", retries=1, cache_policy=NO_CACHE, persist_result=False, timeout_seconds=300)
def log_audit(audit: ModelAudit, tracking: Tracking, day: str) -> tuple[str | None, str | None]:
    """The model's part of the report as ``audit/<day>.md`` in its champion's run (else the first aliased
    version's); (run id, artifact path), or (None, None) when the version has no run."""
    version = audit.champion or next(iter(sorted(audit.aliases.values(), key=int)), None)
    if version is None:
        return None, None
    client = tracking.client()
    run_id = client.get_model_version(audit.model, version).run_id
    if not run_id:
        get_run_logger().warning(
            "%s version %s has no MLflow run: audit not logged there", audit.model, version
        )
        return None, None
    artifact = f"audit/{day}.md"
    client.log_text(run_id, audit.markdown(), artifact)
    return run_id, artifact


@flow(name="audit-models", log_prints=False, persist_result=True)
def audit_models(params: AuditParams, overrides: dict[str, Any] | None = None) -> AuditResult:
    """Audit every registered model with an alias over the last `days` days.

    Args:
        params: The audit's parameters (a deployment fills them from its preset).
        overrides: Fields of `params` to change for this run, by dotted path, e.g. {"days": 28};
            every other field keeps its value. The result is validated as a whole: a key that names
            no field, or a value of the wrong type, fails the run with an error naming it.
    """
    params = resolve_params(params, overrides, AuditParams)
    logger = get_run_logger()
    s = settings()
    tracking = tracking_of(s)
    end = params.end or datetime.now(UTC)
    end = end.replace(tzinfo=UTC) if end.tzinfo is None else end.astimezone(UTC)
    start = end - timedelta(days=params.days)
    found = aliased_models(tracking.client(), list(params.models) or None)
    missing = sorted(set(params.models) - set(found))
    if missing:
        raise RegistryError(
            f"No registered model {', '.join(map(repr, missing))} with an alias: audit models that serve "
            "(leave `models` empty for all of them)."
        )
    database_url = summary_database_url(s.root, os.environ)
    audits = [
        collect_audit(name, aliases, start, end, tracking, s.root, database_url)
        for name, aliases in found.items()
    ]
    markdown = render_audit(audits, start, end)
    create_markdown_artifact(
        markdown=markdown,
        key=ARTIFACT_KEY,
        description=f"Model audit {start:%Y-%m-%d} to {end:%Y-%m-%d}: {len(audits)} model(s)",
    )
    results = []
    for audit in audits:
        run_id, artifact = None, None
        if params.log_to_mlflow:
            try:
                run_id, artifact = log_audit(audit, tracking, f"{end:%Y-%m-%d}")
            except Exception as exc:  # the report stands in Prefect without its copy in MLflow; say so
                logger.warning("Audit of %s not logged to MLflow: %s", audit.model, exc)
        metric = audit.metric
        series = audit.live_series()
        results.append(
            ModelAuditResult(
                model_name=audit.model, aliases=audit.aliases, monitor_runs=len(audit.runs),
                live_metric={metric: series[-1][1]} if series else {}, drifted=audit.drifted_counts(),
                logged_predictions=audit.logged_predictions, latest_version=audit.latest_version,
                open_alerts=audit.open_alerts, mlflow_run_id=run_id, mlflow_artifact=artifact,
            )
        )  # fmt: skip
        logger.info(
            "%s: %d monitor run(s), %s logged prediction(s), %d open alert(s)%s",
            audit.model, len(audit.runs), audit.logged_predictions, len(audit.open_alerts),
            f"; logged to run {run_id} as {artifact}" if artifact else "",
        )  # fmt: skip
    return AuditResult(start=start, end=end, models=results, markdown=markdown, artifact_key=ARTIFACT_KEY)
