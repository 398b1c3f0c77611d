"""The training flow: one resumable training job (tabular or digits, Lightning, scikit-learn or Keras).

The pipeline's candidates, when its train stage runs on another work pool, are the `train-candidates`
flow (flows/candidates.py).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from prefect import flow
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from aicml.models.jobs import TrainingJobSpec, derive_job_id
from aicml.models.options import TrainerOptions
from aicml.names import ResourceName
from aicml.redaction import refuse_password
from aicml.stack.overrides import resolve_params
from aicml.usage.accounting import account_usage
from blocks.settings import AicSettings
from blocks.training import TrainingSettings
from tasks.context import data_dir, settings, tracking_of
from tasks.train import train_job


class TrainParams(BaseModel):
    """Parameters of `train-flow`; Prefect builds the deployment form from these."""

    # A refused value may hold a secret: errors name the field, never echo the input.
    model_config = ConfigDict(hide_input_in_errors=True)

    family: Literal["tabular", "digits"] = Field(
        default="digits",
        description="`tabular`: a table with a label column (`source`, `target`); `digits`: scikit-learn's 8x8 digit images.",
    )
    framework: Literal["lightning", "sklearn", "keras"] = Field(
        default="lightning",
        description="Trainer: Lightning, a scikit-learn estimator, or Keras (extra `tensorflow`).",
    )
    source: Annotated[str | None, AfterValidator(refuse_password)] = Field(
        default=None,
        description="Tabular data: path, glob or URL of CSV/Parquet/JSON-lines files, or SQL URL#table.",
    )
    target: str | None = Field(default=None, description="Tabular data: the label column.")
    problem: Literal["classification", "regression"] | None = Field(
        default=None, description="Tabular data: kind of problem; inferred from the label column when empty."
    )
    trainer: TrainerOptions = Field(default_factory=TrainerOptions, description="Training options.")
    seed: int = Field(default=42, description="Seed of the split and the model.")
    job_id: ResourceName | None = Field(
        default=None,
        description="Names the job's checkpoints; derived from the other parameters when empty, so a rerun resumes.",
    )
    checkpoint_dir: str | None = Field(
        default=None,
        description="Persistent checkpoint directory (a PVC mount on Kubernetes); AIC_TRAINING_CHECKPOINT_DIR or <AIC_HOME>/checkpoints when empty.",
    )
    experiment: str | None = Field(default=None, description="MLflow experiment; `aic-ml` by default.")
    isolate: bool = Field(
        default=True,
        description="Train in a child process, so a killed training process fails only the task, whose retry resumes.",
    )
    system_metrics: bool = Field(default=True, description="Log MLflow system metrics (CPU, memory, GPU).")


class TrainResult(BaseModel):
    """What `train-flow` produced: the job's MLflow run and model."""

    job_id: str
    mlflow_run_id: str
    model_uri: str
    metrics: dict[str, float] = Field(default_factory=dict)
    epochs: int
    resumed_from_epoch: int | None = None
    best_checkpoint_artifact: str | None = None


def job_spec(params: TrainParams, s: AicSettings | None = None) -> TrainingJobSpec:
    """The TrainingJobSpec of ``params`` (job id derived from what defines the job) under settings ``s``
    (read here when None)."""
    s, ts = s or settings(), TrainingSettings()
    job_id = params.job_id or derive_job_id(
        f"{params.family}-{params.framework}",
        source=params.source,
        target=params.target,
        problem=params.problem,
        trainer=params.trainer.model_dump(exclude={"progress_bar"}),
        seed=params.seed,
    )
    root = params.checkpoint_dir or str(ts.checkpoint_dir or (s.root / "checkpoints"))
    return TrainingJobSpec(
        job_id=job_id,
        family=params.family,
        framework=params.framework,
        source=params.source,
        target=params.target,
        problem=params.problem,
        options=params.trainer,
        seed=params.seed,
        checkpoint_root=root,
        tracking_uri=s.tracking_uri,
        experiment=params.experiment or s.experiment,
        system_metrics=params.system_metrics,
        system_metrics_interval=ts.system_metrics_interval,
    )


@flow(name="train-flow", log_prints=False, persist_result=True)
def train_flow(params: TrainParams, overrides: dict[str, Any] | None = None) -> TrainResult:
    """Train one model as a resumable job tracked in one MLflow run.

    Args:
        params: The training job's parameters (a deployment fills them from its preset).
        overrides: Fields of `params` to change for this run, by dotted path, e.g.
            {"trainer.max_epochs": 3} or {"framework": "sklearn"}; every other field keeps its value.
            The result is validated as a whole: a key that names no field, or a value of the wrong
            type, fails the run with an error naming it.
    """
    params = resolve_params(params, overrides, TrainParams)
    s = settings()
    # What the job used (its training process included) goes on its MLflow run and into `aicml usage`.
    with account_usage(
        "train-flow", team=s.team, store_url=s.usage_store_url(), tracking=tracking_of(s)
    ) as usage:
        result = train_job(
            spec=job_spec(params, s),
            isolate=params.isolate,
            workdir=str(data_dir("training-jobs", root=s.root)),
        )
        usage.attach(mlflow_run_id=result.run_id)
    return TrainResult(
        job_id=result.job_id,
        mlflow_run_id=result.run_id,
        model_uri=result.model_uri,
        metrics=result.metrics,
        epochs=result.epochs,
        resumed_from_epoch=result.resumed_from_epoch,
        best_checkpoint_artifact=result.best_checkpoint_artifact,
    )
