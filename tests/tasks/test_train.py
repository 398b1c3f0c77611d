"""The pipeline's train stage run as a deployment of `train-candidates` (the per-stage infrastructure path),
through the real Prefect server and process worker; and the retry rule of training jobs."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from aicml.data.gate import GateResult
from aicml.errors import SchemaError
from aicml.models.jobs import TrainingInterrupted
from aicml.models.options import TrainerOptions
from tasks.train import retry_if_interrupted, train_on_deployment

REPO = Path(__file__).resolve().parents[2]


def _state(exc: Exception) -> SimpleNamespace:
    def result() -> None:
        raise exc

    return SimpleNamespace(result=result)


def test_only_a_killed_training_process_is_retried() -> None:
    assert retry_if_interrupted(None, None, _state(TrainingInterrupted("killed by signal 9")))
    assert not retry_if_interrupted(None, None, _state(SchemaError("no label column")))
    assert not retry_if_interrupted(None, None, _state(RuntimeError("bug")))


def test_training_runs_as_a_deployment_and_returns_the_candidates(stack: object, tmp_path: Path) -> None:
    import mlflow
    from prefect import flow

    from tests.runs import local_deployments

    settings = stack.settings  # type: ignore[attr-defined]
    assert "train-candidates/local" in local_deployments(stack)
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"x": rng.normal(size=240), "z": rng.normal(size=240)})
    frame["y"] = np.where(frame["x"] - frame["z"] > 0, "up", "down")
    validated = tmp_path / "validated.parquet"
    frame.to_parquet(validated)
    gate = GateResult(str(validated), len(frame), 0, None, "")  # type: ignore[arg-type]
    mlflow.set_tracking_uri(settings.tracking_uri)
    experiment = mlflow.set_experiment("test-train-on-deployment").experiment_id
    parent = mlflow.MlflowClient().create_run(experiment, run_name="pipeline").info.run_id

    @flow(name="pipeline-stand-in")
    def pipeline() -> object:
        options = TrainerOptions(max_epochs=2, accelerator="cpu", progress_bar=False)
        return train_on_deployment(
            gate, "y", None, options, 7, "test-train-on-deployment", parent, "train-candidates/local", 600
        )

    outcome = pipeline()
    assert {c.name for c in outcome.candidates} == {"lightning", "sklearn"}  # type: ignore[attr-defined]
    assert outcome.best.metrics["accuracy"] > 0.8  # type: ignore[attr-defined]
    # The candidates are nested MLflow runs of the pipeline's run, logged by the deployment's flow run.
    for candidate in outcome.candidates:  # type: ignore[attr-defined]
        run = mlflow.MlflowClient().get_run(candidate.run_id)
        assert run.data.tags["mlflow.parentRunId"] == parent
