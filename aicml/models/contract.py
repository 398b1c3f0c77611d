"""The contract of the pipeline's train stage run as a deployment on other infrastructure (GPU nodes, say).

The pipeline sends a ``CandidatesJob`` as the parameters of a `train-candidates` flow run, and that run's
return value, persisted by Prefect, is the ``TrainingOutcome``; both sides import this module, so neither
builds nor reads the other's shape by hand.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from aicml.models.features import Problem
from aicml.models.options import TrainerOptions
from aicml.redaction import refuse_password


class CandidatesJob(BaseModel):
    """Train the pipeline's candidates (Lightning + baseline) on validated rows; parameters of `train-candidates`."""

    # A refused value may hold a secret: errors name the field, never echo the input.
    model_config = ConfigDict(hide_input_in_errors=True)

    source: Annotated[str, AfterValidator(refuse_password)] = Field(
        description="The validated rows: a Parquet file both the pipeline and the training run can read."
    )
    target: str = Field(description="The label column.")
    problem: Problem | None = Field(
        default=None, description="Kind of problem; inferred from the label column when empty."
    )
    trainer: TrainerOptions = Field(default_factory=TrainerOptions, description="Training options.")
    seed: int = Field(default=42, description="Seed of the split and the models.")
    experiment: str | None = Field(default=None, description="MLflow experiment; `aic-ml` by default.")
    parent_run_id: str | None = Field(
        default=None, description="The pipeline's MLflow run the candidates nest under."
    )
