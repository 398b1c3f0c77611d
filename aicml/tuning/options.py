"""What to search and how: the typed options of a search, shared by the `tune` flow and the pipeline's switch.

Light on purpose (pydantic and `aicml.tuning.space` only): flow parameter models import it without Optuna.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from aicml.models.options import TrainerOptions
from aicml.names import ResourceName
from aicml.tuning.space import Budget, ModelKind, PruningOptions, SamplerName, SearchSpace, default_space


class SearchOptions(BaseModel):
    """What to search and how: the part of the parameters the pipeline's tune switch reuses."""

    model: ModelKind = Field(
        default="lightning", description="Built-in model to tune: lightning (MLP), sgd, mlp or hgb."
    )
    objective: str | None = Field(
        default=None,
        description="Your own objective as 'package.module:function' taking a TrialContext; overrides `model`.",
    )
    space: SearchSpace = Field(
        default_factory=dict,
        description="Name -> {kind: float|int|categorical, ...}; empty means the model's default space.",
    )
    direction: Literal["minimize", "maximize"] = Field(
        default="minimize", description="Whether the objective (validation loss by default) goes down or up."
    )
    sampler: SamplerName = Field(
        default="tpe", description="tpe, grid, random, cmaes, or hyperopt (its TPE)."
    )
    pruning: PruningOptions = Field(default_factory=PruningOptions, description="Pruner and plateau stop.")
    budget: Budget = Field(default_factory=Budget, description="Max trials, timeout, patience.")
    max_epochs: int = Field(default=12, ge=1, le=1000, description="Epochs (resource) per trial at most.")
    parallel: int = Field(default=2, ge=1, le=64, description="Trials running at once.")
    dask_address: str | None = Field(
        default=None, description="Scheduler of an existing Dask cluster; empty starts a LocalCluster."
    )
    study_name: ResourceName | None = Field(
        default=None,
        description="Study to create or resume; defaults to '<model_name or dataset>-<model>'.",
    )
    storage_url: str | None = Field(
        default=None,
        description=(
            "SQLAlchemy URL of the Optuna storage shared by all machines, without a password, e.g. "
            "postgresql+psycopg://tuner@db:5432/tuning_db; empty uses SQLite under the stack's home."
        ),
    )
    storage_secret: str | None = Field(
        default=None,
        description="Name of a Prefect Secret block holding the storage URL when it needs a password.",
    )
    heartbeat_s: int = Field(
        default=30, ge=1, description="Trial heartbeat; a dead worker is noticed after 3x."
    )
    seed: int = Field(default=42, description="Seed of the sampler and of the data split.")
    trainer: TrainerOptions = Field(
        default_factory=lambda: TrainerOptions(progress_bar=False, baseline=False),
        description="Base options of the Lightning model; sampled parameters override them.",
    )

    @model_validator(mode="after")
    def _grid_is_enumerable(self) -> SearchOptions:
        if self.storage_url and _has_password(self.storage_url):
            raise ValueError(
                "storage_url must not contain a password (it would show in the UI and logs): "
                "put the URL in a Prefect Secret block and pass its name as storage_secret"
            )
        if self.sampler == "grid":
            from aicml.tuning.space import grid_size

            grid_size(self.resolved_space())  # raises a ConfigurationError naming the parameter
        return self

    def resolved_space(self) -> SearchSpace:
        return self.space or default_space(self.model)

    @property
    def objective_name(self) -> str:
        """The objective the trials run: the custom one, else the built-in model's."""
        return self.objective or self.model


def _has_password(url: str) -> bool:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).password is not None
    except Exception:
        return False
