"""Parameter presets live in deployments/presets.yaml; prefect.yaml reads them through a build step."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml
from prefect.deployments.steps.core import run_steps

from aicml.errors import ConfigurationError
from aicml.stack.prefect_yaml import flow_name_of
from deployments.presets import STEP, deployment_params, preset, presets

REPO = Path(__file__).resolve().parents[2]
CONFIG = yaml.safe_load((REPO / "prefect.yaml").read_text())


def _name(deployment: dict) -> str:
    return f"{flow_name_of(REPO, deployment['entrypoint'])}/{deployment['name']}"


def test_every_deployment_reads_its_own_preset_and_every_preset_is_used() -> None:
    names = [_name(d) for d in CONFIG["deployments"]]
    assert len(names) == len(set(names))
    for deployment in CONFIG["deployments"]:
        steps = [s[STEP] for s in deployment["build"] if STEP in s]
        assert [s["name"] for s in steps] == [_name(deployment)], deployment["name"]
        assert deployment["parameters"] == {"params": "{{ preset.params }}"}
    assert set(presets()) == set(names)


def test_prefect_build_steps_resolve_the_preset() -> None:
    """Prefect's own step runner imports and runs the step, as `prefect deploy` does."""
    deployment = next(d for d in CONFIG["deployments"] if _name(d) == "train-flow/k8s-gpu")
    steps = [s for s in deployment["build"] if STEP in s]
    outputs = asyncio.run(run_steps(steps, {}))
    assert outputs["preset"]["params"] == presets()["train-flow/k8s-gpu"]
    assert outputs["preset"]["params"]["trainer"]["accelerator"] == "gpu"
    assert deployment_params(deployment) == outputs["preset"]["params"]


def test_unknown_preset_names_what_exists(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigurationError, match=r"No parameter preset 'ml-pipeline/nope'.*ml-pipeline/local"
    ):
        preset("ml-pipeline/nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("ml-pipeline/local: [1, 2]\n")
    with pytest.raises(ConfigurationError, match="expected a mapping"):
        preset("ml-pipeline/local", str(bad))
    with pytest.raises(ConfigurationError, match=r"no deployments\.presets\.preset build step"):
        deployment_params({"name": "x", "parameters": {"params": "{{ preset.params }}"}})
