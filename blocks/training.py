"""Settings of the training service (prefix ``AIC_TRAINING_``): where checkpoints persist."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class TrainingSettings(BaseSettings):
    """Every field can be set as ``AIC_TRAINING_<FIELD>``, e.g. ``AIC_TRAINING_CHECKPOINT_DIR=/mnt/checkpoints``."""

    model_config = SettingsConfigDict(env_prefix="AIC_TRAINING_", env_file=".env", extra="ignore")

    checkpoint_dir: Path | None = Field(
        default=None,
        description=(
            "Persistent directory for per-epoch checkpoints (the checkpoint PVC's mount path on Kubernetes); "
            "`<AIC_HOME>/checkpoints` when unset."
        ),
    )
    system_metrics_interval: float = Field(
        default=10.0, gt=0, description="Seconds between MLflow system-metric samples (CPU, memory, GPU)."
    )
