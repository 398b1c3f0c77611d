"""On a CUDA GPU: the tabular Lightning model trained on the device, served by ``aicml serve`` and asked
for predictions, and the GPU utilisation benchmark's measurement run briefly.

Every test here is marked ``gpu`` and skips itself, naming why, where ``torch.cuda.is_available()`` is
false (no GPU, no driver, or a CPU-only torch); ``pytest -m gpu`` selects them on a GPU machine.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import httpx
import pandas as pd
import pytest

from tests.serving_support import start_server, stop_server
from tests.testdata import regression_csv


def _cuda() -> tuple[bool, str]:
    if importlib.util.find_spec("torch") is None:
        return False, "torch is not installed"
    import torch

    if not torch.cuda.is_available():
        return False, f"no CUDA GPU (torch {torch.__version__}, built for CUDA {torch.version.cuda})"
    return True, torch.cuda.get_device_name(0)


CUDA, WHY = _cuda()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason=f"needs a CUDA GPU: {WHY}")]


def test_tabular_model_trains_on_the_gpu_and_is_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    import torch

    from aicml.models.jobs import TrainingJobSpec, run_training_job
    from aicml.models.options import TrainerOptions
    from aicml.registry.promotion import register_challenger
    from aicml.registry.tracking import Tracking

    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root (./mlruns) lands here
    tracking = Tracking(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="gpu-tests")
    source = regression_csv(tmp_path / "train.csv", rows=2_000)
    spec = TrainingJobSpec(
        job_id="gpu-tabular",
        family="tabular",
        source=str(source),
        target="y",
        options=TrainerOptions(
            max_epochs=3, batch_size=256, accelerator="gpu", devices=1, progress_bar=False
        ),
        seed=7,
        checkpoint_root=str(tmp_path / "checkpoints"),
        tracking_uri=tracking.uri,
        experiment=tracking.experiment,
        system_metrics=False,
    )
    torch.cuda.reset_peak_memory_stats()
    result = run_training_job(spec)
    assert result is not None and result.epochs >= 1
    # The network and its batches were on the device: CUDA memory was allocated while it trained.
    assert torch.cuda.max_memory_allocated() > 0

    tracking.activate()
    name = "gpu-tabular"
    metric = result.primary_metric
    version = register_challenger(name, result.model_uri, result.run_id, metric, result.metrics[metric])
    tracking.client().set_registered_model_alias(name, "champion", version.version)
    frame = pd.read_csv(source).drop(columns=["y"]).head(16)
    expected = mlflow.pyfunc.load_model(result.model_uri).predict(frame)
    expected = [float(v) for v in pd.Series(list(pd.DataFrame(expected).iloc[:, 0]))]

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking.uri)  # the server process resolves models:/ there
    server = start_server(f"models:/{name}@champion", tmp_path)
    try:
        answer = httpx.post(
            f"{server.url}/invocations",
            json={"dataframe_split": frame.to_dict(orient="split")},
            headers=server.headers(),
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
        predictions = [float(v) for v in answer.json()["predictions"]]
        assert predictions == pytest.approx(expected, rel=1e-5, abs=1e-5)
    finally:
        stop_server(server)


def test_gpu_utilisation_benchmark_measures_a_short_run() -> None:
    from benchmarks.gpu_utilisation import UtilisationSampler, synthetic_baseline, trainer_run

    sizes = {"rows": 65_536, "features": 64, "hidden": [256, 256], "batch_size": 4_096, "epochs": 2}
    with UtilisationSampler(interval_s=0.05) as baseline_sampler:
        baseline_rate = synthetic_baseline(**sizes, device="cuda")
    with UtilisationSampler(interval_s=0.05) as trainer_sampler:
        trainer_rate = trainer_run(**sizes, accelerator="gpu")
    assert baseline_rate > 0 and trainer_rate > 0
    if baseline_sampler.available:  # NVML (the `gpu` extra) or nvidia-smi: the sampler read the device
        assert baseline_sampler.samples and trainer_sampler.samples
        summary = trainer_sampler.summary()
        assert summary["mean_pct"] is not None and 0 <= summary["mean_pct"] <= 100
