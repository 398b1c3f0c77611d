"""Keras through the trainer protocol (extra `aic-ml[tensorflow]`): skipped cleanly without TensorFlow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow", reason="TensorFlow is the optional extra aic-ml[tensorflow]")

from aicml.models.digits import load_digits_split
from aicml.models.jobs import TrainingJobSpec, run_training_job
from aicml.models.keras_trainer import KerasTrainer
from aicml.models.options import TrainerOptions
from aicml.models.trainers import Checkpointing, Trainer


def test_keras_trains_checkpoints_and_resumes(tmp_path: Path) -> None:
    data, test_x, test_y = load_digits_split(seed=4)
    options = TrainerOptions(max_epochs=3, batch_size=32, learning_rate=3e-3)
    trainer: Trainer = KerasTrainer(options)
    epochs: list[int] = []
    fitted = trainer.fit(data, lambda e, total, m: epochs.append(e), Checkpointing(tmp_path))
    assert epochs == [0, 1, 2]
    assert (tmp_path / "last.keras").exists() and (tmp_path / "best.keras").exists()

    longer = KerasTrainer(options.model_copy(update={"max_epochs": 5}))
    resumed = longer.fit(data, lambda e, total, m: epochs.append(e), Checkpointing(tmp_path))
    assert resumed.report.resumed_from_epoch == 3
    assert epochs[3:] == [3, 4]
    assert np.mean(resumed.predict(test_x) == test_y) > 0.8
    assert fitted.report.resumed_from_epoch is None


def test_keras_job_logs_one_mlflow_run_with_a_servable_model(stack: object, tmp_path: Path) -> None:
    import mlflow

    settings = stack.settings  # type: ignore[attr-defined]
    spec = TrainingJobSpec(
        job_id="digits-keras",
        family="digits",
        framework="keras",
        options=TrainerOptions(max_epochs=3, batch_size=32, learning_rate=3e-3),
        seed=4,
        checkpoint_root=str(tmp_path),
        tracking_uri=settings.tracking_uri,
        experiment="test-training-keras",
        system_metrics=False,
    )
    result = run_training_job(spec)
    assert result is not None and result.metrics["accuracy"] > 0.8
    client = mlflow.MlflowClient(settings.tracking_uri)
    assert len(client.get_metric_history(result.run_id, "val_loss")) == 3
    assert client.get_run(result.run_id).data.params["framework"] == "keras"
    _, test_x, test_y = load_digits_split(seed=4)
    predictions = mlflow.pyfunc.load_model(result.model_uri).predict(test_x[:40].astype("float32"))
    assert np.mean(predictions == test_y[:40]) > 0.75
