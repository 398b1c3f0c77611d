"""The engine on a real SQLite study: samplers, pruners, plateau stop, budgets, built-in objectives."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest
from optuna.trial import TrialState
from tuning_helpers import run_inline

from aicml.tuning.errors import TuningError
from aicml.tuning.objectives import DataRef
from aicml.tuning.space import Budget, CategoricalParam, FloatParam, IntParam, PruningOptions
from tests.testdata import regression_csv

X = {"x": FloatParam(low=-4.0, high=6.0)}


def _url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'optuna.db'}"


@pytest.mark.parametrize("sampler", ["tpe", "random", "cmaes", "hyperopt"])
def test_each_sampler_finishes_exactly_the_budget_and_learns(tmp_path: Path, sampler: str) -> None:
    space = {"x": FloatParam(low=-4.0, high=6.0), "y": FloatParam(low=-5.0, high=5.0)}
    study, outcome = run_inline(
        _url(tmp_path), sampler, space, "toy_objectives:quadratic", Budget(n_trials=24), sampler=sampler
    )
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) == 24 and len(states) == 24
    assert outcome.stop_reason == "24 trials finished"
    # The quadratic's minimum is 0 at (2, -1); 24 guided trials get well below a random first guess.
    first = study.trials[0].value
    assert study.best_value < 2.0 and study.best_value < first


def test_grid_enumerates_every_point_once(tmp_path: Path) -> None:
    space = {"x": FloatParam(low=0.0, high=3.0, step=1.0), "y": CategoricalParam(choices=[-1.0, 1.0])}
    study, _ = run_inline(
        _url(tmp_path), "grid", space, "toy_objectives:quadratic", Budget(n_trials=8), sampler="grid"
    )
    points = sorted((t.params["x"], t.params["y"]) for t in study.trials)
    assert points == sorted((x, y) for x in (0.0, 1.0, 2.0, 3.0) for y in (-1.0, 1.0))
    assert study.best_params == {"x": 2.0, "y": -1.0}


@pytest.mark.parametrize("pruner", ["median", "successive_halving", "hyperband"])
def test_pruners_cut_epochs_and_keep_the_best(tmp_path: Path, pruner: str) -> None:
    pruning = PruningOptions(pruner=pruner, plateau_patience=None, startup_trials=3, warmup_epochs=1)
    study, outcome = run_inline(
        _url(tmp_path), pruner, X, "toy_objectives:curve", Budget(n_trials=16), sampler="random",
        pruning=pruning, max_epochs=9,
    )  # fmt: skip
    pruned = [r for r in outcome.results if r.state == "PRUNED"]
    assert pruned, "some bad trials are cut"
    assert all(r.epochs < 9 for r in pruned)
    assert sum(r.epochs for r in outcome.results) < 16 * 9
    assert len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 16
    # The best completed trial ran all its epochs: pruning never cut the winner short.
    assert len(study.best_trial.intermediate_values) == 9


def test_plateau_stops_a_trial_and_keeps_its_best_value(tmp_path: Path) -> None:
    pruning = PruningOptions(pruner="none", plateau_patience=2, min_delta=0.0)
    study, outcome = run_inline(
        _url(tmp_path), "flat", X, "toy_objectives:flat", Budget(n_trials=2), pruning=pruning, max_epochs=20
    )
    assert all(r.stopped_on_plateau and r.epochs == 5 for r in outcome.results)
    assert study.best_value == 0.5 and study.trials[0].state == TrialState.COMPLETE


def test_patience_and_timeout_stop_the_study(tmp_path: Path) -> None:
    # Random search on a wide range: improvements stop quickly, so patience ends it before 200 trials.
    study, outcome = run_inline(
        _url(tmp_path), "patient", X, "toy_objectives:quadratic", Budget(n_trials=200, patience=3),
        sampler="random",
    )  # fmt: skip
    assert "without improvement" in outcome.stop_reason
    assert len(study.trials) < 200
    started = time.monotonic()
    _, outcome = run_inline(
        _url(tmp_path), "timed", X, "toy_objectives:quadratic", Budget(n_trials=100_000, timeout_s=1.5)
    )
    assert outcome.stop_reason.startswith("timeout") and time.monotonic() - started < 30


def test_an_objective_that_always_fails_stops_with_its_error(tmp_path: Path) -> None:
    with pytest.raises(TuningError, match="this objective always fails"):
        run_inline(_url(tmp_path), "broken", X, "toy_objectives:broken", Budget(n_trials=10))


@pytest.mark.parametrize("model", ["sgd", "hgb", "mlp"])
def test_iterative_sklearn_models_report_every_epoch_and_prune(tmp_path: Path, model: str) -> None:
    csv = regression_csv(tmp_path / "data.csv", rows=400)
    parquet = tmp_path / "data.parquet"
    pd.read_csv(csv).to_parquet(parquet)
    data = DataRef(str(parquet), "y", "regression", 42)
    from aicml.tuning.space import default_space

    pruning = PruningOptions(pruner="median", startup_trials=2, warmup_epochs=1, plateau_patience=3)
    study, outcome = run_inline(
        _url(tmp_path), model, default_space(model), model, Budget(n_trials=4), sampler="random",
        pruning=pruning, max_epochs=4, data=data,
    )  # fmt: skip
    assert {r.state for r in outcome.results} <= {"COMPLETE", "PRUNED"}
    assert all(r.epochs >= 1 and list(r.intermediate) == list(range(r.epochs)) for r in outcome.results)
    # Scaled targets: a fitted model's validation MSE is well below the variance (1.0).
    assert study.best_value < 0.5


def test_lightning_objective_reports_val_loss_per_epoch(tmp_path: Path) -> None:
    csv = regression_csv(tmp_path / "data.csv", rows=300)
    parquet = tmp_path / "data.parquet"
    pd.read_csv(csv).to_parquet(parquet)
    space = {
        "learning_rate": FloatParam(low=1e-3, high=1e-2, log=True),
        "hidden_width": IntParam(low=8, high=16),
    }
    study, outcome = run_inline(
        _url(tmp_path), "light", space, "lightning", Budget(n_trials=2), sampler="random", max_epochs=3,
        data=DataRef(str(parquet), "y", "regression", 42),
    )  # fmt: skip
    assert [r.epochs for r in outcome.results] == [3, 3]
    assert all(r.state == "COMPLETE" and r.value is not None for r in outcome.results)
    assert study.best_value == min(min(r.intermediate.values()) for r in outcome.results)


def test_two_workers_share_a_grid_and_take_each_point_once(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor
    from itertools import product

    from aicml.tuning.engine import SURPLUS_ATTR, TrialJob, WorkerJob, enqueue_grid, run_worker
    from aicml.tuning.study import make_sampler, open_storage, open_study

    space = {"x": FloatParam(low=0.0, high=3.0, step=1.0), "y": CategoricalParam(choices=[-1.0, 1.0])}
    url = _url(tmp_path)
    study = open_study("grid2", open_storage(url, 5), "minimize", make_sampler("grid", space, 7))
    assert enqueue_grid(study, space) == 8
    assert enqueue_grid(study, space) == 0, "queued points are not queued twice"
    template = TrialJob("grid2", url, -1, -1, {}, "toy_objectives:quadratic", "minimize", 1,
                        PruningOptions(pruner="none", plateau_patience=None), heartbeat_s=5)  # fmt: skip
    jobs = [WorkerJob(i, space, "grid", 7, Budget(n_trials=8), template, max_trials=8) for i in range(2)]
    with ThreadPoolExecutor(2) as pool:
        reports = list(pool.map(run_worker, jobs))

    # Each point evaluated once; a claim that lost the race for the last slot is kept as a surplus FAIL.
    assert sum(len(r.results) for r in reports) == 8
    evaluated = [t for t in study.trials if not t.user_attrs.get(SURPLUS_ATTR)]
    assert len(evaluated) == 8
    assert all(t.state == TrialState.FAIL for t in study.trials if t.user_attrs.get(SURPLUS_ATTR))
    points = sorted((t.params["x"], t.params["y"]) for t in study.trials if t.state == TrialState.COMPLETE)
    assert points == sorted(product((0.0, 1.0, 2.0, 3.0), (-1.0, 1.0)))
    assert all(r.stop_reason == "8 trials finished" for r in reports)
    assert all(r.timings["objective"] >= 0 and r.timings["claim"] > 0 for r in reports if r.results)


@pytest.mark.slow  # about 35 s: the adoption waits ten grace periods
def test_a_claim_killed_before_its_first_heartbeat_is_retried_not_waited_for(tmp_path: Path) -> None:
    """A driver killed between ``ask`` (RUNNING) and its first heartbeat leaves a trial Optuna never
    calls stale; the next driver adopts it, fails it after the grace period and retries its point."""
    import optuna

    from aicml.tuning.engine import claim_trial
    from aicml.tuning.study import open_storage

    url, name, space = _url(tmp_path), "orphan", {"x": FloatParam(low=-4.0, high=6.0)}
    storage = open_storage(url, 1)
    dead = optuna.create_study(study_name=name, storage=storage)
    orphan = claim_trial(dead, 4, space)  # the dead driver's claim: RUNNING, never a heartbeat
    assert orphan is not None
    started = time.monotonic()
    study, outcome = run_inline(
        url, name, space, "toy_objectives:quadratic", Budget(n_trials=4), sampler="random", heartbeat_s=1
    )
    # Adopted ten grace periods (30 s at a 1 s heartbeat) after the claim, failed one grace later.
    assert time.monotonic() - started < 90, "the driver waited on the orphan instead of adopting it"
    trials = {t.number: t for t in study.trials}
    assert trials[orphan.number].state == TrialState.FAIL
    retry = [t for t in study.trials if t.system_attrs.get("failed_trial") == orphan.number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    assert retry[0].params == trials[orphan.number].params
    assert [t.state for t in study.trials].count(TrialState.COMPLETE) == 4
    assert outcome.stop_reason
