"""The pipeline's tune switch through `ml_pipeline` itself: search, train with the best, register, promote."""

from __future__ import annotations

import uuid
from pathlib import Path

import optuna
from mlflow import MlflowClient
from optuna.trial import TrialState

from aicml.models.options import TrainerOptions
from aicml.tuning.engine import SURPLUS_ATTR
from aicml.tuning.study import open_storage
from flows.pipeline import PipelineParams, ml_pipeline
from flows.tuning import SearchOptions
from tests.testdata import regression_csv

# Base options the search must override: three tiny layers, one epoch, a learning rate out of the space.
BASE = TrainerOptions(max_epochs=1, hidden=[4, 4, 4], learning_rate=0.5, batch_size=64, baseline=False,
                      progress_bar=False, accelerator="cpu")  # fmt: skip


def _children(client: MlflowClient, run_id: str) -> list:
    experiment = client.get_run(run_id).info.experiment_id
    return client.search_runs([experiment], filter_string=f"tags.mlflow.parentRunId = '{run_id}'")


def test_pipeline_tunes_then_trains_registers_and_promotes_the_tuned_model(stack, tmp_path: Path) -> None:
    name = f"tuned-pipe-{uuid.uuid4().hex[:6]}"
    study_name = f"{name}-study"
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    tune = SearchOptions(
        space={"learning_rate": {"kind": "float", "low": 1e-3, "high": 2e-2, "log": True},
               "hidden_width": {"kind": "int", "low": 8, "high": 24}},
        sampler="random", pruning={"pruner": "none", "plateau_patience": None}, budget={"n_trials": 3},
        max_epochs=3, parallel=2, storage_url=url, study_name=study_name,
    )  # fmt: skip
    params = PipelineParams(
        source=str(regression_csv(tmp_path / "data.csv", rows=400)),
        target="y",
        model_name=name,
        trainer=BASE,
        tune=tune,
        reuse_results=False,
    )
    first = ml_pipeline(params)

    study = optuna.load_study(study_name=study_name, storage=open_storage(url))
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 3, "the tiny budget: exactly three trials"
    # Two workers may both claim when two trials are left: the claim that lost the race is released as a
    # surplus (failed, marked) and never evaluated.
    others = [t for t in study.trials if t not in finished]
    assert all(t.state == TrialState.FAIL and t.user_attrs.get(SURPLUS_ATTR) for t in others), others
    trials_after_first = len(study.trials)
    best = study.best_trial

    # The final training used the best trial's parameters, not the base options.
    client = MlflowClient()
    final = [r for r in _children(client, first.mlflow_run_id) if r.info.run_name == "lightning"]
    assert len(final) == 1 and set(first.candidates) == {"lightning"}
    logged = final[0].data.params
    assert float(logged["learning_rate"]) == best.params["learning_rate"]
    assert logged["hidden"] == str([best.params["hidden_width"]])
    assert int(logged["max_epochs"]) == len(best.intermediate_values) == 3
    assert logged["batch_size"] == "64", "options the search does not touch are kept"

    # The study is tracked as in `tune`: a parent run with one nested run per trial.
    study_run = client.get_run(study.user_attrs["mlflow_parent_run_id"])
    assert study_run.info.status == "FINISHED"
    assert study_run.data.metrics["best_value"] == best.value
    trial_runs = {r.info.run_name for r in _children(client, study_run.info.run_id)}
    assert trial_runs == {f"trial-{t.number}" for t in finished}

    # Registered as challenger from that very run, and promoted (there was no champion).
    assert first.version == "1" and first.promoted
    challenger = client.get_model_version_by_alias(name, "challenger")
    assert challenger.version == "1" and challenger.run_id == final[0].info.run_id
    assert client.get_model_version_by_alias(name, "champion").version == "1"

    # Again on the finished study (resumed: no new trial), with a margin no model can beat: the
    # promotion rule keeps the champion and the new version stays challenger.
    second = ml_pipeline(params.model_copy(update={"promotion_margin": 1e6}))
    study = optuna.load_study(study_name=study_name, storage=open_storage(url))
    assert len(study.trials) == trials_after_first, "the resumed study ran no extra trial"
    assert second.version == "2" and not second.promoted
    assert "champion stays" in second.reason
    assert client.get_model_version_by_alias(name, "challenger").version == "2"
    assert client.get_model_version_by_alias(name, "champion").version == "1"
    again = [r for r in _children(client, second.mlflow_run_id) if r.info.run_name == "lightning"]
    assert again[0].data.params["hidden"] == logged["hidden"], "the same tuned parameters trained it"
