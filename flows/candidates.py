"""The pipeline's train stage as a flow of its own: the candidates (Lightning + baseline) on validated rows,
run as a deployment on other infrastructure (`train-candidates/k8s-gpu`, on GPU nodes) when the pipeline's
`training_deployment` names one. Its parameters and its return value are the job contract of
`aicml.models.contract`.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from aicml.models.contract import CandidatesJob
from aicml.models.training import TrainingOutcome
from aicml.stack.overrides import resolve_params
from aicml.usage.accounting import account_usage
from tasks.context import data_dir, settings, tracking_of
from tasks.train import train_validated

__all__ = ["CandidatesJob", "train_candidates_flow"]


@flow(name="train-candidates", log_prints=False, persist_result=True)
def train_candidates_flow(params: CandidatesJob, overrides: dict[str, Any] | None = None) -> TrainingOutcome:
    """Train the candidates as nested MLflow runs of the pipeline's run; the outcome is this run's result.

    Args:
        params: The job: validated rows, label, options, the parent MLflow run.
        overrides: Fields of `params` to change for this run, by dotted path, e.g.
            {"trainer.max_epochs": 3} or {"source": "data/validated.parquet"}; every other field keeps its value.
            The result is validated as a whole: a key that names no field, or a value of the wrong
            type, fails the run with an error naming it.
    """
    params = resolve_params(params, overrides, CandidatesJob)
    s = settings()
    tracking = tracking_of(s, params.experiment)
    # On GPU nodes, this is where the GPU seconds of a pipeline's training are counted (`aicml usage`).
    with account_usage(
        "train-candidates", team=s.team, store_url=s.usage_store_url(), tracking=tracking
    ) as usage:
        outcome = train_validated(
            job=params, tracking=tracking, splits_dir=str(data_dir("splits", root=s.root))
        )
        # On the best candidate's run: the pipeline's own figures go on the parent run.
        usage.attach(mlflow_run_id=outcome.best.run_id)
    return outcome
