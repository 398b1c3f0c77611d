"""On a CUDA GPU: a training job in its own process (as `train-flow` runs it) is accounted with GPU seconds
and GPU memory; an ingest of the same data with none. Skipped without a GPU, or without nvidia-ml-py (the
accounting reads the devices through NVML, and reports zero without it)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from aicml.usage.accounting import account_usage
from aicml.usage.store import UsageStore
from tests.testdata import regression_csv


def _gpu() -> tuple[bool, str]:
    if importlib.util.find_spec("torch") is None:
        return False, "torch is not installed"
    import torch

    if not torch.cuda.is_available():
        return False, f"no CUDA GPU (torch {torch.__version__}, built for CUDA {torch.version.cuda})"
    if importlib.util.find_spec("pynvml") is None:
        return False, "nvidia-ml-py is not installed (pip install 'aic-ml[gpu]')"
    return True, torch.cuda.get_device_name(0)


GPU, WHY = _gpu()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not GPU, reason=f"needs a CUDA GPU: {WHY}")]


def test_training_uses_gpu_seconds_and_ingest_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from aicml.data.connectors import FileConnector
    from aicml.data.integration import IngestJob, run_ingest
    from aicml.data.parallel import ClusterOptions
    from aicml.data.sinks import ParquetSink
    from aicml.models.jobs import TrainingJobSpec, run_training_process
    from aicml.models.options import TrainerOptions

    monkeypatch.chdir(tmp_path)
    source = regression_csv(tmp_path / "train.csv", rows=4_000)
    url = f"sqlite:///{tmp_path / 'usage.db'}"
    spec = TrainingJobSpec(
        job_id="gpu-usage",
        family="tabular",
        source=str(source),
        target="y",
        options=TrainerOptions(
            max_epochs=3, batch_size=256, accelerator="gpu", devices=1, progress_bar=False
        ),
        seed=3,
        checkpoint_root=str(tmp_path / "checkpoints"),
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        experiment="gpu-usage",
        system_metrics=False,
    )
    with account_usage("train-flow", store_url=url, interval=0.1) as training:
        run_training_process(spec, tmp_path / "job")
    job = IngestJob(
        "gpu-usage",
        FileConnector("train.csv", base_dir=str(tmp_path)),
        ParquetSink(str(tmp_path / "out")),
        str(tmp_path / "work"),
        cluster=ClusterOptions(kind="sync"),
    )
    with account_usage("ingest-flow", store_url=url, interval=0.1) as ingest:
        run_ingest(job)

    assert training.record is not None and ingest.record is not None
    assert training.record.gpu_s > 0 and training.record.gpu_memory_bytes > 0, training.record
    assert ingest.record.gpu_s == 0 and ingest.record.gpu_memory_bytes == 0, ingest.record
    assert {r.flow: r.gpu_s for r in UsageStore(url).read(0)} == {
        "train-flow": training.record.gpu_s,
        "ingest-flow": 0.0,
    }
