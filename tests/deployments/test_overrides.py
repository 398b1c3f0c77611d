"""One-field overrides: dotted keys applied onto a preset before it is validated into the flow's Params model
(aicml.stack.overrides); the server-side runs are in tests/flows/test_overrides_deployments.py."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from aicml.errors import ConfigurationError
from aicml.stack.overrides import apply_overrides, describe_changes, overrides_markdown, parse_set
from aicml.stack.prefect_yaml import flow_name_of
from deployments.presets import deployment_params, presets
from flows.deployment import DeployParams
from flows.ingestion import IngestParams
from flows.pipeline import PipelineParams
from flows.training import TrainParams
from flows.tuning import TuneParams

REPO = Path(__file__).resolve().parents[2]
CONFIG = yaml.safe_load((REPO / "prefect.yaml").read_text())
LANDED = "ingest-flow/on-file-landed"


def _model_of(deployment: dict[str, Any]) -> type[BaseModel]:
    path, _, function = deployment["entrypoint"].partition(":")
    flow = getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), function)
    annotation = flow.fn.__annotations__["params"]
    module = importlib.import_module(flow.fn.__module__)
    return getattr(module, annotation) if isinstance(annotation, str) else annotation


def _without(data: dict[str, Any], path: str) -> dict[str, Any]:
    head, _, rest = path.partition(".")
    out = dict(data)
    if rest:
        out[head] = _without(out[head], rest)
    else:
        out.pop(head)
    return out


def test_parse_set_reads_json_values_else_strings() -> None:
    assert parse_set(
        ["trainer.max_epochs=3", "source=data/x.csv", "problem=null", 'job_id="7"', "trainer.hidden=[32, 16]",
         "isolate=false", "query=a=b"]
    ) == {"trainer.max_epochs": 3, "source": "data/x.csv", "problem": None, "job_id": "7",
          "trainer.hidden": [32, 16], "isolate": False, "query": "a=b"}  # fmt: skip
    for bad in ["max_epochs", "=3", "trainer..max_epochs=3"]:
        with pytest.raises(ConfigurationError, match=r"trainer\.max_epochs"):
            parse_set([bad])


@pytest.mark.parametrize("deployment", CONFIG["deployments"], ids=lambda d: d["name"] + ":" + d["entrypoint"])
def test_one_field_changes_and_every_other_preset_value_stays(deployment: dict[str, Any]) -> None:
    model = _model_of(deployment)
    preset = deployment_params(deployment)
    before = apply_overrides(preset, None, model).model_dump(mode="json")
    # The first integer field at depth one or two: a field every Params model has somewhere.
    key, value = next(
        (f"{name}.{sub}" if sub else name, v)
        for name, field in before.items()
        for sub, v in ([(s, x) for s, x in field.items()] if isinstance(field, dict) else [("", field)])
        if isinstance(v, int) and not isinstance(v, bool)
    )
    after = apply_overrides(preset, {key: value + 1}, model).model_dump(mode="json")
    changed = after
    for part in key.split("."):
        changed = changed[part]
    assert changed == value + 1
    assert _without(after, key) == _without(before, key), f"{key}: other fields changed"


def test_nested_mappings_merge_and_default_factories_are_kept() -> None:
    tune = presets()["tune/local"]
    # SearchOptions' trainer default sets progress_bar=False and batch_size 512: an override keeps them.
    resolved = apply_overrides(tune, {"trainer": {"max_epochs": 2}, "budget.n_trials": 3}, TuneParams)
    assert resolved.trainer.max_epochs == 2 and resolved.trainer.progress_bar is False
    assert (
        resolved.trainer.batch_size
        == TuneParams.model_fields["trainer"].get_default(call_default_factory=True).batch_size
    )
    assert resolved.budget.n_trials == 3 and resolved.budget.patience == tune["budget"]["patience"]
    # An optional nested model that is empty in the preset: switched on with the named field set.
    pipeline = presets()["ml-pipeline/local"]
    switched = apply_overrides(pipeline, {"tune.budget.n_trials": 4}, PipelineParams)
    assert switched.tune is not None and switched.tune.budget.n_trials == 4
    assert switched.trainer.max_epochs == pipeline["trainer"]["max_epochs"]
    # Below a plain dict field, the path names its keys.
    ingest = apply_overrides(presets()["ingest-flow/full"], {"types.amount": "float64"}, IngestParams)
    assert ingest.types == {"amount": "float64"} and ingest.key == ["customer_id"]


def test_a_model_instance_without_overrides_is_returned_as_it_is() -> None:
    params = TrainParams(family="digits")
    assert apply_overrides(params, None, TrainParams) is params
    assert apply_overrides(params, {}, TrainParams) is params
    assert apply_overrides(params, {"seed": 7}, TrainParams).seed == 7 and params.seed == 42


def test_unknown_keys_name_the_key_and_the_fields_there_are() -> None:
    preset = presets()["train-flow/local"]
    with pytest.raises(ConfigurationError) as caught:
        apply_overrides(preset, {"trainer.max_epoch": 3}, TrainParams)
    message = str(caught.value)
    assert "'trainer.max_epoch'" in message and "Did you mean 'trainer.max_epochs'?" in message
    assert "batch_size" in message and "learning_rate" in message
    with pytest.raises(ConfigurationError, match=r"'sorce'.*Its fields: family, framework, source"):
        apply_overrides(preset, {"sorce": "x.csv"}, TrainParams)
    with pytest.raises(ConfigurationError, match=r"'seed\.x': seed is a field of type int"):
        apply_overrides(preset, {"seed.x": 1}, TrainParams)


def test_wrong_types_name_the_field_and_never_echo_the_value() -> None:
    preset = presets()["deploy-model/local"]
    value = "hunter2-not-a-number"
    with pytest.raises(ConfigurationError) as caught:
        apply_overrides(preset, {"step_requests": value}, DeployParams)
    message = str(caught.value)
    assert "step_requests" in message and "set by override 'step_requests'" in message
    assert value not in message
    with pytest.raises(ConfigurationError, match=r"must not carry a password") as refused:
        apply_overrides(
            presets()["train-flow/local"], {"source": "postgresql://u:pw-9f2@db/x#t"}, TrainParams
        )
    assert "pw-9f2" not in str(refused.value)


def test_the_report_shows_preset_and_run_values() -> None:
    preset = presets()["train-flow/local"]
    before = apply_overrides(preset, None, TrainParams)
    after = apply_overrides(preset, {"trainer.max_epochs": 1}, TrainParams)
    assert describe_changes(before, after, {"trainer.max_epochs": 1}) == "trainer.max_epochs: 10 -> 1"
    report = overrides_markdown(before, after, {"trainer.max_epochs": 1}, TrainParams)
    assert "| `trainer.max_epochs` | `10` | `1` |" in report and '"batch_size": 64' in report


def test_the_landed_file_trigger_overrides_only_the_source() -> None:
    """The trigger of ingest-flow/on-file-landed sets `overrides`, so the run keeps the deployment's preset."""
    deployment = next(
        d for d in CONFIG["deployments"] if f"{flow_name_of(REPO, d['entrypoint'])}/{d['name']}" == LANDED
    )
    (trigger,) = deployment["triggers"]
    assert set(trigger["parameters"]) == {"overrides"}
    assert set(trigger["parameters"]["overrides"]) == {"source"}
    resolved = apply_overrides(deployment_params(deployment), {"source": "/landing/a.csv"}, IngestParams)
    assert resolved.source == "/landing/a.csv"
    assert resolved.model_dump(exclude={"source"}) == IngestParams.model_validate(
        deployment_params(deployment)
    ).model_dump(exclude={"source"})
