"""Samplers, pruners and study storage: where Optuna objects are built from the typed options.

Storage is Optuna's RDB storage (SQLite on one machine, PostgreSQL for many) with heartbeats, so a
trial whose process died is failed and re-queued with the same parameters by the next worker.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from aicml.redaction import redact
from aicml.tuning.errors import TuningError
from aicml.tuning.space import (
    CategoricalParam,
    FloatParam,
    IntParam,
    PrunerName,
    PruningOptions,
    SamplerName,
    SearchSpace,
)

# Retries of a trial whose worker died (heartbeat lost); a trial that raises is not retried.
MAX_RETRIES = 2


def distributions(space: SearchSpace) -> dict[str, BaseDistribution]:
    """The Optuna distribution of each declared parameter."""
    out: dict[str, BaseDistribution] = {}
    for name, spec in space.items():
        if isinstance(spec, FloatParam):
            out[name] = FloatDistribution(spec.low, spec.high, log=spec.log, step=spec.step)
        elif isinstance(spec, IntParam):
            out[name] = IntDistribution(spec.low, spec.high, log=spec.log, step=spec.step)
        elif isinstance(spec, CategoricalParam):
            out[name] = CategoricalDistribution(spec.choices)
    return out


def make_sampler(name: SamplerName, space: SearchSpace, seed: int) -> optuna.samplers.BaseSampler:
    """TPE (Bayesian), grid, random, CMA-ES, or Hyperopt's TPE behind Optuna's sampler interface."""
    if name == "tpe":
        # Multivariate TPE models interactions (learning rate x width) that independent TPE misses.
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=5)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler({k: v.grid(k) for k, v in space.items()}, seed=seed)
    if name == "cmaes":
        if any(isinstance(v, CategoricalParam) for v in space.values()):
            # CMA-ES handles only numbers; categorical parameters fall back to this independent sampler.
            return optuna.samplers.CmaEsSampler(
                seed=seed,
                independent_sampler=optuna.samplers.RandomSampler(seed=seed),
                warn_independent_sampling=False,
            )
        return optuna.samplers.CmaEsSampler(seed=seed)
    if name == "hyperopt":
        from aicml.tuning.hyperopt_backend import HyperoptSampler

        return HyperoptSampler(space, seed=seed)
    raise TuningError(f"Unknown sampler {name!r}: use tpe, grid, random, cmaes or hyperopt.")


def make_pruner(options: PruningOptions, max_epochs: int) -> optuna.pruners.BasePruner:
    """Median, successive halving or Hyperband, with resources counted in epochs."""
    name: PrunerName = options.pruner
    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=options.startup_trials, n_warmup_steps=options.warmup_epochs
        )
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=options.min_epochs, reduction_factor=options.reduction_factor
        )
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=options.min_epochs,
            max_resource=max_epochs,
            reduction_factor=options.reduction_factor,
        )
    raise TuningError(f"Unknown pruner {name!r}: use none, median, successive_halving or hyperband.")


def local_storage_url(directory: Path) -> str:
    """The one-machine default: a SQLite file that every local worker process opens."""
    directory.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(directory / 'optuna.db').resolve()}"


def open_storage(url: str, heartbeat_s: int = 30, grace_s: int | None = None) -> RDBStorage:
    """RDB storage with heartbeats; a dead worker's trial is failed after ``grace_s`` and retried."""
    # Several processes write one SQLite file: wait for its lock instead of failing at once.
    engine_kwargs: dict[str, Any] = (
        {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    )
    last: Exception | None = None
    # Workers starting together race to create the schema (PostgreSQL answers with a unique-violation
    # on its catalog); the loser retries and finds the tables made.
    for attempt in range(6):
        try:
            with warnings.catch_warnings():
                # Heartbeats and their retry callback are marked experimental; they are what resume needs.
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat_s,
                    grace_period=grace_s or heartbeat_s * 3,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES),
                )
            if url.startswith("sqlite"):
                _write_ahead(storage)
            return storage
        except Exception as exc:
            last = exc
            time.sleep(0.2 * (attempt + 1) + random.random() * 0.3)
    raise TuningError(f"Cannot open the study storage {redact(url)}: {last}") from last


def _write_ahead(storage: RDBStorage) -> None:
    """SQLite in write-ahead-log mode with normal sync: a commit no longer waits for a full fsync.

    Every claim, heartbeat and result is a commit, and the default rollback journal syncs the disk
    for each (several milliseconds apiece, far more on a busy disk); in WAL mode readers also stop
    blocking the writer, which is what parallel workers on one file do. A commit stays atomic and
    survives the process being killed (only a power loss may drop the last commits).
    """
    from sqlalchemy import event

    def on_connect(connection: Any, _record: Any) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()
        # pysqlite would open transactions lazily and DEFERRED, so Optuna's read-then-write of a trial's
        # state (taking a waiting trial) could interleave between two workers, both taking the same
        # trial (SQLite ignores SELECT ... FOR UPDATE). Every transaction begins IMMEDIATE instead.
        connection.isolation_level = None

    def on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    event.listen(storage.engine, "connect", on_connect)
    event.listen(storage.engine, "begin", on_begin)
    storage.engine.dispose()  # connections opened while creating the schema get the pragmas too


def open_study(
    name: str,
    storage: RDBStorage,
    direction: str,
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
) -> optuna.Study:
    """Create the study, or load it when it exists (a resumed run, or another machine's)."""
    for attempt in range(5):
        try:
            study = optuna.create_study(
                study_name=name,
                storage=storage,
                direction=direction,  # type: ignore[arg-type]
                sampler=sampler,
                pruner=pruner,
                load_if_exists=True,
            )
            break
        except Exception:
            # Two workers creating the same study at once: one wins, the other loads it on retry.
            if attempt == 4:
                raise
            time.sleep(0.2 * (attempt + 1) + random.random() * 0.3)
    if study.direction.name.lower() != direction:
        raise TuningError(
            f"Study {name!r} exists with direction {study.direction.name.lower()}, not {direction}: "
            "use another study name."
        )
    return study


def adopt_orphaned_trials(storage: RDBStorage, study_id: int) -> list[int]:
    """Give one heartbeat to every RUNNING trial of the study that never had one, ten grace periods after its start.

    A driver claims a trial (``study.ask``: RUNNING) and records its first heartbeat in a second
    commit; a process killed between the two leaves a RUNNING trial that Optuna never calls stale
    (``fail_stale_trials`` skips trials without a heartbeat), and every later driver would wait for
    it forever. One beat, dated now, makes it an ordinary dead trial: failed after the grace period
    and retried with its parameters. A live owner that was merely slow beats on and keeps it.

    Written for optuna 5.0's RDB schema (``TrialModel.heartbeats``); there is no public query for it.
    """
    from datetime import datetime, timedelta

    from optuna.storages._rdb import models

    # Ten grace periods, not one: a live driver whose first beat is held up (its database restarting) keeps
    # its trial; only a claim nobody beats for that long is taken for dead.
    grace = 10 * timedelta(seconds=storage.grace_period or 2 * (storage.heartbeat_interval or 0))
    now = datetime.now()
    with storage.scoped_session() as session:
        running = (
            session.query(models.TrialModel)
            .outerjoin(models.TrialHeartbeatModel)
            .filter(models.TrialModel.study_id == study_id)
            .filter(models.TrialModel.state == optuna.trial.TrialState.RUNNING)
            .filter(models.TrialHeartbeatModel.trial_heartbeat_id.is_(None))
            .all()
        )
        # Optuna 5 keeps a trial's start in UTC and gives it back as naive local time, like ``now``.
        orphans = [
            int(t.trial_id) for t in running if t.datetime_start is None or now - t.datetime_start > grace
        ]
    for trial_id in orphans:
        storage.record_heartbeat(trial_id)
    return orphans


@contextlib.contextmanager
def heartbeat(storage: RDBStorage, trial_id: int, every_s: float) -> Iterator[None]:
    """Record the trial's heartbeat every ``every_s`` seconds while the block runs."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every_s):
            with contextlib.suppress(Exception):  # a missed beat is retried on the next tick
                storage.record_heartbeat(trial_id)

    from aicml.retry import retry_idempotent

    retry_idempotent(
        lambda: storage.record_heartbeat(trial_id),
        server="study storage (PostgreSQL)",
        url=storage.url,
        doing=f"recording the heartbeat of trial {trial_id}",
    )
    thread = threading.Thread(target=beat, name=f"optuna-heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=every_s + 5)
