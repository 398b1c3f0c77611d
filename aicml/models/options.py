"""Typed training options; light to import (no torch), so flow parameter models can use them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class TrainerOptions(BaseModel):
    """Options of the Lightning tabular trainer and its scikit-learn baseline."""

    max_epochs: int = Field(default=8, ge=1, le=1000, description="Epochs of the Lightning model.")
    batch_size: int = Field(
        default=512,
        ge=1,
        le=1_000_000,
        description="Global mini-batch size; DDP ranks each take an equal share.",
    )
    learning_rate: float = Field(default=2e-3, gt=0, le=1.0, description="AdamW learning rate.")
    hidden: list[int] = Field(default=[128, 64], min_length=1, description="Hidden layer widths of the MLP.")
    dropout: float = Field(default=0.1, ge=0, lt=1, description="Dropout between hidden layers.")
    cpu_threads: int = Field(
        default=1,
        ge=0,
        description="torch intra-op threads when training on CPU; 0 keeps torch's default (one per core).",
    )
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = Field(
        default="auto", description="Lightning accelerator; `auto` takes a GPU when one is present."
    )
    devices: int = Field(
        default=1, ge=1, le=64, description="Devices (GPUs, or CPU processes under DDP) per node."
    )
    num_nodes: int = Field(default=1, ge=1, le=256, description="Nodes taking part in distributed training.")
    strategy: Literal["auto", "ddp", "ddp_spawn"] = Field(
        default="auto",
        description="Lightning strategy; `ddp` for several devices or nodes (gloo on CPU, NCCL on GPU).",
    )
    baseline: bool = Field(
        default=True, description="Also train a scikit-learn baseline and keep the better."
    )
    progress_bar: bool = Field(default=True, description="Show Lightning's progress bar in a terminal.")
