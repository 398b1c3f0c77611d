"""The tabular network and its DataModule; the LightningModule is the shared ``SupervisedModule``.

Batches are sliced from tensors held in memory (one permutation per epoch, no per-row Python),
which keeps Lightning within a few percent of a hand-written loop.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from aicml.models.modules import (
    EpochCallback,
    SupervisedModule,
    TensorBatches,
    TensorDataModule,
    predict_array,
)

# The network is the one a logged model rebuilds (shipped with it); it keeps its name here.
from aicml.models.portable.networks import TabularMLP

__all__ = [
    "EpochCallback",
    "TabularDataModule",
    "TabularMLP",
    "TabularModule",
    "TensorBatches",
    "predict_array",
    "predict_proba_array",
]


class TabularDataModule(TensorDataModule):
    """Feature matrix and encoded labels of a tabular dataset (see ``TensorDataModule``)."""


# The training logic is the same for every family; the tabular name stays for existing callers.
TabularModule = SupervisedModule


def predict_proba_array(network: nn.Module, x: np.ndarray) -> np.ndarray:
    network.eval()
    with torch.inference_mode():
        return torch.softmax(network(torch.from_numpy(np.ascontiguousarray(x))), dim=-1).numpy()
