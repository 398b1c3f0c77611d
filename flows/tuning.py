"""The tuning flow: search hyperparameters with parallel, pruned, resumable trials, then train the best.

ingest -> validate -> open study (+ MLflow parent run) -> trials on a Dask LocalCluster (or the
cluster at ``dask_address``) -> plots + leaderboard -> final model -> `challenger` -> promotion.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any, Literal

from prefect import flow, get_run_logger
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from aicml.models.options import TrainerOptions
from aicml.names import ResourceName
from aicml.redaction import redact, refuse_password
from aicml.registry.tracking import Tracking
from aicml.stack.overrides import resolve_params
from aicml.tuning.options import SearchOptions
from aicml.tuning.search import SearchOutcome, plan_workers, run_workers, task_runner_for, warm_workers
from aicml.usage.accounting import account_usage
from aicml.usage.tasks import gather_remote
from blocks.settings import AicSettings
from tasks.context import data_dir, settings, tracking_of
from tasks.ingest import ingest_source
from tasks.registry import promote_model, register_best
from tasks.tune import (
    StudyRef,
    StudyReport,
    default_storage_url,
    finish_study_run_task,
    open_study_task,
    report_study_task,
    search_worker_task,
    train_best_task,
)
from tasks.validate import validate_snapshot

__all__ = [
    "SearchOptions",
    "SearchOutcome",
    "TuneParams",
    "TuneResult",
    "run_search",
    "search_flow",
    "storage_url_of",
    "tune_before_training",
    "tune_flow",
]


def storage_url_of(options: SearchOptions, home: Path | None = None) -> str:
    """The storage URL: from the Secret block, the parameter, or the local SQLite default under ``home``."""
    if options.storage_secret:
        from prefect.blocks.system import Secret

        secret: Any = Secret.load(options.storage_secret)
        return str(secret.get())
    return options.storage_url or default_storage_url(home)


class TuneParams(SearchOptions):
    """Parameters of `tune`; Prefect builds the deployment form from these."""

    # A refused value may hold a secret: errors name the field, never echo the input.
    model_config = ConfigDict(hide_input_in_errors=True)

    source: Annotated[str, AfterValidator(refuse_password)] = Field(
        description="Path, glob or URL of CSV / Parquet / JSON-lines files, or a SQLAlchemy URL with '#table'."
    )
    table: str | None = Field(
        default=None, description="Table name for a SQL source, if not given after '#'."
    )
    target: str = Field(description="The label column.")
    problem: Literal["classification", "regression"] | None = Field(
        default=None, description="Kind of problem; inferred from the label column when empty."
    )
    dataset: str | None = Field(default=None, description="Dataset whose quality suite applies.")
    model_name: ResourceName | None = Field(
        default=None,
        description="Registry name for the final model; empty tunes without training a final model.",
    )
    promotion_margin: float = Field(
        default=0.001, ge=0, description="How much the challenger must beat the champion's test metric by."
    )
    experiment: str | None = Field(default=None, description="MLflow experiment; `aic-ml` by default.")


class TuneResult(BaseModel):
    """What one tuning run did."""

    study_name: str
    mlflow_run_id: str
    resumed: bool
    stop_reason: str
    trials_run_here: int
    counts: dict[str, int]
    best_value: float
    best_params: dict[str, Any]
    leaderboard: list[dict[str, Any]]
    plots: list[str]
    model_name: str | None = None
    version: str | None = None
    promoted: bool | None = None
    test_metric: float | None = None
    seconds: float


@flow(name="tuning-search", log_prints=False, persist_result=False)
def search_flow(options: SearchOptions, ref: StudyRef, data_ref: Any) -> SearchOutcome:
    """The trials of one study on the task runner chosen by the caller (see `task_runner_for`)."""
    storage_url = ref.storage_url.get_secret_value()
    jobs = plan_workers(
        options=options,
        study_name=ref.study_name,
        storage_url=storage_url,
        data=data_ref,
        tracking=ref.trial_tracking(),
    )
    outcome = run_workers(
        jobs=jobs,
        submit=lambda job: search_worker_task.submit(job=job),
        warm=lambda: warm_workers(
            objective=options.objective_name,
            data=data_ref,
            storage_url=storage_url,
            heartbeat_s=options.heartbeat_s,
        ),
        logger=get_run_logger(),
    )
    gather_remote()  # the trial workers' usage, measured on the Dask workers, to the tune flow's accounting
    return outcome


def run_search(options: SearchOptions, ref: StudyRef, data_ref: Any) -> SearchOutcome:
    """The search phase as a subflow on a Dask cluster sized to ``options.parallel``."""
    outcome: SearchOutcome = search_flow.with_options(task_runner=task_runner_for(options))(
        options=options, ref=ref, data_ref=data_ref
    )
    return outcome


def tune_before_training(
    options: SearchOptions,
    validated_path: str,
    target: str,
    problem: str | None,
    experiment: str,
    study_name: str,
    trainer: TrainerOptions,
    tracking: Tracking | None = None,
    home: Path | None = None,
) -> TrainerOptions:
    """The pipeline's tune switch: search the Lightning model's options, return the best as TrainerOptions.

    Runs inside the calling flow (the pipeline): the study's parent MLflow run, the trials on Dask,
    the plots and the leaderboard, exactly as in `tune`; the final training stays the pipeline's.
    ``tracking`` is the pipeline's MLflow server and ``home`` the stack's home (the study storage's default);
    the pipeline passes both, a direct call without them reads the settings once here.
    """
    from aicml.tuning.errors import TuningError
    from aicml.tuning.objectives import DataRef, lightning_options

    if options.model != "lightning" or options.objective:
        raise TuningError(
            f"The pipeline's tune switch tunes the Lightning model's options; got model={options.model!r} "
            f"objective={options.objective!r}. Use the `tune` flow for other models."
        )
    if tracking is None or home is None:
        current = settings()
        tracking, home = tracking or tracking_of(current), home or current.root
    tracking = tracking.model_copy(update={"experiment": experiment})
    storage_url = storage_url_of(options, home)
    ref = open_study_task(
        study_name=study_name,
        storage_url=storage_url,
        direction=options.direction,
        tracking=tracking,
        tags={"aicml.study": study_name},
        params_to_log={"study": study_name, "storage": redact(storage_url), "sampler": options.sampler,
                       "pruner": options.pruning.pruner, "n_trials": options.budget.n_trials},
        budget=options.budget.n_trials,
    )  # fmt: skip
    status = "FAILED"
    try:
        tuned = options.model_copy(update={"trainer": trainer})
        searched = run_search(tuned, ref, DataRef(validated_path, target, problem, options.seed))
        report = report_study_task(ref=ref, stop_reason=searched.stop_reason)
        status = "FINISHED"
    finally:
        finish_study_run_task(ref=ref, status=status)
    best = lightning_options(trainer.model_dump(), report.best_params, max(report.best_epochs, 1))
    return TrainerOptions(**{**best, "baseline": trainer.baseline})


@flow(name="tune", log_prints=False, persist_result=True)
def tune_flow(params: TuneParams, overrides: dict[str, Any] | None = None) -> TuneResult:
    """Ingest -> validate -> parallel pruned trials -> plots + leaderboard -> best model -> promotion.

    Args:
        params: The study's parameters (a deployment fills them from its preset).
        overrides: Fields of `params` to change for this run, by dotted path, e.g.
            {"budget.n_trials": 4} or {"trainer.batch_size": 256}; every other field keeps its value.
            The result is validated as a whole: a key that names no field, or a value of the wrong
            type, fails the run with an error naming it.
    """
    params = resolve_params(params, overrides, TuneParams)
    s = settings()  # read once for this run; tasks get values
    tracking = tracking_of(s, params.experiment)
    # The study's trials (Dask workers included) and final training, on the study's MLflow run and in
    # `aicml usage`.
    with account_usage(
        "tune", team=s.team, store_url=s.usage_store_url(), tracking=tracking, model=params.model_name or ""
    ) as usage:
        result = _tune(params, s, tracking)
        usage.attach(mlflow_run_id=result.mlflow_run_id)
    return result


def _tune(params: TuneParams, s: AicSettings, tracking: Tracking) -> TuneResult:
    """The tune flow's stages, under the flow's usage accounting."""
    from aicml.tuning.objectives import DataRef

    logger = get_run_logger()
    started = time.perf_counter()
    dataset = params.dataset or params.model_name or "tuning"
    study_name = (
        params.study_name
        or f"{params.model_name or dataset}-{'custom' if params.objective else params.model}"
    )
    storage_url = storage_url_of(params, s.root)
    snapshot = ingest_source(
        source=params.source, table=params.table, dataset=dataset, snapshots_dir=data_dir("snapshots", s.root)
    )
    gate = validate_snapshot(
        snapshot=snapshot,
        target=params.target,
        dataset=dataset,
        suite_path=None,
        max_missing_label_fraction=0.1,
        parent_run_id=None,
        tracking=tracking,
        suites_dir=data_dir("suites", s.root),
        validated_dir=data_dir("validated", s.root),
    )
    logged = {
        "study": study_name,
        "storage": redact(storage_url),
        "model": params.objective_name,
        "sampler": params.sampler,
        "pruner": params.pruning.pruner,
        "n_trials": params.budget.n_trials,
        "timeout_s": params.budget.timeout_s,
        "patience": params.budget.patience,
        "max_epochs": params.max_epochs,
        "parallel": params.parallel,
        "seed": params.seed,
        "space": {k: v.model_dump() for k, v in params.resolved_space().items()},
        "target": params.target,
    }
    ref = open_study_task(
        study_name=study_name,
        storage_url=storage_url,
        direction=params.direction,
        tracking=tracking,
        tags={"aicml.study": study_name, "aicml.dataset": dataset},
        params_to_log=logged,
        budget=params.budget.n_trials,
    )
    status = "FAILED"
    try:
        data_ref = DataRef(gate.path, params.target, params.problem, params.seed)
        searched = run_search(params, ref, data_ref)
        stop_reason, ran = searched.stop_reason, searched.trials
        report: StudyReport = report_study_task(ref=ref, stop_reason=stop_reason)
        version = decision = outcome = None
        if params.model_name:
            outcome = train_best_task(
                ref=ref,
                report=report,
                validated_path=gate.path,
                target=params.target,
                problem=params.problem,
                model=params.model,
                base_options=params.trainer.model_dump(),
                seed=params.seed,
                splits_dir=str(data_dir("splits", s.root)),
            )
            version = register_best(
                outcome=outcome,
                model_name=params.model_name,
                fingerprint=snapshot.fingerprint,
                tracking=tracking,
            )
            decision = promote_model(
                version=version,
                outcome=outcome,
                target=params.target,
                margin=params.promotion_margin,
                tracking=tracking,
            )
        status = "FINISHED"
    finally:
        finish_study_run_task(ref=ref, status=status)
    logger.info("Study %s stopped (%s) after %d trials here: best %.5f %s", study_name, stop_reason, ran,
                report.best_value, report.best_params)  # fmt: skip
    return TuneResult(
        study_name=study_name,
        mlflow_run_id=ref.parent_run_id,
        resumed=ref.resumed,
        stop_reason=stop_reason,
        trials_run_here=ran,
        counts=report.counts,
        best_value=report.best_value,
        best_params=report.best_params,
        leaderboard=report.leaderboard,
        plots=report.plots,
        model_name=params.model_name,
        version=version.version if version else None,
        promoted=decision.promoted if decision else None,
        test_metric=outcome.best.metrics[outcome.primary_metric] if outcome else None,
        seconds=time.perf_counter() - started,
    )
