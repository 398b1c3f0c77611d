"""The tabular network, its LightningModule and its DataModule, kept separate.

Batches are sliced from tensors held in memory (one permutation per epoch, no per-row Python),
which keeps Lightning within a few percent of a hand-written loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import lightning as L
import numpy as np
import torch
from torch import nn


class TabularMLP(nn.Module):
    """A feed-forward network for a float feature vector."""

    def __init__(
        self, n_features: int, n_outputs: int, hidden: Sequence[int] = (128, 64), dropout: float = 0.1
    ):
        super().__init__()
        layers: list[nn.Module] = []
        width = n_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.LayerNorm(size), nn.GELU(), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, n_outputs))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out


class TensorBatches:
    """An iterable of (x, y) batches sliced from in-memory tensors; reshuffled each epoch."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool, seed: int = 0):
        self.x, self.y, self.batch_size, self.shuffle = x, y, batch_size, shuffle
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return (len(self.x) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.x)
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator)
            x, y = self.x[order], self.y[order]
        else:
            x, y = self.x, self.y
        for start in range(0, n, self.batch_size):
            yield x[start : start + self.batch_size], y[start : start + self.batch_size]


class TabularDataModule(L.LightningDataModule):
    """Train and validation arrays as tensor batches; pinned memory when a GPU trains."""

    def __init__(
        self,
        x_train: np.ndarray,
        y_train: np.ndarray,
        x_val: np.ndarray,
        y_val: np.ndarray,
        batch_size: int = 512,
        seed: int = 0,
        pin_memory: bool = False,
    ):
        super().__init__()
        self.batch_size, self.seed = batch_size, seed
        self.train = self._tensors(x_train, y_train, pin_memory)
        self.val = self._tensors(x_val, y_val, pin_memory)

    @staticmethod
    def _tensors(x: np.ndarray, y: np.ndarray, pin: bool) -> tuple[torch.Tensor, torch.Tensor]:
        # Writable, contiguous copies only when needed: torch warns on (and must not share) read-only memory.
        tx = torch.from_numpy(np.require(x, requirements=["C", "W"]))
        ty = torch.from_numpy(np.require(y, requirements=["C", "W"]))
        return (tx.pin_memory(), ty.pin_memory()) if pin else (tx, ty)

    def train_dataloader(self) -> TensorBatches:
        return TensorBatches(*self.train, batch_size=self.batch_size, shuffle=True, seed=self.seed)

    def val_dataloader(self) -> TensorBatches:
        return TensorBatches(*self.val, batch_size=max(self.batch_size, 4096), shuffle=False)


class TabularModule(L.LightningModule):
    """Training logic: loss, optimiser, epoch-level metrics (no per-step logging)."""

    def __init__(self, network: nn.Module, problem: str, lr: float = 2e-3, weight_decay: float = 1e-4):
        super().__init__()
        self.network, self.problem, self.lr, self.weight_decay = network, problem, lr, weight_decay
        self.loss: nn.Module = nn.CrossEntropyLoss() if problem == "classification" else nn.MSELoss()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.network(x)
        return out if self.problem == "classification" else out.squeeze(-1)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        out = self(x)
        return self.loss(out, y), out

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, _ = self._step(batch)
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=len(batch[0]))
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        loss, out = self._step(batch)
        self.log("val_loss", loss, on_step=False, on_epoch=True, batch_size=len(batch[0]))
        if self.problem == "classification":
            accuracy = (out.argmax(-1) == batch[1]).float().mean()
            self.log("val_accuracy", accuracy, on_step=False, on_epoch=True, batch_size=len(batch[0]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)


class EpochCallback(L.Callback):
    """Calls ``hook(epoch, max_epochs, metrics)`` once per epoch, after validation."""

    def __init__(self, hook: Callable[[int, int, dict[str, float]], None]):
        super().__init__()
        self.hook = hook

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        self.hook(trainer.current_epoch, trainer.max_epochs or 0, metrics)


def predict_array(network: nn.Module, x: np.ndarray, problem: str, batch_size: int = 65536) -> np.ndarray:
    """Class codes (classification) or scaled values (regression) for ``x``, in eval mode, no grad."""
    network.eval()
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            out = network(torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size])))
            outputs.append(out.argmax(-1).numpy() if problem == "classification" else out.squeeze(-1).numpy())
    return np.concatenate(outputs) if outputs else np.zeros(0)


def predict_proba_array(network: nn.Module, x: np.ndarray) -> np.ndarray:
    network.eval()
    with torch.inference_mode():
        return torch.softmax(network(torch.from_numpy(np.ascontiguousarray(x))), dim=-1).numpy()
