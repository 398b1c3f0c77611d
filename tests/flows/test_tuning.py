"""The tune flow on the real stack: trials on a Dask LocalCluster, MLflow runs, artifacts, resume after SIGKILL."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from aicml.tuning.study import open_storage
from flows.tuning import TuneParams, tune_flow
from tests.testdata import regression_csv

REPO = Path(__file__).resolve().parents[2]
TOYS = REPO / "tests" / "aicml" / "tuning"


def _artifact(key: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))


def test_tune_flow_parallel_trials_tracked_registered_and_promoted(stack, tmp_path: Path) -> None:
    name = f"tuned-{uuid.uuid4().hex[:6]}"
    params = TuneParams(
        source=str(regression_csv(tmp_path / "data.csv", rows=400)),
        target="y",
        model_name=name,
        model="lightning",
        space={
            "learning_rate": {"kind": "float", "low": 1e-3, "high": 3e-2, "log": True},
            "hidden_width": {"kind": "int", "low": 8, "high": 32},
        },
        sampler="tpe",
        pruning={"pruner": "median", "startup_trials": 2, "warmup_epochs": 1},
        budget={"n_trials": 4},
        max_epochs=4,
        parallel=2,
        storage_url=f"sqlite:///{tmp_path / 'optuna.db'}",
    )
    result = tune_flow(params)

    assert result.counts.get("COMPLETE", 0) + result.counts.get("PRUNED", 0) == 4
    assert result.trials_run_here == 4 and not result.resumed
    assert result.version == "1" and result.promoted and result.test_metric is not None
    client = MlflowClient()
    assert client.get_model_version_by_alias(name, "challenger").version == "1"
    assert client.get_model_version_by_alias(name, "champion").version == "1"

    parent = client.get_run(result.mlflow_run_id)
    assert parent.info.status == "FINISHED" and parent.data.metrics["best_value"] == result.best_value
    assert {a.path for a in client.list_artifacts(result.mlflow_run_id, "plots")} >= {
        "plots/optimization_history.png",
        "plots/parallel_coordinate.png",
        "plots/param_importances.png",
    }
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{result.mlflow_run_id}'"
    )
    trials = [r for r in children if r.info.run_name.startswith("trial-")]
    assert sorted(r.info.run_name for r in trials) == [f"trial-{i}" for i in range(4)]
    for run in trials:
        assert set(run.data.params) == {"learning_rate", "hidden_width"}
        assert run.data.tags["optuna.pruned"] in {"true", "false"}
        history = client.get_metric_history(run.info.run_id, "val_loss")
        assert [m.step for m in history] == list(range(int(run.data.metrics["epochs"])))
    # Trials really ran on two Dask worker processes, not in this one.
    workers = {r.data.tags["aicml.worker"] for r in trials}
    assert len(workers) == 2 and not any(w.endswith(f":{os.getpid()}") for w in workers)
    assert any(r.info.run_name == "lightning" for r in children), "the final model is a nested run too"

    table = _artifact("tuning-" + f"{name}-lightning".lower())
    assert table and table[0].type == "table"
    rows = json.loads(table[0].data) if isinstance(table[0].data, str) else table[0].data
    assert rows[0]["rank"] == 1 and rows[0]["value"] == pytest.approx(result.best_value, rel=1e-4)


def _states(url: str, study_name: str) -> list[TrialState]:
    study = optuna.load_study(study_name=study_name, storage=open_storage(url, 1))
    return [t.state for t in study.get_trials(deepcopy=False)]


def test_sigkilled_study_resumes_keeping_finished_trials(
    stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study_name = f"resume-{uuid.uuid4().hex[:6]}"
    ledger = tmp_path / "ledger.txt"
    params = TuneParams(
        source=str(regression_csv(tmp_path / "data.csv", rows=200)),
        target="y",
        objective="toy_objectives:curve",
        space={"x": {"kind": "float", "low": -4.0, "high": 6.0}},
        sampler="random",
        pruning={"pruner": "none", "plateau_patience": None},
        budget={"n_trials": 6},
        max_epochs=4,
        parallel=1,
        heartbeat_s=1,
        study_name=study_name,
        storage_url=url,
    )
    env = {
        **os.environ,
        **{k: v for k, v in stack.client_env().items() if k != "PROMETHEUS_MULTIPROC_DIR"},
        "PYTHONPATH": os.pathsep.join([str(TOYS), str(REPO)]),
        "TOY_LEDGER": str(ledger),
        "TOY_SLEEP": "0.5",
    }
    code = (
        "import sys; from flows.tuning import TuneParams, tune_flow; "
        "tune_flow(TuneParams.model_validate_json(sys.argv[1]))"
    )
    errors = (tmp_path / "stderr.txt").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-c", code, params.model_dump_json()],
        env=env, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL, stderr=errors,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            states = _states(url, study_name) if ledger.exists() else []
            if states.count(TrialState.COMPLETE) >= 2 and TrialState.RUNNING in states:
                break
            if process.poll() is not None:
                pytest.fail(
                    f"the tuning process exited early: {(tmp_path / 'stderr.txt').read_text()[-3000:]}"
                )
            time.sleep(0.2)
        else:
            pytest.fail(
                f"the tuning process never reached its third trial: {_states(url, study_name)} "
                f"{(tmp_path / 'stderr.txt').read_text()[-4000:]}"
            )
    finally:
        # The whole process group: the flow and its Dask workers die at once, as on a lost machine.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    before = _states(url, study_name)
    done_before = before.count(TrialState.COMPLETE)
    assert before.count(TrialState.RUNNING) == 1 and done_before >= 2
    study = optuna.load_study(study_name=study_name, storage=open_storage(url, 1))
    killed = next(t for t in study.trials if t.state == TrialState.RUNNING)
    kept = {t.number: t.value for t in study.trials if t.state == TrialState.COMPLETE}

    # Dask workers of this process import the toy objective and write to the same ledger.
    for key in ("PYTHONPATH", "TOY_LEDGER"):
        monkeypatch.setenv(key, env[key])
    monkeypatch.setenv("TOY_SLEEP", "0.05")
    monkeypatch.syspath_prepend(str(TOYS))
    result = tune_flow(params)

    assert result.resumed
    study = optuna.load_study(study_name=study_name, storage=open_storage(url, 1))
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) == 6, "total finished equals the number asked for"
    assert states.count(TrialState.FAIL) == 1 and TrialState.RUNNING not in states
    assert {n: v for n, v in kept.items()} == {t.number: t.value for t in study.trials if t.number in kept}, (
        "completed trials are kept as they were"
    )
    retry = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE and retry[0].params == killed.params
    assert result.trials_run_here == 6 - done_before
    evaluated = Counter(int(line.split()[1]) for line in ledger.read_text().splitlines())
    complete = {t.number for t in study.trials if t.state == TrialState.COMPLETE}
    assert all(evaluated[n] == 1 for n in complete), "each finished trial ran exactly once"
    assert set(evaluated) - complete <= {killed.number}, "nothing else ran but the interrupted trial"


def test_pipeline_tune_switch_returns_the_best_trainer_options(stack, tmp_path: Path) -> None:
    import pandas as pd
    from prefect import flow

    from aicml.models.options import TrainerOptions
    from flows.tuning import SearchOptions, tune_before_training

    parquet = tmp_path / "validated.parquet"
    pd.read_csv(regression_csv(tmp_path / "data.csv", rows=300)).to_parquet(parquet)
    options = SearchOptions(
        space={"learning_rate": {"kind": "float", "low": 1e-3, "high": 1e-2, "log": True},
               "hidden_width": {"kind": "int", "low": 8, "high": 16}},
        sampler="random", pruning={"pruner": "none", "plateau_patience": None}, budget={"n_trials": 2},
        max_epochs=2, parallel=1, storage_url=f"sqlite:///{tmp_path / 'optuna.db'}",
    )  # fmt: skip

    @flow(name="pipeline-like")
    def pipeline_like() -> TrainerOptions:
        base = TrainerOptions(progress_bar=False, hidden=[4, 4, 4], batch_size=64)
        return tune_before_training(
            options, str(parquet), "y", None, "aic-ml", f"switch-{uuid.uuid4().hex[:6]}", base
        )

    tuned = pipeline_like()
    assert 1e-3 <= tuned.learning_rate <= 1e-2
    assert len(tuned.hidden) == 1 and 8 <= tuned.hidden[0] <= 16, "sampled width replaces the base layers"
    assert tuned.batch_size == 64 and tuned.max_epochs == 2 and tuned.baseline, "the rest is kept"
