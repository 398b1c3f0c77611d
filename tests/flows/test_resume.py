"""A failed pipeline run resumes: completed stages come back from persisted results, the rest runs again."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any
from uuid import UUID

from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment

from tasks.policies import FAULT_VARIABLE
from tests.runs import local_deployments, task_run_states
from tests.testdata import regression_csv

REPO = Path(__file__).resolve().parents[2]


def run_of(flow_run_id: UUID) -> Any:
    async def read() -> Any:
        async with get_client() as client:
            return await client.read_flow_run(flow_run_id)

    return asyncio.run(read())


def _task_states(flow_run_id: UUID) -> dict[str, str]:
    # Task run names are "<task>-<suffix>".
    return {name.rsplit("-", 1)[0]: state for name, state in task_run_states(flow_run_id).items()}


def test_failed_run_resumes_from_the_failed_stage(stack, tmp_path: Path) -> None:
    local_deployments(stack)
    name = f"resume-{uuid.uuid4().hex[:6]}"
    params = {"params": {"source": str(regression_csv(tmp_path / "d.csv")), "target": "y", "model_name": name,
                         "trainer": {"max_epochs": 2, "progress_bar": False, "hidden": [16]}}}  # fmt: skip
    # A real failure in the flow-run process, after training: the smoke test of the new champion.
    failed = run_deployment(
        "ml-pipeline/local",
        parameters=params,
        timeout=600,
        job_variables={"env": {FAULT_VARIABLE: "smoke-serve"}},
    )
    assert failed.state.is_failed(), failed.state
    first = _task_states(failed.id)
    assert first["train"] == "Completed" and first["smoke-serve"] == "Failed"
    # The transaction rolled the registry back: no champion from the failed run.
    assert not (MlflowClient().get_registered_model(name).aliases or {})

    # Through the command, as a user resumes: it follows the new run and prints what it returned.
    env = {**os.environ, **{k: v for k, v in stack.client_env().items() if k != "PROMETHEUS_MULTIPROC_DIR"}}
    done = subprocess.run(
        [sys.executable, "-m", "aicml.cli", "resume", str(failed.id), "--json", "--timeout", "600"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=700,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["state"] == "Completed" and report["result"]["version"] == "2", report
    assert report["result"]["model_name"] == name and report["links"]["model"].endswith(
        f"/models/{name}/versions/2"
    )
    resumed = run_of(UUID(report["flow_run_id"]))
    second = _task_states(resumed.id)
    # Bodies that ran again end Completed; reused ones end Cached.
    assert second["ingest"] == second["validate"] == second["train"] == "Cached", second
    assert second["register"] == second["promote"] == second["smoke-serve"] == "Completed", second
    assert MlflowClient().get_model_version_by_alias(name, "champion").version == "2"
    assert f"resumes:{failed.id}" in resumed.tags
