"""Shared helpers of the tuning tests: a study on a given storage, driven inline."""

from __future__ import annotations

from typing import Any

from aicml.tuning.engine import DriveOutcome, InlineExecutor, TrialJob, drive
from aicml.tuning.objectives import DataRef
from aicml.tuning.space import Budget, PruningOptions, SamplerName, SearchSpace
from aicml.tuning.study import make_pruner, make_sampler, open_storage, open_study


def run_inline(
    url: str,
    name: str,
    space: SearchSpace,
    objective: str,
    budget: Budget,
    sampler: SamplerName = "tpe",
    pruning: PruningOptions | None = None,
    max_epochs: int = 10,
    data: DataRef | None = None,
    max_trials: int | None = None,
    heartbeat_s: int = 5,
) -> tuple[Any, DriveOutcome]:
    pruning = pruning or PruningOptions(pruner="none", plateau_patience=None)
    storage = open_storage(url, heartbeat_s)
    study = open_study(
        name, storage, "minimize", make_sampler(sampler, space, 7), make_pruner(pruning, max_epochs)
    )

    def make_job(trial: Any) -> TrialJob:
        return TrialJob(
            study_name=name,
            storage_url=url,
            trial_id=trial._trial_id,
            number=trial.number,
            params=dict(trial.params),
            objective=objective,
            direction="minimize",
            max_epochs=max_epochs,
            pruning=pruning,
            data=data,
            heartbeat_s=heartbeat_s,
        )

    outcome = drive(study, space, budget, make_job, InlineExecutor(), max_trials=max_trials)
    return study, outcome
