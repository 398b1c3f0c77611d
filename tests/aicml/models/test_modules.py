"""Tensor batches shard evenly under DDP; the Lightning trainers of both families fit through one protocol."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from aicml.errors import TrainingError
from aicml.models.digits import load_digits_split
from aicml.models.modules import TensorBatches
from aicml.models.options import TrainerOptions
from aicml.models.trainers import (
    Checkpointing,
    LightningImageTrainer,
    LightningTabularTrainer,
    SklearnTrainer,
    Trainer,
)

FAST = TrainerOptions(max_epochs=2, batch_size=64, accelerator="cpu", progress_bar=False)


def test_ddp_shards_are_disjoint_equal_and_cover_the_rows() -> None:
    x, y = torch.arange(103).float()[:, None], torch.arange(103)
    shards = [list(TensorBatches(x, y, 10, True, seed=7, rank=r, world_size=2)) for r in (0, 1)]
    rows = [torch.cat([b[1] for b in shard]).tolist() for shard in shards]
    assert len(shards[0]) == len(shards[1])  # same number of steps, or the all-reduce would hang
    assert len(rows[0]) == len(rows[1]) == 51
    assert not set(rows[0]) & set(rows[1])


def test_every_trainer_follows_the_protocol_on_digits(tmp_path: Path) -> None:
    data, test_x, test_y = load_digits_split(seed=1)
    epochs: list[int] = []
    trainers: list[Trainer] = [LightningImageTrainer(FAST), SklearnTrainer(LogisticRegression(max_iter=300))]
    for trainer in trainers:
        fitted = trainer.fit(
            data,
            on_epoch=lambda e, total, m: epochs.append(e),
            checkpoints=Checkpointing(tmp_path / trainer.name),
        )
        accuracy = float((fitted.predict(test_x) == test_y).mean())
        assert accuracy > 0.8, (trainer.name, accuracy)
    assert epochs == [0, 1]  # only the Lightning trainer has epochs
    assert (tmp_path / "lightning-cnn" / "last.ckpt").exists()


def test_a_trainer_refuses_data_of_another_family() -> None:
    data, _, _ = load_digits_split(seed=1)
    with pytest.raises(TrainingError, match="tabular data, not image"):
        LightningTabularTrainer(FAST).fit(data)


def test_sklearn_estimator_goes_through_the_protocol_on_images() -> None:
    data, test_x, test_y = load_digits_split(seed=2)
    fitted = SklearnTrainer(LogisticRegression(max_iter=300)).fit(data)
    assert np.mean(fitted.predict(test_x) == test_y) > 0.9
