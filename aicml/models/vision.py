"""The image family: a small CNN for one-channel images and its DataModule (scikit-learn's bundled
8x8 digits are the built-in dataset, so no download is ever needed).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from aicml.errors import SchemaError
from aicml.models.modules import TensorDataModule

# The network is the one a logged model rebuilds (shipped with it); it keeps its name here.
from aicml.models.portable.networks import SmallCNN

__all__ = ["ImageDataModule", "SmallCNN"]


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
