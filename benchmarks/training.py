"""Lightning training (the trainer the training task uses) against a hand-written PyTorch loop.

Same network (TabularMLP), same data, batch size, optimiser, epochs and per-epoch validation, same
torch thread count; runs alternate and the best of ``--repeats`` counts for each, since the machine
is shared. Wall-clock samples/s give the required figures; samples per CPU-second (process time) are
printed too, as they are far less sensitive to other processes on a busy machine. The last line is
a JSON object: lightning_samples_per_s, torch_samples_per_s, ratio (goal: ratio >= 0.9), plus the
CPU-time figures.

    .venv/bin/python benchmarks/training.py [--rows 60000] [--features 32] [--epochs 3] [--batch-size 512]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import warnings

import numpy as np
import pandas as pd


def make_data(rows: int, features: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, features)).astype(np.float32)
    weights = rng.normal(size=(features, 4)).astype(np.float32)
    y = (x @ weights).argmax(1).astype(np.int64)
    split = int(rows * 0.85)
    return {"x_train": x[:split], "y_train": y[:split], "x_val": x[split:], "y_val": y[split:]}


Rate = tuple[float, float]  # (samples per wall second, samples per CPU second)


def _rate(samples: int, wall: float, cpu: float) -> Rate:
    return samples / wall, samples / max(cpu, 1e-9)


def run_lightning(data: dict[str, np.ndarray], epochs: int, batch_size: int) -> Rate:
    """Samples/s of ``LightningTabularTrainer.fit`` (Trainer construction and validation included)."""
    from aicml.models.features import LabelCodec, TabularPreprocessor
    from aicml.models.options import TrainerOptions
    from aicml.models.trainers import LightningTabularTrainer, PreparedData

    codec = LabelCodec("classification", classes=[0, 1, 2, 3])
    prepared = PreparedData(
        preprocessor=TabularPreprocessor(),
        codec=codec,
        raw_train=pd.DataFrame(),
        seed=0,
        **data,
    )
    options = TrainerOptions(max_epochs=epochs, batch_size=batch_size, accelerator="cpu", progress_bar=False)
    started, cpu = time.perf_counter(), time.process_time()
    LightningTabularTrainer(options).fit(prepared)
    return _rate(len(data["x_train"]) * epochs, time.perf_counter() - started, time.process_time() - cpu)


def run_torch(data: dict[str, np.ndarray], epochs: int, batch_size: int) -> Rate:
    """Samples/s of a plain loop: the same network, slicing, optimiser, seed and per-epoch validation."""
    import torch
    from torch import nn

    from aicml.models.tabular import TabularMLP

    started, cpu = time.perf_counter(), time.process_time()
    torch.manual_seed(0)
    x, y = torch.from_numpy(data["x_train"]), torch.from_numpy(data["y_train"])
    xv, yv = torch.from_numpy(data["x_val"]), torch.from_numpy(data["y_val"])
    network = TabularMLP(x.shape[1], 4, [128, 64], 0.1)
    optimiser = torch.optim.AdamW(network.parameters(), lr=2e-3, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        network.train()
        order = torch.randperm(len(x), generator=generator)
        xs, ys = x[order], y[order]
        total = torch.zeros(())
        for start in range(0, len(xs), batch_size):
            xb, yb = xs[start : start + batch_size], ys[start : start + batch_size]
            optimiser.zero_grad(set_to_none=True)
            loss = loss_fn(network(xb), yb)
            loss.backward()
            optimiser.step()
            total += loss.detach() * len(xb)
        network.eval()
        with torch.no_grad():
            out = network(xv)
            _ = (loss_fn(out, yv).item(), (out.argmax(-1) == yv).float().mean().item(), total.item())
    return _rate(len(x) * epochs, time.perf_counter() - started, time.process_time() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=60_000)
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads for both")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
    import torch

    torch.set_num_threads(args.threads)
    data = make_data(args.rows, args.features)
    # Warm up both paths once (imports, allocator, kernels), then alternate.
    run_torch(data, 1, args.batch_size)
    run_lightning(data, 1, args.batch_size)
    lightning: list[Rate] = []
    plain: list[Rate] = []
    for repeat in range(args.repeats):
        lightning.append(run_lightning(data, args.epochs, args.batch_size))
        plain.append(run_torch(data, args.epochs, args.batch_size))
        print(
            f"repeat {repeat}: lightning {lightning[-1][0]:,.0f} samples/s ({lightning[-1][1]:,.0f}/cpu-s), "
            f"torch {plain[-1][0]:,.0f} samples/s ({plain[-1][1]:,.0f}/cpu-s)"
        )
    best_l, best_t = max(r[0] for r in lightning), max(r[0] for r in plain)
    cpu_l, cpu_t = max(r[1] for r in lightning), max(r[1] for r in plain)
    print(
        f"rows={args.rows} features={args.features} epochs={args.epochs} batch={args.batch_size} "
        f"threads={torch.get_num_threads()}"
    )
    print(
        json.dumps(
            {
                "lightning_samples_per_s": round(best_l, 1),
                "torch_samples_per_s": round(best_t, 1),
                "ratio": round(best_l / best_t, 3),
                "lightning_samples_per_cpu_s": round(cpu_l, 1),
                "torch_samples_per_cpu_s": round(cpu_t, 1),
                "ratio_cpu_time": round(cpu_l / cpu_t, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
