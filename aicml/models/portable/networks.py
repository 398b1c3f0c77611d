"""The torch networks a logged model rebuilds before loading its weights, and batched prediction."""

from __future__ import annotations

from collections.abc import Sequence

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


class SmallCNN(nn.Module):
    """Two 3x3 convolution blocks and a linear head, for (N, 1, H, W) inputs of any small size."""

    def __init__(self, n_outputs: int, channels: tuple[int, int] = (16, 32), dropout: float = 0.1):
        super().__init__()
        first, second = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, first, kernel_size=3, padding=1),
            nn.BatchNorm2d(first),
            nn.ReLU(),
            nn.Conv2d(first, second, kernel_size=3, padding=1),
            nn.BatchNorm2d(second),
            nn.ReLU(),
            nn.MaxPool2d(2),
            # Pool to a fixed 2x2 so the head does not depend on the input size.
            nn.AdaptiveAvgPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(second * 4, n_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.features(x))
        return out


def predict_array(network: nn.Module, x: np.ndarray, problem: str, batch_size: int = 65536) -> np.ndarray:
    """Class codes (classification) or scaled values (regression) for ``x``, in eval mode, no grad."""
    network.eval()
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            out = network(torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size])))
            outputs.append(out.argmax(-1).numpy() if problem == "classification" else out.squeeze(-1).numpy())
    return np.concatenate(outputs) if outputs else np.zeros(0)
