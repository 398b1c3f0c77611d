"""GPU utilisation while training: the training task's Lightning trainer against a synthetic-data baseline.

The baseline is a hand-written loop on random tensors already on the GPU (the most a GPU can be
kept busy by this model and batch size); the trainer run is ``LightningTabularTrainer.fit`` on the
same model, batch size and amount of data, but starting from host arrays the way the task does.
A sampler thread reads NVML utilisation (``pynvml`` from the `gpu` extra; ``nvidia-smi`` otherwise)
every 100 ms while each run trains. Goal: training utilisation >= 90 % (the seed asks 80 %).

Without a CUDA GPU it is a dry run: tiny sizes on CPU, utilisation null, so the script is
exercised in CI. The last line is a JSON object.

    .venv/bin/python benchmarks/gpu_utilisation.py [--rows 1500000] [--features 256] [--batch-size 4096]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import subprocess
import threading
import time
import warnings
from typing import Any

import numpy as np


class UtilisationSampler:
    """Samples the GPU's utilisation (percent) in a thread between ``start`` and ``stop``."""

    def __init__(self, device_index: int = 0, interval_s: float = 0.1):
        self.device_index, self.interval_s = device_index, interval_s
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._read = self._reader()

    def _reader(self) -> Any:
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(self.device_index)
            return lambda: float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        except Exception:
            smi = shutil.which("nvidia-smi")
            if smi is None:
                return None
            query = [
                smi,
                "--query-gpu=utilization.gpu",
                "--format=csv,noheader,nounits",
                f"-i={self.device_index}",
            ]
            return lambda: float(
                subprocess.run(query, capture_output=True, text=True, check=True).stdout.strip()
            )

    @property
    def available(self) -> bool:
        return self._read is not None

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self._read())
            time.sleep(self.interval_s)

    def __enter__(self) -> UtilisationSampler:
        if self.available:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def summary(self) -> dict[str, float | None]:
        if not self.samples:
            return {"mean_pct": None, "median_pct": None}
        # The first samples cover start-up (CUDA context, first kernels); drop the first 10 %.
        steady = self.samples[len(self.samples) // 10 :] or self.samples
        return {
            "mean_pct": round(statistics.fmean(steady), 1),
            "median_pct": round(statistics.median(steady), 1),
        }


def synthetic_baseline(
    rows: int, features: int, hidden: list[int], batch_size: int, epochs: int, device: str
) -> float:
    """Samples/s of a plain loop on random data generated on the device (no input pipeline at all)."""
    import torch
    from torch import nn

    from aicml.models.tabular import TabularMLP

    torch.manual_seed(0)
    x = torch.randn(rows, features, device=device)
    y = torch.randint(0, 4, (rows,), device=device)
    network = TabularMLP(features, 4, hidden, 0.1).to(device)
    optimiser = torch.optim.AdamW(network.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(rows, device=device)
        for start in range(0, rows, batch_size):
            index = order[start : start + batch_size]
            optimiser.zero_grad(set_to_none=True)
            loss_fn(network(x[index]), y[index]).backward()
            optimiser.step()
    if device == "cuda":
        torch.cuda.synchronize()
    return rows * epochs / (time.perf_counter() - started)


def trainer_run(
    rows: int, features: int, hidden: list[int], batch_size: int, epochs: int, accelerator: str
) -> float:
    """Samples/s of the training task's Lightning trainer on host arrays of the same shape."""
    import pandas as pd

    from aicml.models.features import LabelCodec, TabularPreprocessor
    from aicml.models.options import TrainerOptions
    from aicml.models.trainers import LightningTabularTrainer, PreparedData

    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, features), dtype=np.float32)
    y = rng.integers(0, 4, rows).astype(np.int64)
    val = max(1, rows // 20)
    data = PreparedData(
        preprocessor=TabularPreprocessor(),
        codec=LabelCodec("classification", classes=[0, 1, 2, 3]),
        x_train=x,
        y_train=y,
        x_val=x[:val],
        y_val=y[:val],
        raw_train=pd.DataFrame(),
        seed=0,
    )
    options = TrainerOptions(
        max_epochs=epochs,
        batch_size=batch_size,
        hidden=hidden,
        accelerator=accelerator,  # type: ignore[arg-type]
        progress_bar=False,
    )
    started = time.perf_counter()
    LightningTabularTrainer(options).fit(data)
    return rows * epochs / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_500_000)
    parser.add_argument("--features", type=int, default=256)
    parser.add_argument("--hidden", type=int, nargs="+", default=[2048, 2048, 1024])
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on CPU even when a GPU is present")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    import torch

    gpu = torch.cuda.is_available() and not args.dry_run
    if not gpu:
        args.rows, args.features, args.hidden, args.batch_size, args.epochs = 4096, 16, [32], 256, 1
    device, accelerator = ("cuda", "gpu") if gpu else ("cpu", "cpu")
    name = torch.cuda.get_device_name(0) if gpu else "cpu (dry run)"
    print(
        f"device={name} rows={args.rows} features={args.features} hidden={args.hidden} batch={args.batch_size}"
    )

    with UtilisationSampler() as baseline_sampler:
        baseline_rate = synthetic_baseline(
            args.rows, args.features, args.hidden, args.batch_size, args.epochs, device
        )
    with UtilisationSampler() as trainer_sampler:
        trainer_rate = trainer_run(
            args.rows, args.features, args.hidden, args.batch_size, args.epochs, accelerator
        )
    baseline, training = baseline_sampler.summary(), trainer_sampler.summary()
    print(f"synthetic baseline: {baseline_rate:,.0f} samples/s, utilisation {baseline}")
    print(f"training task:      {trainer_rate:,.0f} samples/s, utilisation {training}")
    print(
        json.dumps(
            {
                "device": name,
                "dry_run": not gpu,
                "baseline_utilisation_pct": baseline["mean_pct"],
                "training_utilisation_pct": training["mean_pct"],
                "baseline_samples_per_s": round(baseline_rate, 1),
                "training_samples_per_s": round(trainer_rate, 1),
                "ratio": round(trainer_rate / baseline_rate, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
