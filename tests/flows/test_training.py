"""train_flow against the real local stack: one MLflow run with params, per-epoch and system metrics,
the model with signature and input example, the best checkpoint; and the training-jobs counter."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from aicml.models.options import TrainerOptions
from aicml.observability.metrics import REGISTRY
from deployments.presets import deployment_params
from flows.training import TrainParams, TrainResult, job_spec, train_flow

REPO = Path(__file__).resolve().parents[2]


def _jobs(outcome: str) -> float:
    return REGISTRY.get_sample_value("ml_training_jobs_total", {"outcome": outcome}) or 0.0


def test_train_flow_logs_one_complete_run(
    stack: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    from mlflow.models import get_model_info

    # Sample system metrics every half second: on an idle machine the three epochs take only seconds.
    monkeypatch.setenv("AIC_TRAINING_SYSTEM_METRICS_INTERVAL", "0.5")

    before = _jobs("success")
    params = TrainParams(
        family="digits",
        trainer=TrainerOptions(max_epochs=3, batch_size=64, accelerator="cpu", progress_bar=False),
        checkpoint_dir=str(tmp_path),
        experiment="test-train-flow",
        seed=5,
    )
    result = train_flow(params)

    assert result.epochs == 3 and result.resumed_from_epoch is None
    assert result.metrics["accuracy"] > 0.85
    assert _jobs("success") == before + 1
    client = mlflow.MlflowClient(stack.settings.tracking_uri)  # type: ignore[attr-defined]
    runs = client.search_runs(
        [client.get_experiment_by_name("test-train-flow").experiment_id],
        filter_string=f"tags.`aicml.job_id` = '{result.job_id}'",
    )
    assert [r.info.run_id for r in runs] == [result.mlflow_run_id]
    run = runs[0]
    assert run.data.params["framework"] == "lightning" and run.data.params["max_epochs"] == "3"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [0, 1, 2]
    assert any(key.startswith("system/cpu_utilization") for key in run.data.metrics), run.data.metrics.keys()
    assert any(key.startswith("system/system_memory") for key in run.data.metrics)
    info = get_model_info(result.model_uri)
    assert info.signature is not None and info.signature.inputs is not None
    assert info.saved_input_example_info is not None
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")]
    assert result.best_checkpoint_artifact in artifacts


def test_train_flow_sklearn_on_a_table(stack: object, tmp_path: Path) -> None:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=300), "b": rng.choice(["x", "y"], size=300)})
    frame["label"] = np.where(frame["a"] + (frame["b"] == "x") > 0.5, "yes", "no")
    source = tmp_path / "table.csv"
    frame.to_csv(source, index=False)
    params = TrainParams(
        family="tabular",
        framework="sklearn",
        source=str(source),
        target="label",
        checkpoint_dir=str(tmp_path / "ckpt"),
        experiment="test-train-flow",
        isolate=False,
        system_metrics=False,
    )
    result = train_flow(params)
    assert result.metrics["accuracy"] > 0.85 and result.epochs == 0


def test_job_id_is_stable_and_changes_with_the_job() -> None:
    a = job_spec(TrainParams(family="digits", seed=1)).job_id
    assert a == job_spec(TrainParams(family="digits", seed=1)).job_id
    assert a != job_spec(TrainParams(family="digits", seed=2)).job_id
    assert job_spec(TrainParams(job_id="mine")).job_id == "mine"


@pytest.mark.parametrize("name", ["local", "k8s-gpu"])
def test_prefect_yaml_presets_validate(name: str) -> None:
    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    entry = next(
        d
        for d in config["deployments"]
        if d["entrypoint"] == "flows/training.py:train_flow" and d["name"] == name
    )
    TrainParams.model_validate(deployment_params(entry))


def test_train_flow_has_one_result_shape() -> None:
    # The pipeline's candidates are a flow of their own (`train-candidates`): no mode flag switches the shape.
    assert "pipeline_candidates" not in TrainParams.model_fields
    assert "outcome" not in TrainResult.model_fields
    assert {"job_id", "mlflow_run_id", "model_uri", "epochs"} <= {
        name for name, field in TrainResult.model_fields.items() if field.is_required()
    }


def test_train_candidates_flow_returns_the_outcome_nested_under_the_pipeline_run(
    stack: object, tmp_path: Path
) -> None:
    import mlflow
    import numpy as np
    import pandas as pd

    from aicml.models.contract import CandidatesJob
    from aicml.registry.tracking import Tracking
    from flows.candidates import train_candidates_flow

    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"x": rng.normal(size=240), "z": rng.normal(size=240)})
    frame["y"] = np.where(frame["x"] - frame["z"] > 0, "up", "down")
    validated = tmp_path / "validated.parquet"
    frame.to_parquet(validated)
    tracking = Tracking(uri=stack.settings.tracking_uri, experiment="test-train-candidates")  # type: ignore[attr-defined]
    parent = tracking.client().create_run(tracking.experiment_id(), run_name="pipeline").info.run_id
    job = CandidatesJob(
        source=str(validated),
        target="y",
        trainer=TrainerOptions(max_epochs=2, accelerator="cpu", progress_bar=False),
        seed=7,
        experiment="test-train-candidates",
        parent_run_id=parent,
    )
    # What the pipeline sends is the model itself, dumped: the contract round-trips through JSON.
    assert CandidatesJob.model_validate(job.model_dump(mode="json")) == job

    outcome = train_candidates_flow(job)

    assert {c.name for c in outcome.candidates} == {"lightning", "sklearn"}
    assert outcome.best.metrics["accuracy"] > 0.8
    for candidate in outcome.candidates:
        run = mlflow.MlflowClient(tracking.uri).get_run(candidate.run_id)
        assert run.data.tags["mlflow.parentRunId"] == parent


def test_the_candidates_job_refuses_a_source_with_a_password() -> None:
    from pydantic import ValidationError

    from aicml.models.contract import CandidatesJob

    with pytest.raises(ValidationError) as raised:
        CandidatesJob(source="postgresql+psycopg://loader:Canary-pw@db:5432/sales#orders", target="y")
    assert "source" in str(raised.value) and "Canary-pw" not in str(raised.value)
