"""One-field overrides through the real Prefect server and the stack's process worker: a deployment runs with
its preset and one field changed (`overrides`), and the run reads back that field changed and every other
preset value kept; a key that names no field and a value of the wrong type fail the run with errors that
name them, through the API and through `prefect deployment run --param overrides=...`."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.deployments import run_deployment

from aicml.stack.overrides import ARTIFACT_DESCRIPTION
from deployments.presets import presets
from flows.training import TrainParams, job_spec
from tests.runs import local_deployments

REPO = Path(__file__).resolve().parents[2]
DEPLOYMENT = "train-flow/local"


async def _read(flow_run_id: UUID) -> tuple[Any, list[Any]]:
    async with get_client() as client:
        run = await client.read_flow_run(flow_run_id)
        artifacts = await client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return run, artifacts


def _finished(flow_run_ids: list[UUID], timeout_s: float) -> list[Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        runs = [asyncio.run(_read(i))[0] for i in flow_run_ids]
        if all(r.state is not None and r.state.is_final() for r in runs):
            return runs
        assert time.monotonic() < deadline, [r.state for r in runs]
        time.sleep(2)


def _prefect(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).with_name("prefect")), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)


@pytest.fixture(scope="module")
def deployed(stack: Any) -> Any:
    """The stack with the `local` deployments of prefect.yaml registered (once for this module)."""
    local_deployments(stack)
    return stack


def test_one_field_override_keeps_the_rest_of_the_preset(deployed: Any) -> None:
    stack = deployed
    preset = presets()[DEPLOYMENT]
    assert preset["trainer"]["max_epochs"] == 10

    run = run_deployment(DEPLOYMENT, parameters={"overrides": {"trainer.max_epochs": 1}}, timeout=900)
    assert run.state.is_completed(), run.state

    # The server merged the run's parameters with the deployment's: the whole preset, plus the override.
    stored, artifacts = asyncio.run(_read(run.id))
    assert stored.parameters == {"params": preset, "overrides": {"trainer.max_epochs": 1}}
    # What the flow ran with, as it reports it: that one field changed, every other preset value kept.
    (report,) = [a for a in artifacts if a.description == ARTIFACT_DESCRIPTION]
    assert "| `trainer.max_epochs` | `10` | `1` |" in report.data
    resolved = json.loads(re.search(r"```json\n(.*?)\n```", report.data, re.S).group(1))
    assert resolved["trainer"]["max_epochs"] == 1
    for key, value in preset.items():
        if key != "trainer":
            assert resolved[key] == value, key
    for key, value in preset["trainer"].items():
        if key != "max_epochs":
            assert resolved["trainer"][key] == value, key
    # And the training ran with it: its MLflow run logged one epoch, not the preset's ten.
    job_id = job_spec(TrainParams.model_validate(resolved), stack.settings).job_id
    client = MlflowClient(stack.settings.tracking_uri)
    experiment = client.get_experiment_by_name(stack.settings.experiment)
    (logged,) = client.search_runs([experiment.experiment_id], f"tags.`aicml.job_id` = '{job_id}'")
    assert logged.data.params["max_epochs"] == "1"
    assert logged.data.params["batch_size"] == str(preset["trainer"]["batch_size"])


def test_bad_keys_and_types_fail_naming_them(deployed: Any) -> None:
    stack = deployed
    # Through the API: a key that names no field.
    bad_key = run_deployment(DEPLOYMENT, parameters={"overrides": {"trainer.max_epoch": 1}}, timeout=0)
    # Through the Prefect CLI, as a user types it: a value of the wrong type.
    env = {**os.environ, **{k: v for k, v in stack.client_env().items() if k != "PROMETHEUS_MULTIPROC_DIR"}}
    created = _prefect(
        "deployment", "run", DEPLOYMENT, "--param", 'overrides={"trainer.max_epochs": "many"}', env=env
    )
    assert created.returncode == 0, created.stdout + created.stderr
    bad_type_id = UUID(re.search(r"UUID: ([0-9a-f-]{36})", created.stdout).group(1))

    key_run, type_run = _finished([bad_key.id, bad_type_id], 600)
    assert key_run.state.is_failed(), key_run.state
    message = key_run.state.message or ""
    assert "'trainer.max_epoch' names no field" in message and "Did you mean 'trainer.max_epochs'?" in message
    assert "batch_size" in message, "the error lists the fields there are"
    assert type_run.state.is_failed(), type_run.state
    message = type_run.state.message or ""
    assert "trainer.max_epochs: Input should be a valid integer" in message
    assert "set by override 'trainer.max_epochs'" in message

    # The literal dotted form is refused by Prefect's CLI before any run exists: run parameters are merged
    # with the deployment's only at the top level, so the form is `--param overrides='{...}'`.
    literal = _prefect("deployment", "run", DEPLOYMENT, "--param", "trainer.max_epochs=3", env=env)
    assert literal.returncode != 0
    assert "not found on the deployment" in literal.stdout + literal.stderr
