"""The tuning engine: a driver that claims trials from a shared study, and the code that evaluates one.

A driver samples parameters (``study.ask``), keeps up to ``parallel`` trials in flight on an executor,
and stops on the budget; the evaluation reports per-epoch values, prunes, and ``tell``s the result, so a
result survives its driver. Several drivers may share one RDB study: claims are checked against the
study so that exactly ``n_trials`` trials finish, however many drivers run. ``run_worker`` is the
parallel unit: one long-lived driver per worker process, evaluating its own claims one after another
(the flow starts one per Dask worker, the same way Optuna spreads ``study.optimize`` over machines).
``drive`` says why it is a loop of its own rather than ``study.optimize`` (exact budget across drivers,
storage retries). The engine keeps the RDB storage it opened and passes it along; ``study_storage`` is
the one place that reads a study's private storage, for callers that did not keep theirs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import socket
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from aicml.tuning.errors import TuningError
from aicml.tuning.jobs import TrackingRef, TrialJob, TrialResult, WorkerJob, WorkerReport
from aicml.tuning.objectives import DataRef, PlateauStop, TrialContext, resolve_objective
from aicml.tuning.space import Budget, SearchSpace
from aicml.tuning.study import (
    adopt_orphaned_trials,
    distributions,
    heartbeat,
    make_pruner,
    open_storage,
)

log = logging.getLogger(__name__)

LIVE = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
SURPLUS_ATTR = "aicml_surplus"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence Optuna's notes that heartbeats are experimental and meant for ``optimize``: we drive them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        yield


@functools.lru_cache(maxsize=8)
def _worker_storage(url: str, heartbeat_s: int, grace_s: int | None) -> RDBStorage:
    """One storage (engine, connection pool, schema check) per worker process, reused by its trials.

    The engine keeps this handle and passes it along (heartbeats, stale checks, the URL in errors)
    rather than reaching into a study for the storage it was loaded from.
    """
    return open_storage(url, heartbeat_s, grace_s)


def study_storage(study: optuna.Study) -> RDBStorage:
    """The RDB storage under ``study``, for a ``drive`` caller that did not pass its own handle.

    The one private access to Optuna in the engine, written for optuna 5.0: ``Study._storage`` holds
    the storage given to ``create_study``/``load_study``, an ``RDBStorage`` wrapped in a
    ``_CachedStorage`` whose ``_backend`` is the RDBStorage itself. Optuna has no public accessor;
    the engine's own paths (``run_worker``, ``evaluate_trial``) keep the handle they opened instead.
    """
    storage = study._storage
    backend = getattr(storage, "_backend", storage)
    if not isinstance(backend, RDBStorage):
        raise TuningError(
            f"Study {study.study_name!r} is not on an RDB storage (optuna {optuna.__version__} moved "
            "Study._storage?): pass drive(storage=...) the RDBStorage the study was opened on"
        )
    return backend


def evaluate_trial(
    job: TrialJob, study: optuna.Study | None = None, claimed: optuna.trial.Trial | None = None
) -> TrialResult:
    """Run the objective for one claimed trial and record its outcome in the study (worker side).

    ``study`` and ``claimed`` are the claiming driver's own study (it carries the pruner) and trial
    when the driver runs here; otherwise the study is loaded from the job's storage.
    """
    started = time.perf_counter()
    # The driver of run_worker loaded its study on this very storage (same URL, heartbeat and grace).
    storage = _worker_storage(job.storage_url, job.heartbeat_s, job.grace_s)
    if study is None:
        # This process did not sample (the driver did); its study only needs the pruner.
        study = optuna.load_study(
            study_name=job.study_name,
            storage=storage,
            sampler=optuna.samplers.RandomSampler(),
            pruner=make_pruner(job.pruning, job.max_epochs),
        )
    if claimed is not None and claimed._trial_id == job.trial_id:
        trial = claimed
    else:
        with _quiet():
            trial = optuna.trial.Trial(study, job.trial_id)
    ctx = TrialContext(
        trial=trial,
        params=dict(job.params),
        direction=job.direction,
        max_epochs=job.max_epochs,
        pruning=job.pruning,
        data_ref=job.data,
        base_options=dict(job.base_options),
    )
    state, value, error, plateau = TrialState.COMPLETE, None, None, False
    objective_s = 0.0
    with heartbeat(storage, job.trial_id, job.heartbeat_s):
        objective_started = time.perf_counter()
        try:
            value = float(resolve_objective(job.objective)(ctx))
        except optuna.TrialPruned:
            state = TrialState.PRUNED
        except PlateauStop:
            state, value, plateau = TrialState.COMPLETE, ctx.best, True
        except Exception as exc:
            state, error = TrialState.FAIL, f"{type(exc).__name__}: {exc}"
            log.warning("Trial %d failed: %s", job.number, "".join(traceback.format_exception(exc))[-2000:])
        objective_s = time.perf_counter() - objective_started
        if state == TrialState.COMPLETE and value is None:
            state, error = TrialState.FAIL, "the objective returned no value"
        try:
            record_result(study, trial, state, value, url=storage.url)
        except Exception as exc:  # e.g. failed as stale meanwhile: the study already holds its fate
            error = f"could not record the result: {exc}"
            state = TrialState.FAIL
    if state == TrialState.PRUNED and ctx.intermediate:
        value = ctx.intermediate[max(ctx.intermediate)]
    seconds = time.perf_counter() - started
    result = TrialResult(
        number=job.number,
        state=state.name,
        value=value,
        params=dict(job.params),
        epochs=ctx.epochs,
        intermediate=dict(ctx.intermediate),
        seconds=seconds,
        error=error,
        stopped_on_plateau=plateau,
        worker=f"{socket.gethostname()}:{os.getpid()}",
        # The objective's own reports (trial.report per epoch) count as objective time.
        timings={"objective": objective_s, "record": seconds - objective_s},
    )
    if job.tracking is not None:
        from aicml.tuning.reporting import log_trial_run

        logging_started = time.perf_counter()
        result = log_trial_run(job.tracking, result)
        result.timings["tracking"] = time.perf_counter() - logging_started
    return result


def on_storage(url: str, call: Callable[[], Any], doing: str) -> Any:
    """``call`` (a read, a heartbeat, a stale-trial check: safe to repeat) retried with bounded backoff
    while the study's database (at ``url``) does not answer (a restart, a dropped connection); a storage
    that stays down is reported by name and address (``ServiceUnavailableError``, password dropped)."""
    from aicml.retry import retry_idempotent

    return retry_idempotent(call, server="study storage (PostgreSQL)", url=url, doing=doing)


def record_result(
    study: optuna.Study, trial: optuna.trial.Trial, state: TrialState, value: float | None, url: str = ""
) -> None:
    """``tell`` the trial's outcome; repeated when the storage did not answer. A repeat skips a trial
    already finished: the first attempt may have committed before its connection dropped."""
    attempts = [0]

    def tell() -> None:
        attempts[0] += 1
        again = attempts[0] > 1
        if state == TrialState.COMPLETE:
            study.tell(trial, value, skip_if_finished=again)
        else:
            study.tell(trial, state=state, skip_if_finished=again)

    on_storage(url, tell, f"recording trial {trial.number} of study {study.study_name!r}")


class Executor(Protocol):
    """Runs jobs somewhere: ``submit`` returns a handle, ``wait`` splits handles into done and pending."""

    def submit(self, job: TrialJob) -> Any: ...

    def wait(self, handles: Sequence[Any], timeout: float) -> tuple[list[Any], list[Any]]: ...

    def result(self, handle: Any) -> TrialResult: ...


class InlineExecutor:
    """Evaluates each job at once in this process (one trial at a time), on ``study`` when given."""

    def __init__(self, study: optuna.Study | None = None) -> None:
        self.study = study

    def submit(self, job: TrialJob, claimed: optuna.trial.Trial | None = None) -> TrialResult:
        return evaluate_trial(job, self.study, claimed)

    def wait(self, handles: Sequence[Any], timeout: float) -> tuple[list[Any], list[Any]]:
        return list(handles), []

    def result(self, handle: Any) -> TrialResult:
        return handle  # type: ignore[no-any-return]


@dataclass
class DriveOutcome:
    """What this driver ran and why it stopped."""

    results: list[TrialResult]
    stop_reason: str
    seconds: float


def _best_after_patience(study: optuna.Study, patience: int, live: Sequence[FrozenTrial]) -> bool:
    """True when the last ``patience`` finished trials (by finish time) did not improve the best value."""
    done = [t for t in live if t.state == TrialState.COMPLETE and t.value is not None]
    if len(done) <= patience:
        return False
    done.sort(key=lambda t: (t.datetime_complete or 0, t.number))
    sign = 1.0 if study.direction == optuna.study.StudyDirection.MINIMIZE else -1.0
    best_index = min(range(len(done)), key=lambda i: (sign * float(done[i].value or 0.0), i))
    return len(done) - 1 - best_index >= patience


def _stop_reason(
    study: optuna.Study, budget: Budget, started: float, max_trials: int, live: Sequence[FrozenTrial]
) -> str | None:
    """Why the budget says stop, judged on ``live`` (the study's live trials, just read), or None."""
    if budget.timeout_s is not None and time.monotonic() - started >= budget.timeout_s:
        return f"timeout of {budget.timeout_s:g}s"
    if budget.patience is not None and _best_after_patience(study, budget.patience, live):
        return f"{budget.patience} finished trials without improvement"
    if sum(1 for t in live if t.state in FINISHED) >= max_trials:
        return f"{max_trials} trials finished"
    return None


def claim_trial(
    study: optuna.Study, max_trials: int, space: SearchSpace, live: Sequence[FrozenTrial] | None = None
) -> optuna.trial.Trial | None:
    """Ask for a trial unless the budget is taken; a claim that lost a race to another driver is released.

    Trials are numbered in creation order, so counting the live trials numbered below ours tells,
    with no lock, whether ours is within the first ``max_trials``. ``live`` saves a read when the
    caller has just read the live trials.
    """
    if live is None:
        live = study.get_trials(deepcopy=False, states=LIVE)
    waiting = any(t.state == TrialState.WAITING for t in live)
    if len(live) >= max_trials and not waiting:
        return None
    with _quiet():
        trial = study.ask(distributions(space))
    # Numbers count the trials created before; below max_trials no read can show ours to be surplus.
    if trial.number < max_trials:
        return trial
    ahead = sum(1 for t in study.get_trials(deepcopy=False, states=LIVE) if t.number < trial.number)
    if ahead >= max_trials:
        trial.set_user_attr(SURPLUS_ATTR, True)
        study.tell(trial, state=TrialState.FAIL)
        return None
    return trial


def drive(
    study: optuna.Study,
    space: SearchSpace,
    budget: Budget,
    make_job: Callable[[optuna.trial.Trial], TrialJob],
    executor: Executor,
    parallel: int = 1,
    max_trials: int | None = None,
    on_result: Callable[[TrialResult], None] | None = None,
    poll_s: float = 0.5,
    max_failures: int = 3,
    storage: RDBStorage | None = None,
) -> DriveOutcome:
    """Keep ``parallel`` trials in flight until the budget says stop; wait for other drivers' trials.

    ``storage`` is the RDBStorage the study was opened on (heartbeats, stale checks); without it, it
    is read from the study (``study_storage``).

    Why a loop of its own rather than ``study.optimize`` with ``MaxTrialsCallback``: several drivers
    (one per Dask worker, or per machine) share the study, and ``MaxTrialsCallback`` only stops a
    driver after a trial ends, so each may start one more and the study overshoots ``n_trials``; the
    tests hold every run to exactly ``n_trials`` finished trials, each evaluated once. ``claim_trial``
    is that check (a claim past the budget is released as a surplus FAIL before it runs). The loop
    also retries every storage round trip through a database restart (``on_storage``), which
    ``optimize`` does not, and waits for the other drivers' last trials so that each reports why the
    study stopped. What Optuna does provide is used as is: ``study.ask`` takes waiting trials first
    (queued grid points, retries), the storage's heartbeats and ``RetryHeartbeatStaleTrialCallback``
    (the non-deprecated name of ``RetryFailedTrialCallback``) re-queue a dead worker's trial, and
    ``fail_stale_trials`` finds it.
    """
    started = time.monotonic()
    limit = min(budget.n_trials, max_trials or budget.n_trials)
    pending: list[Any] = []
    claimed: dict[int, int] = {}  # id(handle) -> trial id, for the driver's heartbeats
    storage = storage if storage is not None else study_storage(study)
    url = storage.url
    interval = float(storage.get_heartbeat_interval() or 0)
    last_beat = last_stale_check = 0.0
    # An inline executor starts the trial's own heartbeat at once: no need for the driver's.
    queues = not isinstance(executor, InlineExecutor)
    results: list[TrialResult] = []
    failures = 0
    reason = "budget"
    while True:
        if pending:
            done, pending = executor.wait(pending, timeout=poll_s)
            for handle in done:
                claimed.pop(id(handle), None)
                result = executor.result(handle)
                results.append(result)
                if result.state == "FAIL":
                    failures += 1
                if on_result is not None:
                    on_result(result)
            if failures >= max_failures and not any(r.state != "FAIL" for r in results):
                raise TuningError(
                    f"The first {failures} trials of study {study.study_name!r} failed; the last error: "
                    f"{results[-1].error}. Fix the objective or the search space."
                )
        # A trial whose worker died is failed here and re-queued with the same parameters. It goes
        # stale only after a grace period of several heartbeats, so looking once per heartbeat is enough.
        if interval and time.monotonic() - last_stale_check >= interval:
            last_stale_check = time.monotonic()
            with _quiet():
                on_storage(url, lambda: optuna.storages.fail_stale_trials(study), "failing stale trials")
                # A claim whose process died before its first heartbeat would never go stale.
                on_storage(url, lambda: adopt_orphaned_trials(storage, study._study_id), "adopting trials")
        read = on_storage(url, lambda: study.get_trials(deepcopy=False, states=LIVE), "reading the trials")
        stop = _stop_reason(study, budget, started, limit, read)
        live: Sequence[FrozenTrial] | None = read
        while stop is None and len(pending) < parallel:
            # A claim that did not reach the database is made again; one whose commit was lost in
            # transit stays RUNNING without a heartbeat (never seen stale: the window is one round trip).
            trial = on_storage(
                url, functools.partial(claim_trial, study, limit, space, live), "claiming a trial"
            )
            live = None  # a further claim in this round reads the study again
            if trial is None:
                break
            if interval and queues:
                storage.record_heartbeat(trial._trial_id)
            # Inline, the evaluation takes the claimed trial itself, not a copy rebuilt from the storage.
            args = (make_job(trial),) if queues else (make_job(trial), trial)
            handle = executor.submit(*args)
            claimed[id(handle)] = trial._trial_id
            pending.append(handle)
        if pending and interval and time.monotonic() - last_beat >= interval:
            # The driver keeps its claimed trials alive while they queue for a worker (the worker
            # beats too once it runs them); if this process dies, they go stale and are retried.
            last_beat = time.monotonic()
            for trial_id in claimed.values():
                with contextlib.suppress(Exception):
                    storage.record_heartbeat(trial_id)
        if pending:
            continue
        if stop is not None:
            reason = stop
            break
        others = on_storage(
            url,
            lambda: study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)),
            "reading the trials",
        )
        if not others:
            # Another driver may have finished the last trial since this round's read: say so if it did.
            final = on_storage(
                url, lambda: study.get_trials(deepcopy=False, states=LIVE), "reading the trials"
            )
            reason = _stop_reason(study, budget, started, limit, final) or "no trial left to run"
            break
        # Trials of other drivers (or of a dead one, until its heartbeat expires) hold the last slots.
        time.sleep(poll_s)
    return DriveOutcome(results=results, stop_reason=reason, seconds=time.monotonic() - started)


def _log_in_background(tracking: TrackingRef, result: TrialResult) -> TrialResult:
    """One trial's nested MLflow run; a failure is logged, not raised (the study holds the result)."""
    from aicml.tuning.reporting import log_trial_run

    logging_started = time.perf_counter()
    try:
        logged = log_trial_run(tracking, result)
    except Exception as exc:
        log.warning("Trial %d was not logged to MLflow: %s", result.number, exc)
        return result
    logged.timings["tracking"] = time.perf_counter() - logging_started
    return logged


def worker_seed(seed: int, index: int) -> int:
    """Worker 0 samples with the study's seed; the others with their own, so they do not repeat it."""
    return seed + 7919 * index


ProgressHook = Callable[[int, int, "float | None"], None]


def _report_progress(study: optuna.Study, budget: Budget, on_progress: ProgressHook) -> None:
    """Finished trials of the whole study (every worker's), its budget and best value so far, to
    ``on_progress``; a failure is logged, never raised (progress is for people watching, not for the study)."""
    try:
        finished = study.get_trials(deepcopy=False, states=FINISHED)
        values = [t.value for t in finished if t.state == TrialState.COMPLETE and t.value is not None]
        best = None
        if values:
            best = min(values) if study.direction == optuna.study.StudyDirection.MINIMIZE else max(values)
        on_progress(len(finished), budget.n_trials, best)
    except Exception as exc:
        log.warning("Progress of study %s not reported: %s", study.study_name, exc)


def run_worker(
    job: WorkerJob, on_progress: ProgressHook | None = None, progress_every_s: float = 1.0
) -> WorkerReport:
    """Claim, evaluate and record trials one after another until the study's budget is spent.

    The worker's sampler reads the whole shared study (TPE, CMA-ES and Hyperopt learn from every
    worker's trials); trials waiting in the study (enqueued grid points, retries of a dead worker's
    trial) are taken first. ``on_progress(finished, budget, best)`` is called after a trial (at most once
    per ``progress_every_s``) and when the worker stops, on the thread that logs trial runs, beside the
    next trial rather than before it.
    """
    from aicml.tuning.study import make_sampler

    started_at, started, cpu = time.time(), time.perf_counter(), time.process_time()
    template = job.trial
    storage = _worker_storage(template.storage_url, template.heartbeat_s, template.grace_s)
    with _quiet():
        study = optuna.load_study(
            study_name=template.study_name,
            storage=storage,
            sampler=make_sampler(job.sampler, job.space, worker_seed(job.seed, job.index)),  # type: ignore[arg-type]
            pruner=make_pruner(template.pruning, template.max_epochs),
        )

    def make_job(trial: optuna.trial.Trial) -> TrialJob:
        # Trial runs are logged to MLflow beside the next trial (below), not before it starts.
        return dataclasses.replace(
            template, trial_id=trial._trial_id, number=trial.number, params=dict(trial.params), tracking=None
        )

    logged: list[Future[TrialResult]] = []
    last_progress = [0.0]
    with ThreadPoolExecutor(1, thread_name_prefix="aicml-trial-runs") as tracker:

        def on_result(result: TrialResult) -> None:
            if template.tracking is not None:
                logged.append(tracker.submit(_log_in_background, template.tracking, result))
            if on_progress is not None and time.monotonic() - last_progress[0] >= progress_every_s:
                last_progress[0] = time.monotonic()
                tracker.submit(_report_progress, study, job.budget, on_progress)

        # A worker out of claims waits only for the other workers' last trials: poll them often.
        outcome = drive(
            study, job.space, job.budget, make_job, InlineExecutor(study), 1, job.max_trials,
            on_result=on_result, poll_s=0.1, storage=storage,
        )  # fmt: skip
        if on_progress is not None:
            tracker.submit(_report_progress, study, job.budget, on_progress)
    results = [f.result() for f in logged] if template.tracking is not None else outcome.results
    seconds = time.perf_counter() - started
    timings: dict[str, float] = {}
    for result in results:
        for phase, spent in result.timings.items():
            timings[phase] = timings.get(phase, 0.0) + spent
    # Claims, stop checks and stale-trial checks of the loop (and the wait for the last MLflow
    # writes): all that is not inside a trial. Tracking ran beside the trials, so it is not subtracted.
    timings["claim"] = seconds - sum(r.seconds for r in results)
    return WorkerReport(
        index=job.index,
        worker=f"{socket.gethostname()}:{os.getpid()}",
        results=results,
        stop_reason=outcome.stop_reason,
        started_at=started_at,
        seconds=seconds,
        cpu_seconds=time.process_time() - cpu,
        timings=timings,
    )


def enqueue_grid(study: optuna.Study, space: SearchSpace) -> int:
    """Put every grid point not yet in the study as a waiting trial, so parallel workers take each once.

    Taking a waiting trial is atomic in the RDB storage, which a sampler choosing among unvisited
    points in several processes is not. Points already complete, pruned, running or waiting are skipped.
    """
    import itertools

    names = list(space)
    seen = set()
    for t in study.get_trials(deepcopy=False, states=LIVE):
        params = t.params or t.system_attrs.get("fixed_params") or {}
        seen.add(tuple(params.get(n) for n in names))
    added = 0
    for point in itertools.product(*(space[n].grid(n) for n in names)):
        if point not in seen:
            study.enqueue_trial(dict(zip(names, point, strict=True)), skip_if_exists=False)
            added += 1
    return added


def warm_objective(
    objective: str, data: DataRef | None, storage_url: str | None = None, heartbeat_s: int = 30
) -> None:
    """Import what the objective needs, prepare its data and open the study storage, once per worker process.

    Done before the trials start, so that the first trial of each worker does not pay for it.
    """
    if storage_url is not None:
        _worker_storage(storage_url, heartbeat_s, None)
    # Imported for their cost alone: paid here, not by the first trial.
    import aicml.tuning.reporting

    if objective == "lightning":
        import aicml.models.trainers  # noqa: F401  (torch and Lightning)
    elif objective in ("sgd", "mlp", "hgb"):
        import sklearn.ensemble
        import sklearn.linear_model
        import sklearn.metrics
        import sklearn.neural_network  # noqa: F401
    resolve_objective(objective)
    if data is not None:
        from aicml.tuning.objectives import prepared

        prepared(data)
