"""Lightning DDP with 2 CPU processes (gloo) reaches the quality of 1 process.

Tolerance: the DDP model's test accuracy on the digits may be at most 0.03 below the single-process
model's. Both train the same epochs on the same global batch (each of the 2 ranks takes half of it),
so they take the same optimiser steps.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from aicml.models.jobs import TrainingJobSpec, run_training_process
from aicml.models.options import TrainerOptions

TOLERANCE = 0.03
EPOCHS = 5


@pytest.mark.slow  # three training processes (1 + 2 DDP ranks): over a minute on 2 cores
def test_ddp_two_cpu_processes_match_one(stack: object, tmp_path: Path) -> None:
    import mlflow

    settings = stack.settings  # type: ignore[attr-defined]
    results = {}
    for name, devices, strategy in (("single", 1, "auto"), ("ddp", 2, "ddp")):
        spec = TrainingJobSpec(
            job_id=f"digits-{name}",
            family="digits",
            options=TrainerOptions(
                max_epochs=EPOCHS,
                batch_size=64,
                learning_rate=3e-3,
                accelerator="cpu",
                devices=devices,
                strategy=strategy,
                progress_bar=False,
            ),
            seed=11,
            checkpoint_root=str(tmp_path / "checkpoints"),
            tracking_uri=settings.tracking_uri,
            experiment="test-training-ddp",
            system_metrics=False,
        )
        results[name] = run_training_process(spec, tmp_path / "work", timeout=600)

    single, ddp = results["single"].metrics["accuracy"], results["ddp"].metrics["accuracy"]
    assert single > 0.9
    assert ddp >= single - TOLERANCE, (single, ddp)
    # The DDP run really ran two processes: rank 1 was started by Lightning with the job's command.
    log = (tmp_path / "work" / "digits-ddp.log").read_text()
    assert "distributed_backend=gloo" in log and "All distributed processes registered" in log, log[-2000:]
    # One MLflow run for the DDP job (rank 1 logs nothing), with every epoch.
    client = mlflow.MlflowClient(settings.tracking_uri)
    runs = client.search_runs(
        [client.get_experiment_by_name("test-training-ddp").experiment_id],
        filter_string="tags.`aicml.job_id` = 'digits-ddp'",
    )
    assert len(runs) == 1
    assert len(client.get_metric_history(runs[0].info.run_id, "val_loss")) == EPOCHS
    assert runs[0].data.params["strategy"] == "ddp" and runs[0].data.params["devices"] == "2"
