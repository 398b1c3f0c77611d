"""A failed pipeline run resumes: completed stages come back from persisted results, the rest runs again."""

from __future__ import annotations

import uuid
from pathlib import Path
from uuid import UUID

from mlflow import MlflowClient
from prefect.deployments import run_deployment

from aicml.stack.deploy import register_deployments
from aicml.stack.resume import resume_flow_run
from tasks.policies import FAULT_VARIABLE
from tests.runs import task_run_states
from tests.testdata import regression_csv

REPO = Path(__file__).resolve().parents[2]


def _task_states(flow_run_id: UUID) -> dict[str, str]:
    # Task run names are "<task>-<suffix>".
    return {name.rsplit("-", 1)[0]: state for name, state in task_run_states(flow_run_id).items()}


def test_failed_run_resumes_from_the_failed_stage(stack, tmp_path: Path) -> None:
    register_deployments(stack, REPO, "local")
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

    resumed = resume_flow_run(failed.id, timeout=600)
    assert resumed.state.is_completed(), resumed.state
    second = _task_states(resumed.id)
    # Bodies that ran again end Completed; reused ones end Cached.
    assert second["ingest"] == second["validate"] == second["train"] == "Cached", second
    assert second["register"] == second["promote"] == second["smoke-serve"] == "Completed", second
    assert MlflowClient().get_model_version_by_alias(name, "champion").version == "2"
    assert f"resumes:{failed.id}" in resumed.tags
