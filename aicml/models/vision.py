"""The image family: a small CNN for one-channel images and its DataModule (scikit-learn's bundled
8x8 digits are the built-in dataset, so no download is ever needed).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from aicml.errors import SchemaError
from aicml.models.modules import TensorDataModule


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


class ImageDataModule(TensorDataModule):
    """Image arrays of shape (N, 1, H, W), float32 in [0, 1], with integer class codes."""

    def __init__(
        self,
        x_train: np.ndarray,
        y_train: np.ndarray,
        x_val: np.ndarray,
        y_val: np.ndarray,
        *args: Any,
        **kwargs: Any,
    ):
        """``TensorDataModule``'s arguments; the images are checked for their channel axis first."""
        for name, images in (("x_train", x_train), ("x_val", x_val)):
            if images.ndim != 4 or images.shape[1] != 1:
                raise SchemaError(
                    f"{name} must have shape (N, 1, H, W); got {images.shape}: add the channel axis."
                )
        super().__init__(x_train, y_train, x_val, y_val, *args, **kwargs)
