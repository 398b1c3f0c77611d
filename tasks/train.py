"""Train tasks, one per kind of job: the pipeline's candidates (Lightning + scikit-learn baseline; in this
process, or as a `train-candidates` run on another work pool such as `k8s-gpu`) and one resumable training
job in its own process. Training from tuned options is the candidates' job with the tuned options.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast
from uuid import UUID

import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from aicml.data.gate import GateResult, load_validated
from aicml.lineage.datasets import log_source_input, log_training_inputs
from aicml.lineage.events import emits_lineage
from aicml.models.contract import CandidatesJob
from aicml.models.features import Problem
from aicml.models.jobs import TrainingInterrupted, TrainingJobResult, TrainingJobSpec
from aicml.models.options import TrainerOptions
from aicml.models.training import ProgressHook, TrainingOutcome
from aicml.observability.metrics import TRAINING_JOBS
from aicml.registry.tracking import Tracking
from aicml.retry import reporting_unreachable
from aicml.usage.tasks import metered

# Progress artifact updates at most this often: each is an API call, and work for the Prefect server
# that shares the machine with the training (per epoch, a short run made several a second).
PROGRESS_EVERY_S = 1.0


class Throttle:
    """True at most once every ``every`` seconds, and always for the final update."""

    def __init__(self, every: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.every, self.clock = every, clock
        self.last: float | None = None

    def ready(self, final: bool = False) -> bool:
        now = self.clock()
        if final or self.last is None or now - self.last >= self.every:
            self.last = now
            return True
        return False


def train_frame(
    frame: pd.DataFrame,
    target: str,
    problem: Problem | None,
    options: TrainerOptions,
    seed: int,
    experiment: str,
    parent_run_id: str | None = None,
    progress: ProgressHook | None = None,
    validated_path: str = "",
    *,
    tracking: Tracking,
    splits_dir: str,
) -> TrainingOutcome:
    """Train the pipeline's candidates on a validated frame: the one entry behind the `train` task, the
    `train-candidates` flow and the benchmark's plain path.

    Logs to ``tracking``'s server in ``experiment``; the held-out test rows go under ``splits_dir``.
    """
    from aicml.models.trainers import LightningTabularTrainer, SklearnTrainer, Trainer
    from aicml.models.training import train_candidates

    trainers: list[Trainer] = [LightningTabularTrainer(options)]
    if options.baseline:
        trainers.append(SklearnTrainer())
    tracking = tracking.in_experiment(experiment)
    splits = Path(splits_dir)
    try:
        # MLflow's client rides out a short outage (aicml/retry.py); a longer one ends the run with an
        # error that names the server and says to resume.
        with reporting_unreachable("MLflow", tracking.uri, "logging the training run"):
            outcome = train_candidates(
                frame, target, problem, trainers, seed, splits, tracking=tracking, parent_run_id=parent_run_id,
                tags={"aicml.validated": validated_path}, progress=progress,
            )  # fmt: skip
    except Exception:
        TRAINING_JOBS.labels(outcome="failure").inc()
        raise
    TRAINING_JOBS.labels(outcome="success").inc()
    log_training_inputs(tracking, [c.run_id for c in outcome.candidates], validated_path)  # MLflow datasets
    return outcome


# Training is the expensive stage; a retry would repeat it from scratch, so none here
# (checkpoint resume belongs to the training flow).
@metered
@task(name="train", retries=0, cache_policy=NO_CACHE, persist_result=False, timeout_seconds=6 * 3600)
@emits_lineage("train")
def train_models(
    gate: GateResult,
    target: str,
    problem: Problem | None,
    options: TrainerOptions,
    seed: int,
    experiment: str,
    parent_run_id: str | None = None,
    *,
    tracking: Tracking,
    splits_dir: str,
) -> TrainingOutcome:
    """Fit the candidates on the validated rows; each is a nested MLflow run with metrics, plot and model.

    Logged to ``tracking``'s server in ``experiment``; the held-out test rows are written under ``splits_dir``.
    """
    logger = get_run_logger()
    total = options.max_epochs
    artifact_id = cast(
        UUID, create_progress_artifact(progress=0.0, description="Training the Lightning model and baseline")
    )

    throttle = Throttle(PROGRESS_EVERY_S)

    def progress(name: str, epoch: int, epochs: int, metrics: dict[str, float]) -> None:
        if epoch < 0:
            logger.info("%s finished: %s", name, {k: round(v, 4) for k, v in metrics.items()})
            done = 100.0 if name != "lightning" or not options.baseline else 90.0
        else:
            logger.info(
                "%s epoch %d/%d %s", name, epoch, epochs, {k: round(v, 4) for k, v in metrics.items()}
            )
            done = 90.0 * epoch / max(total, 1)
        if artifact_id is not None and throttle.ready(final=done >= 100.0):
            update_progress_artifact(artifact_id, progress=min(done, 100.0))

    tracking = tracking.in_experiment(experiment)
    outcome = train_frame(
        load_validated(gate), target, problem, options, seed, experiment, parent_run_id, progress, gate.path,
        tracking=tracking, splits_dir=splits_dir,
    )  # fmt: skip
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
    create_markdown_artifact(markdown=training_summary(outcome, tracking),
                             description=f"Training: best {best.name}")  # fmt: skip
    return outcome


def training_summary(outcome: TrainingOutcome, tracking: Tracking) -> str:
    """A markdown table of the candidates with links to their MLflow runs, for the Prefect UI."""
    metric = outcome.primary_metric
    experiment_id = tracking.client().get_experiment_by_name(tracking.experiment)
    base = f"{tracking.uri}/#/experiments/{experiment_id.experiment_id if experiment_id else '0'}/runs"
    rows = "\n".join(
        f"| {'**' + c.name + '**' if c is outcome.best else c.name} | {c.metrics[metric]:.4f} | "
        f"{c.seconds:.1f}s | [{c.run_id[:8]}]({base}/{c.run_id}) |"
        for c in outcome.candidates
    )
    return (
        f"## Training summary ({outcome.problem})\n\n| candidate | test {metric} | time | MLflow run |\n"
        f"|---|---|---|---|\n{rows}\n\nThe best candidate (bold) goes on to registration. "
        f"Features: {len(outcome.features.get('numeric', []))} numeric, "
        f"{len(outcome.features.get('categorical', []))} categorical, {len(outcome.features.get('dates', []))} "
        f"date-like, {len(outcome.features.get('text', []))} text; dropped {list(outcome.features.get('dropped', {}))}.\n"
    )


@metered
@task(
    name="train-validated", retries=0, cache_policy=NO_CACHE, persist_result=False, timeout_seconds=6 * 3600
)
@emits_lineage("train")
def train_validated(job: CandidatesJob, *, tracking: Tracking, splits_dir: str) -> TrainingOutcome:
    """The pipeline's candidates on the validated rows at ``job.source`` (the body of `train-candidates`)."""
    from aicml.data.sources import parse_source, read_source
    from tasks.ingest import source_roots

    # Confined to the data roots in deployment runs, like every file source of a parameter.
    frame = read_source(parse_source(job.source, roots=source_roots()))
    tracking = tracking.in_experiment(job.experiment)
    outcome = train_frame(
        frame, job.target, job.problem, job.trainer, job.seed, tracking.experiment, job.parent_run_id,
        validated_path=job.source, tracking=tracking, splits_dir=splits_dir,
    )  # fmt: skip
    get_run_logger().info("Candidates: %s", {c.name: c.metrics for c in outcome.candidates})
    return outcome


def retry_if_interrupted(task: Any, task_run: Any, state: Any) -> bool:
    """Retry a training job only when its process was killed: the retry resumes from the last checkpoint.

    Bad data or settings (other AicErrors) do not heal by retrying, so those are not retried.
    """
    try:
        state.result()
    except TrainingInterrupted:
        return True
    except Exception:
        return False
    return False


def run_job(spec: TrainingJobSpec, isolate: bool, workdir: Path) -> TrainingJobResult:
    """The job task's body: in a child process (``isolate``) or in this one; counts the job's outcome."""
    from aicml.models.jobs import run_training_job, run_training_process

    try:
        if isolate:
            result = run_training_process(spec, workdir)
        else:
            in_process = run_training_job(spec)
            if in_process is None:  # only a DDP rank > 0 gets None, and those never run this task
                raise TrainingInterrupted(f"Job {spec.job_id!r} ran on a rank other than 0.")
            result = in_process
    except TrainingInterrupted:
        TRAINING_JOBS.labels(outcome="interrupted").inc()
        raise
    except Exception:
        TRAINING_JOBS.labels(outcome="failure").inc()
        raise
    TRAINING_JOBS.labels(outcome="success").inc()
    return result


# The job id names the checkpoint directory, so a retry resumes where the killed process stopped.
@metered
@task(
    name="train-job",
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=retry_if_interrupted,
    cache_policy=NO_CACHE,
    persist_result=False,
    timeout_seconds=24 * 3600,
)
def train_job(spec: TrainingJobSpec, isolate: bool = True, *, workdir: str) -> TrainingJobResult:
    """Run one training job (checkpoint per epoch, one MLflow run); a retry resumes from the last epoch.

    The job's spec, result and log files go under ``workdir``.
    """
    logger = get_run_logger()
    logger.info(
        "Training job %s: %s on %s, checkpoints under %s",
        spec.job_id,
        spec.framework,
        spec.family,
        spec.checkpoint_root,
    )
    result = run_job(spec, isolate, Path(workdir))
    log_source_input(spec.tracking, result.run_id, spec.source)  # MLflow dataset (digits: none)
    logger.info(
        "Job %s finished after %d epochs (resumed from %s): %s, MLflow run %s",
        result.job_id,
        result.epochs,
        result.resumed_from_epoch,
        {k: round(v, 4) for k, v in result.metrics.items()},
        result.run_id,
    )
    return result


@metered
@task(name="train-on-deployment", retries=0, cache_policy=NO_CACHE, persist_result=False)
def train_on_deployment(
    gate: GateResult,
    target: str,
    problem: Problem | None,
    options: TrainerOptions,
    seed: int,
    experiment: str,
    parent_run_id: str | None,
    deployment: str,
    timeout_s: float = 6 * 3600,
) -> TrainingOutcome:
    """Train the pipeline's candidates as a run of ``deployment`` (a `train-candidates` deployment, e.g.
    `train-candidates/k8s-gpu`) and wait for its result.

    The validated rows must be readable there (on Kubernetes both pools mount the training-data volume
    at /mnt/data; point AIC_HOME there). The candidates come back as that flow run's return value, which
    Prefect persists where both sides read it (PREFECT_LOCAL_STORAGE_PATH, pipeline-execution-pvc).
    """
    from prefect.deployments import run_deployment
    from pydantic import TypeAdapter, ValidationError

    from aicml.errors import TrainingError

    job = CandidatesJob(
        source=gate.path,
        target=target,
        problem=problem,
        trainer=options,
        seed=seed,
        experiment=experiment,
        parent_run_id=parent_run_id,
    )
    get_run_logger().info("Training on deployment %s", deployment)
    flow_run = run_deployment(
        deployment, parameters={"params": job.model_dump(mode="json")}, timeout=timeout_s, as_subflow=True
    )
    state = getattr(flow_run, "state", None)
    if state is None or not state.is_completed():
        raise TrainingError(
            f"Training deployment {deployment!r} ended as {getattr(state, 'name', 'unknown')}: "
            "see that flow run's logs in the Prefect UI."
        )
    result = state.result()
    try:
        return TypeAdapter(TrainingOutcome).validate_python(result)
    except ValidationError as exc:
        raise TrainingError(
            f"Deployment {deployment!r} returned a {type(result).__name__}, not the candidates: the pipeline's "
            "`training_deployment` must be a deployment of the `train-candidates` flow."
        ) from exc
