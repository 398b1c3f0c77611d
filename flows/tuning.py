"""The tuning flow: search hyperparameters with parallel, pruned, resumable trials, then train the best.

ingest -> validate -> open study (+ MLflow parent run) -> trials on a Dask LocalCluster (or the
cluster at ``dask_address``) -> plots + leaderboard -> final model -> `challenger` -> promotion.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from prefect import flow, get_run_logger
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from aicml.models.options import TrainerOptions
from aicml.redaction import refuse_password
from aicml.tuning.space import Budget, ModelKind, PruningOptions, SamplerName, SearchSpace, default_space
from tasks.context import settings
from tasks.ingest import ingest_source
from tasks.registry import promote_model, register_best
from tasks.tune import (
    StudyRef,
    StudyReport,
    default_storage_url,
    finish_study_run_task,
    open_study_task,
    report_study_task,
    train_best_task,
)
from tasks.validate import validate_snapshot


class SearchOptions(BaseModel):
    """What to search and how: the part of the parameters the pipeline's tune switch reuses."""

    model: ModelKind = Field(
        default="lightning", description="Built-in model to tune: lightning (MLP), sgd, mlp or hgb."
    )
    objective: str | None = Field(
        default=None,
        description="Your own objective as 'package.module:function' taking a TrialContext; overrides `model`.",
    )
    space: SearchSpace = Field(
        default_factory=dict,
        description="Name -> {kind: float|int|categorical, ...}; empty means the model's default space.",
    )
    direction: Literal["minimize", "maximize"] = Field(
        default="minimize", description="Whether the objective (validation loss by default) goes down or up."
    )
    sampler: SamplerName = Field(
        default="tpe", description="tpe, grid, random, cmaes, or hyperopt (its TPE)."
    )
    pruning: PruningOptions = Field(default_factory=PruningOptions, description="Pruner and plateau stop.")
    budget: Budget = Field(default_factory=Budget, description="Max trials, timeout, patience.")
    max_epochs: int = Field(default=12, ge=1, le=1000, description="Epochs (resource) per trial at most.")
    parallel: int = Field(default=2, ge=1, le=64, description="Trials running at once.")
    dask_address: str | None = Field(
        default=None, description="Scheduler of an existing Dask cluster; empty starts a LocalCluster."
    )
    study_name: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$",
        description="Study to create or resume; defaults to '<model_name or dataset>-<model>'.",
    )
    storage_url: str | None = Field(
        default=None,
        description=(
            "SQLAlchemy URL of the Optuna storage shared by all machines, without a password, e.g. "
            "postgresql+psycopg://tuner@db:5432/tuning_db; empty uses SQLite under the stack's home."
        ),
    )
    storage_secret: str | None = Field(
        default=None,
        description="Name of a Prefect Secret block holding the storage URL when it needs a password.",
    )
    heartbeat_s: int = Field(
        default=30, ge=1, description="Trial heartbeat; a dead worker is noticed after 3x."
    )
    seed: int = Field(default=42, description="Seed of the sampler and of the data split.")
    trainer: TrainerOptions = Field(
        default_factory=lambda: TrainerOptions(progress_bar=False, baseline=False),
        description="Base options of the Lightning model; sampled parameters override them.",
    )

    @model_validator(mode="after")
    def _grid_is_enumerable(self) -> SearchOptions:
        if self.storage_url and _has_password(self.storage_url):
            raise ValueError(
                "storage_url must not contain a password (it would show in the UI and logs): "
                "put the URL in a Prefect Secret block and pass its name as storage_secret"
            )
        if self.sampler == "grid":
            from aicml.tuning.space import grid_size

            grid_size(self.resolved_space())  # raises a ConfigurationError naming the parameter
        return self

    def resolved_space(self) -> SearchSpace:
        return self.space or default_space(self.model)


def _has_password(url: str) -> bool:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).password is not None
    except Exception:
        return False


def storage_url_of(options: SearchOptions) -> str:
    """The storage URL: from the Secret block, the parameter, or the local SQLite default."""
    if options.storage_secret:
        from prefect.blocks.system import Secret

        secret: Any = Secret.load(options.storage_secret)
        return str(secret.get())
    return options.storage_url or default_storage_url()


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
    model_name: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$",
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


class SearchOutcome(BaseModel):
    """How the search phase ended, and where its time went."""

    stop_reason: str
    trials: int
    seconds: float = Field(
        description="Wall time of running the trials, from submitting the workers (already warm) to the last result."
    )
    warmup_seconds: float = Field(
        default=0.0, description="Wall time of warming the workers (imports, data) before `seconds` starts."
    )
    worker_cpu_seconds: float = Field(default=0.0, description="CPU seconds the workers' loops used, summed.")
    cpu_seconds_by_worker: list[float] = Field(
        default_factory=list, description="CPU seconds of each worker's loop (its process, all threads)."
    )
    worker_seconds: list[float] = Field(default_factory=list, description="Wall time of each worker's loop.")
    start_delays: list[float] = Field(
        default_factory=list,
        description="Seconds from submitting each worker task to its loop starting (Prefect + Dask).",
    )
    timings: dict[str, float] = Field(
        default_factory=dict,
        description="Seconds summed over trials by phase: objective, record, tracking, claim.",
    )


def search(
    options: SearchOptions, ref: StudyRef, data_ref: Any, max_trials: int | None = None
) -> SearchOutcome:
    """Run the trials of the study on ``options.parallel`` long-lived workers (Prefect tasks)."""
    from aicml.tuning.engine import TrackingRef, TrialJob, WorkerJob, enqueue_grid
    from aicml.tuning.study import make_pruner, make_sampler, open_storage, open_study
    from tasks.tune import search_worker_task, warm_workers

    logger = get_run_logger()
    space = options.resolved_space()
    storage = open_storage(ref.storage_url.get_secret_value(), options.heartbeat_s)
    study = open_study(
        ref.study_name,
        storage,
        options.direction,
        make_sampler(options.sampler, space, options.seed),
        make_pruner(options.pruning, options.max_epochs),
    )
    # No tracking URI (the benchmark): trials are only recorded in the study.
    tracking = (
        TrackingRef(ref.tracking_uri, ref.experiment_id, ref.parent_run_id) if ref.tracking_uri else None
    )
    objective = options.objective or options.model
    template = TrialJob(
        study_name=ref.study_name, storage_url=ref.storage_url.get_secret_value(), trial_id=-1, number=-1, params={},
        objective=objective, direction=options.direction, max_epochs=options.max_epochs,
        pruning=options.pruning, data=data_ref, base_options=options.trainer.model_dump(),
        tracking=tracking, heartbeat_s=options.heartbeat_s,
    )  # fmt: skip
    max_grid = None
    if options.sampler == "grid":
        from aicml.tuning.space import grid_size

        max_grid = grid_size(space)
        # Every point waits in the study, so that workers in several processes take each exactly once.
        enqueue_grid(study, space)
    limit = min(x for x in (max_trials, max_grid) if x is not None) if (max_trials or max_grid) else None

    warm_started = time.perf_counter()
    warmed = warm_workers(objective, data_ref, ref.storage_url.get_secret_value(), options.heartbeat_s)
    warmup = time.perf_counter() - warm_started
    if warmed:
        logger.info("Warmed %d Dask workers for %s in %.1fs", warmed, objective, warmup)
    started, submitted_at = time.perf_counter(), time.time()
    futures = [
        search_worker_task.submit(
            WorkerJob(
                index=i,
                space=space,
                sampler=options.sampler,
                seed=options.seed,
                budget=options.budget,
                trial=template,
                max_trials=limit,
            )
        )
        for i in range(options.parallel)
    ]
    reports = []
    errors = []
    for future in futures:  # all workers end before an error is raised: none is left running
        try:
            reports.append(future.result())
        except Exception as exc:
            errors.append(exc)
    seconds = time.perf_counter() - started
    if errors:
        raise errors[0]
    timings: dict[str, float] = {}
    for report in reports:
        for phase, spent in report.timings.items():
            timings[phase] = round(timings.get(phase, 0.0) + spent, 4)
    reasons = sorted({r.stop_reason for r in reports})
    return SearchOutcome(
        stop_reason="; ".join(reasons),
        trials=sum(len(r.results) for r in reports),
        seconds=seconds,
        warmup_seconds=warmup,
        worker_cpu_seconds=sum(r.cpu_seconds for r in reports),
        cpu_seconds_by_worker=[r.cpu_seconds for r in reports],
        worker_seconds=[r.seconds for r in reports],
        start_delays=[max(0.0, r.started_at - submitted_at) for r in reports],
        timings=timings,
    )


def task_runner_for(options: SearchOptions) -> Any:
    """A Dask LocalCluster sized to the trials in flight (1 thread each: trials are single-threaded)."""
    from prefect_dask import DaskTaskRunner

    if options.dask_address:
        return DaskTaskRunner(address=options.dask_address)
    return DaskTaskRunner(
        cluster_kwargs={"n_workers": options.parallel, "threads_per_worker": 1, "processes": True,
                        "dashboard_address": None, "env": prefect_api_env()},
    )  # fmt: skip


def prefect_api_env() -> dict[str, str]:
    """The Prefect API this process talks to, for the Dask workers it starts to report their task runs to.

    With no API URL configured, Prefect runs an ephemeral server in each process that needs one:
    every Dask worker would start its own (some 20 s each before its first task, on a busy
    machine longer than Prefect waits for it), and its task runs would not show beside the flow's.
    """
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        with get_client(sync_client=True) as client:  # starts this process's ephemeral server
            url = str(client.api_url)
    return {"PREFECT_API_URL": str(url)}


@flow(name="tuning-search", log_prints=False, persist_result=False)
def search_flow(options: SearchOptions, ref: StudyRef, data_ref: Any) -> SearchOutcome:
    """The trials of one study on the task runner chosen by the caller (see `task_runner_for`)."""
    return search(options, ref, data_ref)


def run_search(options: SearchOptions, ref: StudyRef, data_ref: Any) -> SearchOutcome:
    outcome: SearchOutcome = search_flow.with_options(task_runner=task_runner_for(options))(
        options, ref, data_ref
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
) -> TrainerOptions:
    """The pipeline's tune switch: search the Lightning model's options, return the best as TrainerOptions.

    Runs inside the calling flow (the pipeline): the study's parent MLflow run, the trials on Dask,
    the plots and the leaderboard, exactly as in `tune`; the final training stays the pipeline's.
    """
    from aicml.tuning.errors import TuningError
    from aicml.tuning.objectives import DataRef, lightning_options
    from aicml.tuning.study import redact

    if options.model != "lightning" or options.objective:
        raise TuningError(
            f"The pipeline's tune switch tunes the Lightning model's options; got model={options.model!r} "
            f"objective={options.objective!r}. Use the `tune` flow for other models."
        )
    storage_url = storage_url_of(options)
    ref = open_study_task(
        study_name, storage_url, options.direction, experiment, {"aicml.study": study_name},
        {"study": study_name, "storage": redact(storage_url), "sampler": options.sampler,
         "pruner": options.pruning.pruner, "n_trials": options.budget.n_trials},
    )  # fmt: skip
    status = "FAILED"
    try:
        tuned = options.model_copy(update={"trainer": trainer})
        searched = run_search(tuned, ref, DataRef(validated_path, target, problem, options.seed))
        report = report_study_task(ref, searched.stop_reason)
        status = "FINISHED"
    finally:
        finish_study_run_task(ref, status)
    best = lightning_options(trainer.model_dump(), report.best_params, max(report.best_epochs, 1))
    return TrainerOptions(**{**best, "baseline": trainer.baseline})


@flow(name="tune", log_prints=False, persist_result=True)
def tune_flow(params: TuneParams) -> TuneResult:
    """Ingest -> validate -> parallel pruned trials -> plots + leaderboard -> best model -> promotion."""
    from aicml.tuning.objectives import DataRef
    from aicml.tuning.study import redact

    logger = get_run_logger()
    started = time.perf_counter()
    experiment = params.experiment or settings().experiment
    dataset = params.dataset or params.model_name or "tuning"
    study_name = (
        params.study_name
        or f"{params.model_name or dataset}-{'custom' if params.objective else params.model}"
    )
    storage_url = storage_url_of(params)
    snapshot = ingest_source(params.source, params.table, dataset)
    gate = validate_snapshot(snapshot, params.target, dataset, None, 0.1, None)
    logged = {
        "study": study_name,
        "storage": redact(storage_url),
        "model": params.objective or params.model,
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
        study_name,
        storage_url,
        params.direction,
        experiment,
        {"aicml.study": study_name, "aicml.dataset": dataset},
        logged,
    )
    status = "FAILED"
    try:
        data_ref = DataRef(gate.path, params.target, params.problem, params.seed)
        searched = run_search(params, ref, data_ref)
        stop_reason, ran = searched.stop_reason, searched.trials
        report: StudyReport = report_study_task(ref, stop_reason)
        version = decision = outcome = None
        if params.model_name:
            outcome = train_best_task(
                ref,
                report,
                gate.path,
                params.target,
                params.problem,
                params.model,
                params.trainer.model_dump(),
                params.seed,
            )
            version = register_best(outcome, params.model_name, snapshot.fingerprint)
            decision = promote_model(version, outcome, params.target, params.promotion_margin)
        status = "FINISHED"
    finally:
        finish_study_run_task(ref, status)
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
