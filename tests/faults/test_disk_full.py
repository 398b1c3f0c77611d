"""The disk fills up mid-write: an ingest, a training checkpoint, a backup, an MLflow model upload.

The full disk is real: an 8 MiB tmpfs mounted for the test (``small_disk`` in conftest.py; we run as
root in a container, where mounting one is allowed, else the tests skip saying so) and filled with a
ballast file at a chosen point of the run, so every later write fails with ENOSPC from the kernel. No
write is patched. Each case: the error names "No space left on device" and the path, no reader sees a
partial file, and after the ballast is removed a rerun completes with nothing lost or duplicated.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import psutil
import pytest

from aicml.data.integration import run_ingest
from aicml.data.sinks import ParquetSink
from aicml.errors import SourceError, TrainingError
from aicml.stack.local import LocalStack
from blocks.settings import AicSettings
from tests.faults.fault_helpers import check_id_sink, ingest_job, write_id_sources
from tests.services import Postgres, free_port

NO_SPACE = "No space left on device"
FILES, ROWS = 4, 2_000


@pytest.mark.parametrize("where", ["staging", "commit"])
def test_disk_full_during_an_ingest(small_disk: Any, tmp_path: Path, where: str) -> None:
    """The load's work directory and its Parquet dataset on the small disk. ``staging``: it fills while
    the third partition is written (nothing of the batch is committed); ``commit``: it fills between the
    second partition's files and its manifest (the first partition is committed, the second is not)."""
    src = tmp_path / "landing"
    expected = write_id_sources(src, FILES, ROWS)
    work, out = small_disk.root / "work", small_disk.root / "out"
    staged: list[int] = []
    committed: list[str] = []

    def fill_while_staging(number: int) -> None:
        if number == 0:
            staged.append(number)
            if len(staged) == 3:
                small_disk.fill()

    def fill_at_commit(identity: str) -> None:
        committed.append(identity)
        if len(committed) == 2:
            small_disk.fill()

    hooks: dict[str, Any] = (
        {"row_group_rows": 500, "on_row_group": fill_while_staging}
        if where == "staging"
        else {"on_commit_point": fill_at_commit}
    )
    with pytest.raises(SourceError) as raised:
        run_ingest(ingest_job(src, ParquetSink(str(out), **hooks), work))
    message = str(raised.value)
    assert NO_SPACE in message and str(small_disk.root) in message, message
    landed = check_id_sink(out, None, uncommitted=True)  # readers see whole partitions only
    assert len(landed) == (0 if where == "staging" else ROWS), len(landed)
    assert not list(out.rglob(".tmp-*")), "a half-written file is left in the dataset"

    small_disk.free()
    report = run_ingest(ingest_job(src, ParquetSink(str(out)), work))
    assert report.committed_rows == len(expected) - len(landed)
    check_id_sink(out, expected, uncommitted=True)
    assert set(out.rglob("*.parquet")) == {
        out / f for m in (out / "_manifests").glob("*.json") for f in json.loads(m.read_text())["files"]
    }, "files of the interrupted commit were not removed"


# Training: a digits CNN whose checkpoints live on the small disk.

MAX_EPOCHS = 4


def _epoch_of(path: Path) -> int | None:
    import torch

    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])
    except Exception:
        return None


@pytest.mark.slow  # two training processes (torch, Lightning, MLflow imports): about a minute
def test_disk_full_during_a_training_checkpoint(
    small_disk: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    from aicml.models.jobs import TrainingJobSpec, job_directory, run_training_process
    from aicml.models.options import TrainerOptions

    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root (./mlruns) lands here
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = TrainingJobSpec(
        job_id="digits-disk-full",
        family="digits",
        options=TrainerOptions(
            max_epochs=MAX_EPOCHS, batch_size=48, accelerator="cpu", progress_bar=False, learning_rate=3e-3
        ),
        seed=3,
        checkpoint_root=str(small_disk.root / "checkpoints"),
        tracking_uri=tracking,
        experiment="disk-full",
        system_metrics=False,
    )
    checkpoints = job_directory(spec) / "checkpoints"
    filled: list[int] = []

    def fill_after_first_epoch() -> None:
        """On the checkpoint file event (epoch 0's last.ckpt renamed into place), freeze the training
        process (SIGSTOP: no timing race with a fast epoch), fill the disk, and let it go on."""
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if (checkpoints / "last.ckpt").exists():
                child = next(
                    c
                    for c in psutil.Process().children(recursive=True)
                    if "aicml.models.jobs" in " ".join(c.cmdline())
                )
                child.send_signal(signal.SIGSTOP)
                try:
                    small_disk.fill()
                    filled.append(_epoch_of(checkpoints / "last.ckpt") or 0)
                finally:
                    child.send_signal(signal.SIGCONT)
                return
            time.sleep(0.005)

    watcher = threading.Thread(target=fill_after_first_epoch)
    watcher.start()
    with pytest.raises(TrainingError) as raised:
        run_training_process(spec, tmp_path / "work")
    watcher.join()
    message = str(raised.value)
    assert filled, "the disk was never filled"
    assert NO_SPACE in message and str(checkpoints) in message, message[-3000:]
    # Every checkpoint a resume could read is whole: none was cut short by the full disk.
    visible = sorted(checkpoints.glob("*.ckpt"))
    assert visible and all(_epoch_of(p) is not None for p in visible), visible
    epoch_kept = _epoch_of(checkpoints / "last.ckpt")
    assert epoch_kept is not None and epoch_kept < MAX_EPOCHS - 1
    assert not (checkpoints / ".tmp").exists() or not list((checkpoints / ".tmp").iterdir())

    small_disk.free()
    result = run_training_process(spec, tmp_path / "work")
    assert result.resumed_from_epoch == epoch_kept + 1
    assert result.epochs == MAX_EPOCHS and not result.discarded_checkpoints
    client = mlflow.MlflowClient(tracking)
    history = client.get_metric_history(result.run_id, "val_loss")
    # Every epoch logged to the job's one run; none lost.
    assert {m.step for m in history} == set(range(MAX_EPOCHS))


# Model logging: a stack of the test's own whose MLflow server keeps artifacts on the small disk.


@pytest.fixture
def artifacts_on_small_disk(
    small_disk: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[LocalStack]:
    """A local stack (own home, ports, SQLite) whose MLflow ``--artifacts-destination`` (<home>/mlartifacts)
    is a link to the small disk; its server running and this process's MLflow client pointed at it."""
    home = tmp_path / "aic"
    home.mkdir()
    (home / "mlartifacts").symlink_to(small_disk.root, target_is_directory=True)
    stack = LocalStack(
        AicSettings(
            home=home,
            prefect_port=free_port(),
            mlflow_port=free_port(),
            metrics_port=free_port(),
            database_url=None,
        )
    )
    saved = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    try:
        stack.up(services=("mlflow-server",))
        for name, value in stack.client_env().items():
            if name.startswith(("MLFLOW_", "AIC_")):
                monkeypatch.setenv(name, value)
        # One immediate retry, not the platform's ~62 s of them (a full disk stays full): same errors.
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "0")
        mlflow.set_tracking_uri(stack.settings.local_tracking_uri)
        mlflow.set_registry_uri(stack.settings.local_tracking_uri)
        yield stack
    finally:
        mlflow.set_tracking_uri(saved[0])
        mlflow.set_registry_uri(saved[1])
        stack.down()


def test_disk_full_while_mlflow_stores_a_model(
    artifacts_on_small_disk: LocalStack, small_disk: Any, tmp_path: Path
) -> None:
    """A scikit-learn candidate trained and logged through aic-ml (``train_candidates``), then registered
    (``register_challenger``). The disk is left 256 KiB: the run's features.json and plot fit, the model
    file (about 1 MiB) does not, so the server's write fails partway (ENOSPC) while MLflow uploads it."""
    from mlflow.entities import LoggedModelStatus

    from aicml.models.trainers import SklearnTrainer
    from aicml.models.training import TrainingOutcome, train_candidates
    from aicml.registry.checksums import CHECKSUM_TAG, artifact_digest, fetch_verified
    from aicml.registry.promotion import COMPLETE, REGISTRATION_TAG, register_challenger
    from aicml.retry import reporting_unreachable
    from tests.testdata import regression_csv

    uri = artifacts_on_small_disk.settings.local_tracking_uri
    frame = pd.read_csv(regression_csv(tmp_path / "rows.csv", rows=500))
    experiment = mlflow.set_experiment("disk-full-model").experiment_id
    client = mlflow.MlflowClient()

    def train() -> TrainingOutcome:
        # Wrapped as tasks/train.py wraps it: a client that gave up must not read as a server that is down.
        with reporting_unreachable("MLflow", uri, "logging the training run"):
            return train_candidates(frame, "y", None, [SklearnTrainer()], 3, tmp_path / "test")

    small_disk.fill(leave=256 * 1024)
    started = time.monotonic()
    with pytest.raises(TrainingError) as raised:
        train()
    message = str(raised.value)
    assert "Storing the model" in message and "artifact store" in message, message
    assert NO_SPACE in message and "mlartifacts" in message, message
    assert time.monotonic() - started < 30, "the upload was retried for long"

    # Nothing reads as a complete model: the run failed, its logged model is not READY, none registered,
    # and the model file that did not fit is not on the disk in part.
    (failed,) = client.search_runs([experiment])
    assert failed.info.status == "FAILED"
    (broken,) = client.search_logged_models([experiment])
    assert broken.source_run_id == failed.info.run_id and broken.status == LoggedModelStatus.FAILED
    assert not client.search_model_versions("name = 'disk-full'")
    left = [p.relative_to(small_disk.root) for p in small_disk.root.rglob("*") if p.is_file()]
    model_files = {p.name for p in left if "models" in p.parts}
    assert "model.skops" not in model_files, left  # smaller files of the model may have landed
    assert not [p for p in left if p.name.startswith(".") and p.name != small_disk.ballast.name], left

    small_disk.free()
    best = train().best
    registered = register_challenger("disk-full", best.model_uri, best.run_id, "r2", best.metrics["r2"])
    (version,) = client.search_model_versions("name = 'disk-full'")
    assert version.version == registered.version and version.run_id == best.run_id
    assert version.tags[REGISTRATION_TAG] == COMPLETE
    files = fetch_verified("disk-full", registered.version, tmp_path / "verified")
    assert artifact_digest(files) == version.tags[CHECKSUM_TAG]
    assert (files / "model.skops").is_file()
    assert client.get_logged_model(broken.model_id).status == LoggedModelStatus.FAILED


# Backup: pg_dump into a backup directory on the small disk (the shared server, a database of its own).


def test_disk_full_during_a_backup(
    postgres: Postgres, small_disk: Any, blob_database: str, tmp_path: Path
) -> None:
    from aicml.stack.backup import MANIFEST, BackupError, backup_databases, restore_database

    server = postgres.server_url
    output = small_disk.root / "backups"
    output.mkdir()
    # Leave 512 KiB: the backup starts, then pg_dump runs out of space partway through the dump.
    small_disk.fill(leave=512 * 1024)
    with pytest.raises(BackupError) as raised:
        backup_databases(server, [blob_database], output)
    message = str(raised.value)
    assert NO_SPACE in message and str(output) in message, message
    # Never published: no complete-looking backup, and the partial one is gone.
    assert not [p for p in output.iterdir() if not p.name.endswith(".partial")], list(output.iterdir())
    assert not list(output.glob("*/" + MANIFEST))

    small_disk.free()
    path = backup_databases(server, [blob_database], output)
    assert (path / MANIFEST).is_file() and not path.name.endswith(".partial")
    target = f"{blob_database}_back"
    try:
        restore_database(path, blob_database, server, target)
        with postgres.connect(target) as conn:
            assert conn.execute("SELECT count(*) FROM blobs").fetchone()[0] == 3000
    finally:
        postgres.drop_database(target)
