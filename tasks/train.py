"""Train task: a Lightning model and a scikit-learn baseline, tracked in MLflow, progress shown in Prefect."""

from __future__ import annotations

from typing import cast
from uuid import UUID

import mlflow
from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from aicml.data.gate import GateResult, load_validated
from aicml.models.features import Problem
from aicml.models.options import TrainerOptions
from aicml.models.training import ProgressHook, TrainingOutcome
from aicml.observability.metrics import TRAINING_JOBS
from aicml.registry.tracking import use_tracking
from tasks.context import data_dir, settings


def train(
    gate: GateResult,
    target: str,
    problem: Problem | None,
    options: TrainerOptions,
    seed: int,
    experiment: str,
    parent_run_id: str | None = None,
    progress: ProgressHook | None = None,
) -> TrainingOutcome:
    """The task's body as a plain function (used by the benchmark and tests)."""
    from aicml.models.trainers import LightningTabularTrainer, SklearnTrainer, Trainer
    from aicml.models.training import train_candidates

    trainers: list[Trainer] = [LightningTabularTrainer(options)]
    if options.baseline:
        trainers.append(SklearnTrainer())
    use_tracking(settings().tracking_uri, experiment)
    frame = load_validated(gate)
    try:
        with (
            mlflow.start_run(run_id=parent_run_id) if parent_run_id else mlflow.start_run(run_name="training")
        ):
            outcome = train_candidates(
                frame,
                target,
                problem,
                trainers,
                seed,
                data_dir("splits"),
                tags={"aicml.validated": gate.path},
                progress=progress,
            )
    except Exception:
        TRAINING_JOBS.labels(outcome="failure").inc()
        raise
    TRAINING_JOBS.labels(outcome="success").inc()
    return outcome


# Training is the expensive stage; a retry would repeat it from scratch, so none here
# (checkpoint resume belongs to the training flow).
@task(name="train", retries=0, cache_policy=NO_CACHE, persist_result=False, timeout_seconds=6 * 3600)
def train_models(
    gate: GateResult,
    target: str,
    problem: Problem | None,
    options: TrainerOptions,
    seed: int,
    experiment: str,
    parent_run_id: str | None = None,
) -> TrainingOutcome:
    """Fit the candidates on the validated rows; each is a nested MLflow run with metrics, plot and model."""
    logger = get_run_logger()
    total = options.max_epochs
    artifact_id = cast(
        UUID, create_progress_artifact(progress=0.0, description="Training the Lightning model and baseline")
    )

    def progress(name: str, epoch: int, epochs: int, metrics: dict[str, float]) -> None:
        if epoch < 0:
            logger.info("%s finished: %s", name, {k: round(v, 4) for k, v in metrics.items()})
            done = 100.0 if name != "lightning" or not options.baseline else 90.0
        else:
            logger.info(
                "%s epoch %d/%d %s", name, epoch, epochs, {k: round(v, 4) for k, v in metrics.items()}
            )
            done = 90.0 * epoch / max(total, 1)
        if artifact_id is not None:
            update_progress_artifact(artifact_id, progress=min(done, 100.0))

    outcome = train(gate, target, problem, options, seed, experiment, parent_run_id, progress)
    if artifact_id is not None:
        update_progress_artifact(artifact_id, progress=100.0)
    best = outcome.best
    logger.info(
        "Best model: %s with %s=%.4f (candidates: %s)",
        best.name,
        outcome.primary_metric,
        best.metrics[outcome.primary_metric],
        {c.name: round(c.metrics[outcome.primary_metric], 4) for c in outcome.candidates},
    )
    return outcome
