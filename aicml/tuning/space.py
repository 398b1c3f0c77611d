"""Typed search spaces and tuning options: plain pydantic data, light to import (no optuna here).

A flow's Params model holds a ``SearchSpace`` (name -> float / int / categorical parameter), so a user
declares what to search in YAML or the Prefect UI instead of writing code.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BaseModel, Field, model_validator

from aicml.errors import ConfigurationError

Scalar = bool | int | float | str


class FloatParam(BaseModel):
    """A real number in [low, high]; ``log`` samples on a log scale, ``step`` makes it discrete."""

    kind: Literal["float"] = "float"
    low: float = Field(description="Smallest value.")
    high: float = Field(description="Largest value.")
    log: bool = Field(default=False, description="Sample on a logarithmic scale (low must be > 0).")
    step: float | None = Field(default=None, gt=0, description="Discretisation step; needed for grid search.")

    @model_validator(mode="after")
    def _check(self) -> FloatParam:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scale range needs low > 0, got {self.low}")
        if self.log and self.step is not None:
            raise ValueError("choose either log or step, not both")
        return self

    def grid(self, name: str) -> list[Scalar]:
        if self.step is None:
            raise ConfigurationError(
                f"Grid search cannot enumerate float parameter {name!r}: give it a `step`, or make it "
                "categorical, or pick another sampler."
            )
        count = math.floor((self.high - self.low) / self.step + 1e-9) + 1
        return [round(self.low + i * self.step, 12) for i in range(count)]


class IntParam(BaseModel):
    """An integer in [low, high] (both included); ``log`` samples on a log scale."""

    kind: Literal["int"] = "int"
    low: int = Field(description="Smallest value.")
    high: int = Field(description="Largest value (included).")
    log: bool = Field(default=False, description="Sample on a logarithmic scale (low must be >= 1).")
    step: int = Field(default=1, ge=1, description="Step between values.")

    @model_validator(mode="after")
    def _check(self) -> IntParam:
        if not self.low <= self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        if self.log and (self.low < 1 or self.step != 1):
            raise ValueError("a log-scale integer range needs low >= 1 and step 1")
        return self

    def grid(self, name: str) -> list[Scalar]:
        return list(range(self.low, self.high + 1, self.step))


class CategoricalParam(BaseModel):
    """One of a list of values (numbers, strings or booleans)."""

    kind: Literal["categorical"] = "categorical"
    choices: list[Scalar] = Field(min_length=1, description="The values to choose from.")

    def grid(self, name: str) -> list[Scalar]:
        return list(self.choices)


ParamSpec = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="kind")]
SearchSpace = dict[str, ParamSpec]

SamplerName = Literal["tpe", "grid", "random", "cmaes", "hyperopt"]
PrunerName = Literal["none", "median", "successive_halving", "hyperband"]
ModelKind = Literal["lightning", "sgd", "mlp", "hgb"]


def default_space(model: ModelKind) -> SearchSpace:
    """A sensible space per built-in model, used when the user declares none."""
    if model == "lightning":
        return {
            "learning_rate": FloatParam(low=1e-4, high=3e-2, log=True),
            "hidden_width": IntParam(low=16, high=128, log=True),
            "hidden_layers": IntParam(low=1, high=3),
            "dropout": FloatParam(low=0.0, high=0.4),
        }
    if model == "sgd":
        return {
            "alpha": FloatParam(low=1e-6, high=1e-1, log=True),
            "eta0": FloatParam(low=1e-4, high=1e-1, log=True),
        }
    if model == "mlp":
        return {
            "learning_rate_init": FloatParam(low=1e-4, high=3e-2, log=True),
            "alpha": FloatParam(low=1e-6, high=1e-2, log=True),
            "hidden_width": IntParam(low=8, high=128, log=True),
        }
    return {
        "learning_rate": FloatParam(low=0.01, high=0.5, log=True),
        "max_leaf_nodes": IntParam(low=4, high=64, log=True),
        "l2_regularization": FloatParam(low=1e-6, high=1.0, log=True),
    }


def grid_size(space: SearchSpace) -> int:
    size = 1
    for name, spec in space.items():
        size *= len(spec.grid(name))
    return size


class Budget(BaseModel):
    """When a study stops: the first of max trials, a timeout, or K finished trials without improvement."""

    n_trials: int = Field(default=20, ge=1, le=100_000, description="Trials to finish (complete or pruned).")
    timeout_s: float | None = Field(
        default=None, gt=0, description="Stop starting new trials after this many seconds."
    )
    patience: int | None = Field(
        default=None, ge=1, description="Stop after this many finished trials without a better value."
    )


class PruningOptions(BaseModel):
    """How unpromising trials are cut and how a trial stops itself on a plateau."""

    pruner: PrunerName = Field(default="median", description="Optuna pruner fed once per epoch.")
    warmup_epochs: int = Field(default=2, ge=0, description="Epochs before the median pruner may prune.")
    startup_trials: int = Field(default=4, ge=0, description="Trials finished before the median pruner acts.")
    min_epochs: int = Field(
        default=1, ge=1, description="Minimum resource of successive halving / Hyperband."
    )
    reduction_factor: int = Field(
        default=3, ge=2, description="Reduction factor of successive halving / Hyperband."
    )
    plateau_patience: int | None = Field(
        default=3, ge=1, description="Stop a trial after this many epochs without improving by `min_delta`."
    )
    min_delta: float = Field(
        default=1e-4, ge=0, description="Smallest improvement that resets the plateau count."
    )
