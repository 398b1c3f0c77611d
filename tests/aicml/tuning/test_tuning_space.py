"""Search spaces are typed data: validation, Optuna distributions, grids, and Lightning option mapping."""

from __future__ import annotations

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from pydantic import TypeAdapter, ValidationError

from aicml.errors import ConfigurationError
from aicml.redaction import redact
from aicml.tuning.errors import TuningError
from aicml.tuning.objectives import lightning_options, resolve_objective
from aicml.tuning.space import FloatParam, IntParam, SearchSpace, default_space, grid_size
from aicml.tuning.study import distributions

SPACE = TypeAdapter(SearchSpace)


def test_space_from_plain_data_becomes_optuna_distributions() -> None:
    space = SPACE.validate_python(
        {
            "lr": {"kind": "float", "low": 1e-4, "high": 1e-1, "log": True},
            "width": {"kind": "int", "low": 8, "high": 64, "step": 8},
            "act": {"kind": "categorical", "choices": ["relu", "gelu"]},
        }
    )
    dists = distributions(space)
    assert dists["lr"] == FloatDistribution(1e-4, 1e-1, log=True)
    assert dists["width"] == IntDistribution(8, 64, step=8)
    assert dists["act"] == CategoricalDistribution(["relu", "gelu"])
    assert grid_size({"width": space["width"], "act": space["act"]}) == 8 * 2


@pytest.mark.parametrize(
    "bad",
    [
        {"kind": "float", "low": 1.0, "high": 0.5},
        {"kind": "float", "low": 0.0, "high": 1.0, "log": True},
        {"kind": "int", "low": 0, "high": 10, "log": True},
        {"kind": "categorical", "choices": []},
        {"kind": "complex", "low": 0, "high": 1},
    ],
)
def test_invalid_parameters_are_rejected_with_the_reason(bad: dict) -> None:
    with pytest.raises(ValidationError):
        SPACE.validate_python({"p": bad})


def test_grid_needs_a_step_for_floats() -> None:
    assert FloatParam(low=0.0, high=0.3, step=0.1).grid("d") == [0.0, 0.1, 0.2, 0.3]
    with pytest.raises(ConfigurationError, match=r"'dropout'.*step"):
        grid_size({"dropout": FloatParam(low=0.0, high=0.3)})


def test_lightning_options_from_sampled_parameters() -> None:
    options = lightning_options(
        {"batch_size": 64}, {"hidden_width": 32, "hidden_layers": 3, "dropout": 0.2}, 7
    )
    assert options["hidden"] == [32, 32, 32]
    assert options["max_epochs"] == 7 and options["dropout"] == 0.2 and options["batch_size"] == 64
    assert set(default_space("lightning")) == {"learning_rate", "hidden_width", "hidden_layers", "dropout"}
    assert isinstance(default_space("hgb")["max_leaf_nodes"], IntParam)


def test_objective_resolution_and_secret_redaction() -> None:
    assert callable(resolve_objective("sgd"))
    with pytest.raises(TuningError, match="neither a built-in"):
        resolve_objective("not-a-path")
    with pytest.raises(TuningError, match="Cannot import objective"):
        resolve_objective("no_such_module_here:f")
    assert "s3cret" not in redact("postgresql+psycopg://me:s3cret@db:5432/tuning_db")
