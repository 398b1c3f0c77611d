"""The pipeline's train stage as a flow of its own: the candidates (Lightning + baseline) on validated rows,
run as a deployment on other infrastructure (`train-candidates/k8s-gpu`, on GPU nodes) when the pipeline's
`training_deployment` names one. Its parameters and its return value are the job contract of
`aicml.models.contract`.
"""

from __future__ import annotations

from prefect import flow

from aicml.models.contract import CandidatesJob
from aicml.models.training import TrainingOutcome
from tasks.context import data_dir, settings, tracking_of
from tasks.train import train_validated

__all__ = ["CandidatesJob", "train_candidates_flow"]


@flow(name="train-candidates", log_prints=False, persist_result=True)
def train_candidates_flow(params: CandidatesJob) -> TrainingOutcome:
    """Train the candidates as nested MLflow runs of the pipeline's run; the outcome is this run's result."""
    s = settings()
    return train_validated(
        job=params,
        tracking=tracking_of(s, params.experiment),
        splits_dir=str(data_dir("splits", root=s.root)),
    )
