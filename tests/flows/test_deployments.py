"""Every deployment in prefect.yaml loads, validates, registers, and runs through a process worker."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from prefect import Flow
from pydantic import BaseModel

from aicml.stack.deploy import deployment_names, register_deployments
from deployments.presets import deployment_params, presets
from tests.testdata import regression_csv

REPO = Path(__file__).resolve().parents[2]
CONFIG = yaml.safe_load((REPO / "prefect.yaml").read_text())


@pytest.mark.parametrize("deployment", CONFIG["deployments"], ids=lambda d: d["name"] + ":" + d["entrypoint"])
def test_entrypoint_is_a_flow_and_parameters_validate(deployment: dict) -> None:
    path, _, function = deployment["entrypoint"].partition(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    flow = getattr(module, function)
    assert isinstance(flow, Flow)
    # One pydantic Params model per flow; the deployment's preset must validate against it.
    signature = flow.parameters.properties
    assert list(signature) == ["params", "overrides"], "every flow takes one Params model and its overrides"
    # The UI form explains the overrides (from the flow's docstring).
    assert "dotted path" in signature["overrides"]["description"]
    annotation = flow.fn.__annotations__["params"]
    model = getattr(module, annotation) if isinstance(annotation, str) else annotation
    assert issubclass(model, BaseModel)
    model.model_validate(deployment_params(deployment) | _required_defaults(model))
    assert deployment["work_pool"]["name"]


async def _read_deployment(name: str):
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return await client.read_deployment_by_name(name)


def _required_defaults(model: type[BaseModel]) -> dict:
    # Presets may leave required fields to the caller (e.g. an ad-hoc source); fill only those absent.
    return {}


def test_deployment_names_read_flow_names_without_importing() -> None:
    names = deployment_names(REPO, "local")
    assert "ml-pipeline/local" in names


def test_prefect_deployment_run_through_the_process_worker(stack, tmp_path: Path) -> None:
    """`prefect deployment run 'ml-pipeline/local'` completes through the stack's worker."""
    names = register_deployments(stack, REPO, "local")
    # Every deployment of the pool is on the server (flows whose @flow name differs from their function's
    # name, `tune` and `deploy-model`, were once skipped by `prefect deploy` without a word).
    assert {"tune/local", "deploy-model/local", "ml-pipeline/local"} <= set(names)
    for name in names:
        assert asyncio.run(_read_deployment(name)).name == name.split("/")[1]
    # `prefect deploy` resolved the preset of deployments/presets.yaml through the build step.
    registered = asyncio.run(_read_deployment("ml-pipeline/local"))
    assert registered.parameters == {"params": presets()["ml-pipeline/local"]}
    name = f"reg-{uuid.uuid4().hex[:6]}"
    csv = regression_csv(tmp_path / "data.csv")
    params = {"params": {"source": str(csv), "target": "y", "model_name": name,
                         "trainer": {"max_epochs": 2, "progress_bar": False}}}  # fmt: skip
    env = {**os.environ, **{k: v for k, v in stack.client_env().items() if k != "PROMETHEUS_MULTIPROC_DIR"}}
    done = subprocess.run(
        [str(Path(sys.executable).with_name("prefect")), "deployment", "run", "ml-pipeline/local",
         "--params", json.dumps(params), "--watch", "--watch-timeout", "600"],
        env=env, capture_output=True, text=True, timeout=700, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "COMPLETED" in done.stdout.upper()
    version = MlflowClient().get_model_version_by_alias(name, "champion")
    assert version.version == "1"
