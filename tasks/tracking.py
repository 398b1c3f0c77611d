"""Tasks that open and close the pipeline's parent MLflow run; other tasks log under it by run id."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from aicml.registry.tracking import Tracking
from aicml.usage.tasks import metered
from tasks.policies import retry_unless_aic_error


@metered
@task(
    name="start-tracking",
    retries=2,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_unless_aic_error,
    cache_policy=NO_CACHE,
    timeout_seconds=120,
)
def start_pipeline_run(tracking: Tracking, run_name: str, tags: dict[str, str]) -> str:
    """Create the parent MLflow run of this pipeline execution in ``tracking``'s experiment; return its id
    (a reference, not a handle)."""
    run = tracking.client().create_run(tracking.experiment_id(), run_name=run_name, tags=tags)
    return str(run.info.run_id)


@metered
@task(name="finish-tracking", cache_policy=NO_CACHE, timeout_seconds=120)
def finish_pipeline_run(tracking: Tracking, run_id: str, status: str) -> None:
    """Mark the parent run FINISHED or FAILED."""
    tracking.client().set_terminated(run_id, status=status)
