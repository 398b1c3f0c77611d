"""A real training process is SIGKILLed after a checkpoint; the rerun resumes from the next epoch."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest

from aicml.models.jobs import (
    TrainingInterrupted,
    TrainingJobSpec,
    job_directory,
    run_training_process,
)
from aicml.models.options import TrainerOptions

MAX_EPOCHS = 5


def _last_epoch(path: Path) -> int | None:
    import torch

    try:
        return int(torch.load(path, map_location="cpu", weights_only=False)["epoch"])
    except Exception:  # not written yet
        return None


def _training_child() -> psutil.Process | None:
    for child in psutil.Process().children(recursive=True):
        try:
            if "aicml.models.jobs" in " ".join(child.cmdline()):
                return child
        except psutil.Error:
            continue
    return None


def _kill_after_epoch(checkpoint: Path, epoch: int, killed: list[int], deadline_s: float = 240) -> None:
    """SIGKILL this process's training child once its last checkpoint is from ``epoch`` or later.

    Driven by the checkpoint file event, not by timing: each epoch's checkpoint replaces
    ``last.ckpt`` by a rename (a new inode). On the rename that follows the first ``epoch + 1`` saves,
    the child is frozen at once (SIGSTOP, one cheap ``stat`` per poll), so a loaded machine cannot let
    it train further while the checkpoint is read; only then is it killed.
    """
    end = time.monotonic() + deadline_s
    seen: set[int] = set()
    child = None
    while time.monotonic() < end:
        child = child or _training_child()
        try:
            inode = checkpoint.stat().st_ino
        except FileNotFoundError:
            inode = None
        if inode is not None and inode not in seen:
            seen.add(inode)
            if len(seen) >= epoch + 1 and child is not None:
                child.send_signal(signal.SIGSTOP)
                if (_last_epoch(checkpoint) or -1) >= epoch:
                    os.kill(child.pid, signal.SIGKILL)
                    killed.append(child.pid)
                    return
                child.send_signal(signal.SIGCONT)  # an earlier save than counted: go on
        time.sleep(0.005)


@pytest.mark.slow  # two training processes (one killed): over a minute on a busy 2-core machine
def test_killed_training_process_resumes_from_last_checkpoint(stack: object, tmp_path: Path) -> None:
    import mlflow

    settings = stack.settings  # type: ignore[attr-defined]
    spec = TrainingJobSpec(
        job_id="digits-resume",
        family="digits",
        options=TrainerOptions(
            max_epochs=MAX_EPOCHS, batch_size=48, accelerator="cpu", progress_bar=False, learning_rate=3e-3
        ),
        seed=3,
        checkpoint_root=str(tmp_path / "checkpoints"),
        tracking_uri=settings.tracking_uri,
        experiment="test-training-jobs",
        system_metrics_interval=1.0,
    )
    last = job_directory(spec) / "checkpoints" / "last.ckpt"
    killed: list[int] = []
    watcher = threading.Thread(target=_kill_after_epoch, args=(last, 1, killed))
    watcher.start()
    with pytest.raises(TrainingInterrupted, match="signal 9"):
        run_training_process(spec, tmp_path / "work")
    watcher.join()
    assert killed, "the training process finished before it could be killed"
    epoch_at_kill = _last_epoch(last)
    assert epoch_at_kill is not None and 1 <= epoch_at_kill < MAX_EPOCHS - 1
    first_run = (job_directory(spec) / "job.json").read_text()

    result = run_training_process(spec, tmp_path / "work")

    # It resumed after the last checkpointed epoch, not from epoch 0, and finished every epoch.
    assert result.resumed_from_epoch == epoch_at_kill + 1
    assert result.epochs == MAX_EPOCHS
    assert result.metrics["accuracy"] > 0.9
    # One MLflow run for the whole job, across the kill.
    assert result.run_id in first_run
    client = mlflow.MlflowClient(settings.tracking_uri)
    run = client.get_run(result.run_id)
    assert run.data.tags["aicml.resumed_from_epoch"] == str(epoch_at_kill + 1)
    steps = {m.step for m in client.get_metric_history(result.run_id, "val_loss")}
    assert set(range(epoch_at_kill + 1, MAX_EPOCHS)) <= steps
    # The final model loads from MLflow and predicts raw 8x8 images.
    from aicml.models.digits import load_digits_split

    _, test_x, test_y = load_digits_split(3)
    predictions = mlflow.pyfunc.load_model(result.model_uri).predict(test_x[:50])
    assert (predictions == test_y[:50]).mean() > 0.85
