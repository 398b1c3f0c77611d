"""Tuning tasks: open the study and its parent MLflow run, run trial workers, report, train the best.

Each of the ``parallel`` workers is one long-lived Prefect task on the flow's task runner (a Dask
``LocalCluster`` by default) that claims and evaluates trials from the shared study until the
budget is spent (``aicml.tuning.engine.run_worker``), so n trials run at once. MLflow is reached
through the ``Tracking`` the flow hands in (in ``StudyRef``); no task reads the settings.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import (
    create_link_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from pydantic import SecretStr

from aicml.lineage.datasets import log_training_inputs
from aicml.models.training import TrainingOutcome
from aicml.names import slug
from aicml.registry.tracking import Tracking
from aicml.tuning.jobs import TrackingRef, WorkerJob, WorkerReport
from aicml.usage.tasks import metered
from tasks.context import settings
from tasks.validate import artifact_page_url


@dataclass(frozen=True)
class StudyRef:
    """How every process finds the study and its MLflow parent run.

    The storage URL may hold a password: a ``SecretStr``, so the subflow parameters Prefect records (and
    shows in its UI) carry ``**********`` while the processes that open the study get the value.
    ``tracking`` None (the benchmark) records the trials in the study only.
    """

    study_name: str
    storage_url: SecretStr
    direction: str
    experiment_id: str
    parent_run_id: str
    tracking: Tracking | None
    resumed: bool
    finished_before: int

    def trial_tracking(self) -> TrackingRef | None:
        """Where the workers log each trial's nested run (None: not logged)."""
        if self.tracking is None:
            return None
        return TrackingRef(self.tracking.uri, self.experiment_id, self.parent_run_id)

    def client(self) -> Any:
        """A client of the study's MLflow server."""
        if self.tracking is None:
            raise ValueError(f"Study {self.study_name!r} is not tracked in MLflow")
        return self.tracking.client()


@dataclass(frozen=True)
class StudyReport:
    """The outcome of a study: its best trial, its counts and where the plots went."""

    study_name: str
    best_number: int
    best_value: float
    best_params: dict[str, Any]
    best_epochs: int
    counts: dict[str, int]
    leaderboard: list[dict[str, Any]]
    plots: list[str]


def default_storage_url(home: Path | None = None) -> str:
    """Model tuning's own database on Kubernetes (tuning_db, shared by every trial worker of every run),
    else SQLite under the stack's home (``home``, read from the settings when not given)."""
    from aicml.tuning.study import local_storage_url
    from blocks.settings import service_database_url

    return service_database_url("TUNING") or local_storage_url((home or settings().root) / "tuning")


@metered
@task(name="open-study", retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE, persist_result=False)
def open_study_task(
    study_name: str,
    storage_url: str,
    direction: str,
    tracking: Tracking,
    tags: dict[str, str],
    params_to_log: dict[str, Any],
    budget: int | None = None,
) -> StudyRef:
    """Create or load the study, and create (or, on resume, reopen) its parent MLflow run.

    Also creates the study's progress artifact in Prefect (trials finished out of ``budget``, by default
    the ``n_trials`` of ``params_to_log``), which the trial workers update as trials finish.
    """
    from aicml.tuning.engine import FINISHED
    from aicml.tuning.reporting import STUDY_RUN_ATTR
    from aicml.tuning.study import open_storage, open_study

    storage = open_storage(storage_url)
    study = open_study(study_name, storage, direction)
    experiment_id = tracking.experiment_id()
    client = tracking.client()
    parent = study.user_attrs.get(STUDY_RUN_ATTR)
    resumed = parent is not None
    if parent is None:
        run = client.create_run(experiment_id, run_name=f"study-{study_name}", tags=tags)
        parent = run.info.run_id
        study.set_user_attr(STUDY_RUN_ATTR, parent)
        client.log_batch(parent, params=[_param(k, v) for k, v in params_to_log.items()])
    else:
        client.update_run(parent, status="RUNNING")
    finished = len(study.get_trials(deepcopy=False, states=FINISHED))
    total = budget or params_to_log.get("n_trials")
    create_progress_artifact(
        progress=progress_percent(finished, int(total)) if total else 0.0,
        key=progress_key(study_name),
        description=f"Study {study_name}: {finished} of {total or '?'} trials finished",
    )
    get_run_logger().info(
        "Study %s %s (%d trials finished before); MLflow parent run %s",
        study_name,
        "resumed" if resumed else "created",
        finished,
        parent,
    )
    return StudyRef(
        study_name=study_name,
        storage_url=SecretStr(storage_url),
        direction=direction,
        experiment_id=experiment_id,
        parent_run_id=str(parent),
        tracking=tracking,
        resumed=resumed,
        finished_before=finished,
    )


def progress_key(study_name: str) -> str:
    """The key of a study's progress artifact in Prefect."""
    return "tuning-progress-" + slug(study_name, limit=80)


def progress_percent(finished: int, budget: int) -> float:
    return round(min(100.0, 100.0 * finished / budget), 1) if budget > 0 else 0.0


def latest_artifact_id(key: str) -> Any:
    """The id of the newest artifact under ``key`` (this run's progress artifact), or None."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactCollectionFilter, ArtifactCollectionFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_latest_artifacts(
            artifact_filter=ArtifactCollectionFilter(key=ArtifactCollectionFilterKey(any_=[key])), limit=1
        )
    return found[0].latest_id if found else None


def study_progress_reporter(study_name: str) -> Callable[[int, int, float | None], None] | None:
    """A hook for ``run_worker`` that moves the study's progress artifact (None when it has none).

    It runs on the worker's logging thread: the Prefect context of this task (its API settings) is
    carried there.
    """
    artifact_id = latest_artifact_id(progress_key(study_name))
    if artifact_id is None:
        return None
    context = contextvars.copy_context()

    def report(finished: int, budget: int, best: float | None) -> None:
        best_text = "" if best is None else f"; best value {best:.6g}"
        context.copy().run(
            update_progress_artifact,
            artifact_id=artifact_id,
            progress=progress_percent(finished, budget),
            description=f"Study {study_name}: {finished} of {budget} trials finished{best_text}",
        )

    return report


def _param(key: str, value: Any) -> Any:
    from mlflow.entities import Param

    return Param(key, str(value)[:6000])


# A worker is never retried by Prefect: the study re-queues trials whose worker died, and the others
# go on claiming them.
@metered
@task(name="trial-worker", retries=0, cache_policy=NO_CACHE, persist_result=False)
def search_worker_task(job: WorkerJob) -> WorkerReport:
    """One long-lived worker (a Dask worker by default): claims and evaluates trials until the budget is spent.

    One task per worker rather than per trial: a trial pays no task submission, scheduling or
    study loading, only its claim and its result (a few storage round trips).
    """
    from aicml.tuning.engine import run_worker

    logger = get_run_logger()
    try:
        reporter = study_progress_reporter(job.trial.study_name)
    except Exception as exc:  # progress is for people watching: never a reason to lose the trials
        logger.warning("No progress artifact for study %s: %s", job.trial.study_name, exc)
        reporter = None
    report = run_worker(job, on_progress=reporter)
    for result in report.results:
        logger.info(
            "Trial %d %s value=%s epochs=%d in %.2fs%s",
            result.number,
            result.state,
            None if result.value is None else round(result.value, 5),
            result.epochs,
            result.seconds,
            f" ({result.error})" if result.error else "",
        )
    logger.info(
        "Worker %d (%s) ran %d trials in %.1fs (%.1f CPU s), stopped: %s; seconds by phase %s",
        report.index, report.worker, len(report.results), report.seconds, report.cpu_seconds,
        report.stop_reason, {k: round(v, 3) for k, v in report.timings.items()},
    )  # fmt: skip
    return report


def _link_study_page(ref: StudyRef, page: str) -> None:
    """A Prefect link artifact to the study's interactive plots in the MLflow UI."""
    try:
        link = artifact_page_url(ref.tracking, ref.experiment_id, ref.parent_run_id, page)
    except ValueError as exc:
        get_run_logger().warning("No link to the plots of study %s: %s", ref.study_name, exc)
        return
    create_link_artifact(
        link=link,
        link_text=f"Interactive plots of study {ref.study_name} (MLflow)",
        key="tuning-plots-" + slug(ref.study_name, limit=80),
        description=f"Optuna's plots of study {ref.study_name}, an artifact of MLflow run {ref.parent_run_id}",
    )


@metered
@task(name="report-study", retries=1, cache_policy=NO_CACHE, persist_result=False)
def report_study_task(ref: StudyRef, stop_reason: str) -> StudyReport:
    """Plots to the parent MLflow run and a leaderboard Prefect table artifact; the best trial."""
    from aicml.tuning.errors import TuningError
    from aicml.tuning.reporting import leaderboard, log_study_html, log_study_plots, study_counts
    from aicml.tuning.study import open_storage, open_study

    study = open_study(ref.study_name, open_storage(ref.storage_url.get_secret_value()), ref.direction)
    counts = study_counts(study)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    if not complete:
        raise TuningError(
            f"Study {ref.study_name!r} has no completed trial ({counts}); widen the space or the budget."
        )
    best = study.best_trial
    board = leaderboard(study)
    client = ref.client()
    plots = log_study_plots(study, client, ref.parent_run_id)
    page = log_study_html(study, client, ref.parent_run_id)
    if page is not None:
        plots.append(page)
        _link_study_page(ref, page)
    client.log_batch(
        ref.parent_run_id,
        params=[_param(f"best_{k}", v) for k, v in best.params.items() if not ref.resumed],
    )
    client.log_metric(ref.parent_run_id, "best_value", float(best.value or 0.0))
    for state, count in counts.items():
        client.log_metric(ref.parent_run_id, f"trials_{state.lower()}", count)
    client.set_tag(ref.parent_run_id, "aicml.stop_reason", stop_reason)
    client.set_tag(ref.parent_run_id, "aicml.best_trial", str(best.number))
    create_table_artifact(
        table=board,
        key="tuning-" + slug(ref.study_name, limit=93),
        description=f"Leaderboard of study {ref.study_name}: best trial {best.number} = {best.value:.5f}",
    )
    finished = counts.get("COMPLETE", 0) + counts.get("PRUNED", 0)
    try:
        artifact_id = latest_artifact_id(progress_key(ref.study_name))
        if artifact_id is not None:
            update_progress_artifact(
                artifact_id=artifact_id,
                progress=100.0,
                description=f"Study {ref.study_name}: done, {finished} trials finished ({stop_reason}); "
                f"best trial {best.number} = {best.value:.6g}",
            )
    except Exception as exc:
        get_run_logger().warning("Progress artifact of study %s not closed: %s", ref.study_name, exc)
    get_run_logger().info("Study %s: %s; best trial %d = %.5f %s", ref.study_name, counts, best.number,
                          best.value or 0.0, best.params)  # fmt: skip
    return StudyReport(
        study_name=ref.study_name,
        best_number=best.number,
        best_value=float(best.value or 0.0),
        best_params=dict(best.params),
        best_epochs=len(best.intermediate_values),
        counts=counts,
        leaderboard=board,
        plots=plots,
    )


@metered
@task(name="finish-study-run", cache_policy=NO_CACHE, persist_result=False)
def finish_study_run_task(ref: StudyRef, status: str) -> None:
    ref.client().set_terminated(ref.parent_run_id, status=status)


@metered
@task(name="train-best", retries=0, cache_policy=NO_CACHE, persist_result=False, timeout_seconds=6 * 3600)
def train_best_task(
    ref: StudyRef,
    report: StudyReport,
    validated_path: str,
    target: str,
    problem: str | None,
    model: str,
    base_options: dict[str, Any],
    seed: int,
    splits_dir: str,
) -> TrainingOutcome:
    """Train the final model with the best parameters as a nested run of the study's parent run.

    The test split is kept under ``splits_dir``.
    """
    import pandas as pd

    from aicml.models.features import infer_problem
    from aicml.models.options import TrainerOptions
    from aicml.models.trainers import LightningTabularTrainer, SklearnTrainer, Trainer
    from aicml.models.training import train_candidates
    from aicml.tuning.objectives import lightning_options, sklearn_estimator

    frame = pd.read_parquet(validated_path)
    resolved = problem or infer_problem(frame[target])
    epochs = max(report.best_epochs, 1)
    trainer: Trainer
    if model == "lightning":
        trainer = LightningTabularTrainer(
            TrainerOptions(**lightning_options(base_options, report.best_params, epochs))
        )
    else:
        trainer = SklearnTrainer(
            estimator=sklearn_estimator(model, resolved, report.best_params, seed, epochs)
        )
    if ref.tracking is None:
        raise ValueError(f"Study {ref.study_name!r} is not tracked in MLflow: no run to train under")
    # The same candidates code as the pipeline's, nested under the study's parent run on its server.
    outcome = train_candidates(
        frame,
        target,
        resolved,  # type: ignore[arg-type]
        [trainer],
        seed,
        Path(splits_dir),
        tags={"aicml.study": ref.study_name, "aicml.best_trial": str(report.best_number)},
        tracking=ref.tracking,
        parent_run_id=ref.parent_run_id,
    )
    log_training_inputs(ref.tracking, [ref.parent_run_id, outcome.best.run_id], validated_path)
    get_run_logger().info(
        "Final %s model: test %s=%.4f",
        model,
        outcome.primary_metric,
        outcome.best.metrics[outcome.primary_metric],
    )
    return outcome
