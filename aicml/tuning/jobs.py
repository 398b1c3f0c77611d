"""The plain values the tuning engine hands between processes: where trials are logged, one trial's job and
result, one long-lived worker's job and report. Kept apart from `engine` so that what only plans or
describes a search (`search`, the flows) does not import Optuna.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aicml.tuning.objectives import DataRef
from aicml.tuning.space import Budget, PruningOptions, SearchSpace


@dataclass(frozen=True)
class TrackingRef:
    """Where trial runs are logged: an MLflow server, experiment and the study's parent run."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str


@dataclass(frozen=True)
class TrialJob:
    """Everything a worker needs to evaluate one claimed trial (plain values: it crosses processes)."""

    study_name: str
    storage_url: str
    trial_id: int
    number: int
    params: dict[str, Any]
    objective: str
    direction: str
    max_epochs: int
    pruning: PruningOptions
    data: DataRef | None = None
    base_options: dict[str, Any] = field(default_factory=dict)
    tracking: TrackingRef | None = None
    heartbeat_s: int = 30
    grace_s: int | None = None


@dataclass(frozen=True)
class TrialResult:
    """What one trial did."""

    number: int
    state: str  # COMPLETE, PRUNED or FAIL
    value: float | None
    params: dict[str, Any]
    epochs: int
    intermediate: dict[int, float]
    seconds: float
    error: str | None = None
    mlflow_run_id: str | None = None
    stopped_on_plateau: bool = False
    worker: str = ""
    # Seconds spent per phase: objective, record (study round trips of this trial), tracking (MLflow).
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class WorkerJob:
    """One long-lived worker: the study, how this worker samples, and the template of its trial jobs."""

    index: int
    space: SearchSpace
    sampler: str
    seed: int
    budget: Budget
    trial: TrialJob  # every field but trial_id, number and params, which each claim fills in
    max_trials: int | None = None


@dataclass(frozen=True)
class WorkerReport:
    """What one worker ran, and where its time went (wall and CPU seconds of its loop)."""

    index: int
    worker: str
    results: list[TrialResult]
    stop_reason: str
    started_at: float  # time.time() when the loop began, to measure the wait for a worker
    seconds: float
    cpu_seconds: float
    timings: dict[str, float]
