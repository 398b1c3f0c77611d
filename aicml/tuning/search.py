"""The search phase of a study: its worker jobs, the Dask cluster they run on, and how their reports add up.

A flow composes these: ``plan_workers`` opens the study (queuing a grid) and builds one ``WorkerJob`` per
parallel worker; ``run_workers`` warms the workers, submits the jobs (as the flow's Prefect tasks) and
sums their reports into a ``SearchOutcome``; ``task_runner_for`` is the Dask task runner the flow runs on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel, Field

from aicml.tuning.jobs import TrackingRef, TrialJob, WorkerJob, WorkerReport
from aicml.tuning.options import SearchOptions

log = logging.getLogger(__name__)


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


def plan_workers(
    *,
    options: SearchOptions,
    study_name: str,
    storage_url: str,
    data: Any,
    tracking: TrackingRef | None = None,
    max_trials: int | None = None,
) -> list[WorkerJob]:
    """Open (or create) the study and one job per parallel worker; a grid is queued in the study first.

    ``tracking`` None (the benchmark) records the trials in the study only, not in MLflow.
    """
    from aicml.tuning.engine import enqueue_grid
    from aicml.tuning.study import make_pruner, make_sampler, open_storage, open_study

    space = options.resolved_space()
    study = open_study(
        study_name,
        open_storage(storage_url, options.heartbeat_s),
        options.direction,
        make_sampler(options.sampler, space, options.seed),
        make_pruner(options.pruning, options.max_epochs),
    )
    template = TrialJob(
        study_name=study_name, storage_url=storage_url, trial_id=-1, number=-1, params={},
        objective=options.objective_name, direction=options.direction, max_epochs=options.max_epochs,
        pruning=options.pruning, data=data, base_options=options.trainer.model_dump(),
        tracking=tracking, heartbeat_s=options.heartbeat_s,
    )  # fmt: skip
    max_grid = None
    if options.sampler == "grid":
        from aicml.tuning.space import grid_size

        max_grid = grid_size(space)
        # Every point waits in the study, so that workers in several processes take each exactly once.
        enqueue_grid(study, space)
    limit = min(x for x in (max_trials, max_grid) if x is not None) if (max_trials or max_grid) else None
    return [
        WorkerJob(
            index=i,
            space=space,
            sampler=options.sampler,
            seed=options.seed,
            budget=options.budget,
            trial=template,
            max_trials=limit,
        )
        for i in range(options.parallel)
    ]


def run_workers(
    *,
    jobs: Sequence[WorkerJob],
    submit: Callable[[WorkerJob], Any],
    warm: Callable[[], int] = lambda: 0,
    logger: logging.Logger | logging.LoggerAdapter[Any] = log,
) -> SearchOutcome:
    """Warm the workers, ``submit`` each job (a future with ``result()``), and sum the reports.

    Every worker ends before an error is raised, so none is left running; the first error is raised.
    """
    warm_started = time.perf_counter()
    warmed = warm()
    warmup = time.perf_counter() - warm_started
    if warmed:
        logger.info("Warmed %d Dask workers for %s in %.1fs", warmed, jobs[0].trial.objective, warmup)
    started, submitted_at = time.perf_counter(), time.time()
    futures = [submit(job) for job in jobs]
    reports: list[WorkerReport] = []
    errors: list[Exception] = []
    for future in futures:
        try:
            reports.append(future.result())
        except Exception as exc:
            errors.append(exc)
    seconds = time.perf_counter() - started
    if errors:
        raise errors[0]
    return summarize(reports, seconds=seconds, warmup=warmup, submitted_at=submitted_at)


def summarize(
    reports: Sequence[WorkerReport], *, seconds: float, warmup: float, submitted_at: float
) -> SearchOutcome:
    """The workers' reports as one outcome: stop reasons, trials, CPU and wall seconds, time by phase."""
    timings: dict[str, float] = {}
    for report in reports:
        for phase, spent in report.timings.items():
            timings[phase] = round(timings.get(phase, 0.0) + spent, 4)
    return SearchOutcome(
        stop_reason="; ".join(sorted({r.stop_reason for r in reports})),
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


def warm_workers(*, objective: str, data: Any, storage_url: str, heartbeat_s: int) -> int:
    """Get every Dask worker of the running flow ready for trials, all at once: libraries, data, storage, Prefect.

    Returns how many workers were warmed (0 when the flow does not run on Dask). A cold worker pays
    this once, here rather than in its first trial; a long-lived cluster (``dask_address``) has it
    done already and answers at once.
    """
    from prefect.context import FlowRunContext
    from prefect_dask import DaskTaskRunner

    context = FlowRunContext.get()
    if context is None or not isinstance(context.task_runner, DaskTaskRunner):
        return 0
    # A task run's context names the flow, so its first run on a worker imports the flow's module.
    module = getattr(getattr(context.flow, "fn", None), "__module__", "__main__")
    # The runner's own client (its first use starts a LocalCluster); `run` calls every worker at once.
    done = context.task_runner.client.run(_warm_worker, objective, data, storage_url, heartbeat_s, module)
    return len(done)


def _warm_worker(objective: str, data: Any, storage_url: str, heartbeat_s: int, module: str) -> None:
    """On a Dask worker: what its first task run would otherwise load (Prefect's task engine and API
    client, the flow's module, the objective's libraries, the data, the study storage)."""
    import importlib

    import prefect.task_engine  # noqa: F401  (each task run on the worker goes through it)
    from prefect.client.orchestration import get_client

    from aicml.tuning.engine import warm_objective

    if module != "__main__":
        importlib.import_module(module)
    with get_client(sync_client=True) as client:
        client.api_healthcheck()
    warm_objective(objective, data, storage_url, heartbeat_s)
