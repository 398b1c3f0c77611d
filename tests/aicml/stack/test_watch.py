"""`watch_flow_run` follows a flow run through the real Prefect API: its states, its task runs' states and
its log lines while it goes on; the summary says what a pipeline result holds."""

from __future__ import annotations

import contextvars
import threading
from datetime import UTC, datetime
from typing import Any

from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import LogCreate
from prefect.states import Completed, Pending, Running

from aicml.stack.watch import WatchOutcome, summary_data, summary_lines, watch_flow_run
from tests.services import free_port, wait_for


@flow(name="aic-test-watch")
def watched() -> None:
    return None


@task(name="step")
def step() -> None:
    return None


def test_watch_follows_states_tasks_and_logs_while_the_run_goes_on(stack) -> None:
    lines: list[str] = []
    box: dict[str, WatchOutcome] = {}
    with get_client(sync_client=True) as client:
        run = client.create_flow_run(watched, state=Pending())
        # The thread sees this test's Prefect settings (a context variable) through a copied context.
        context = contextvars.copy_context()
        follower = threading.Thread(
            target=context.run,
            args=(
                lambda: box.update(
                    outcome=watch_flow_run(run.id, timeout=120, emit=lines.append, poll_seconds=0.1)
                ),
            ),
        )
        follower.start()
        try:
            wait_for(lambda: any("flow run Pending" in line for line in lines), 30, "the Pending state shown")
            client.set_flow_run_state(run.id, Running(), force=True)
            task_run = client.create_task_run(step, run.id, dynamic_key="0", name="step-1", state=Running())
            client.create_logs([LogCreate(name="prefect.task_runs", level=20, message="halfway there",
                                          timestamp=datetime.now(UTC), flow_run_id=run.id,
                                          task_run_id=task_run.id)])  # fmt: skip
            wait_for(lambda: any("step-1 | halfway there" in line for line in lines), 30, "a live log line")
            # A stage run as a deployment of its own is a child flow run: followed too.
            child = client.create_flow_run(
                watched, name="child-run", parent_task_run_id=task_run.id, state=Running()
            )
            client.create_logs([LogCreate(name="prefect.flow_runs", level=20, message="from the child",
                                          timestamp=datetime.now(UTC), flow_run_id=child.id)])  # fmt: skip
            wait_for(
                lambda: any("child-run | from the child" in line for line in lines), 30, "the child's log"
            )
            assert any("subflow run child-run Running" in line for line in lines), lines
            client.set_flow_run_state(child.id, Completed(), force=True)
            assert follower.is_alive(), "it stopped following a running flow run"
            client.set_task_run_state(task_run.id, Completed(), force=True)
            client.set_flow_run_state(run.id, Completed(), force=True)
        finally:
            follower.join(60)
    outcome = box["outcome"]
    assert outcome.finished and outcome.completed
    text = "\n".join(lines)
    assert "flow run Running" in text and "task step-1 Running" in text and "task step-1 Completed" in text
    assert text.index("flow run Pending") < text.index("halfway there") < text.index("flow run Completed")
    assert outcome.task_states == {"step-1": "Completed"}
    # No persisted result behind this state: said, not raised.
    assert outcome.result is None and outcome.result_error and "not readable" in outcome.result_error


def test_a_result_published_as_an_artifact_is_read_when_the_persisted_one_is_not(stack) -> None:
    """On Kubernetes the persisted result sits on the cluster's volume: the pipeline's table artifact stands in."""
    from prefect.client.schemas.actions import ArtifactCreate

    published = {"model_name": "churn", "version": "4", "promoted": True, "candidates": {"sklearn": 0.71}}
    with get_client(sync_client=True) as client:
        run = client.create_flow_run(watched, state=Running())
        client.create_artifact(
            ArtifactCreate(key="pipeline-result-churn", type="table", data=[published], flow_run_id=run.id)
        )
        client.set_flow_run_state(run.id, Completed(), force=True)
    outcome = watch_flow_run(run.id, timeout=60, poll_seconds=0.1)
    assert outcome.completed and outcome.result == published and outcome.result_error is None


def test_summary_of_a_pipeline_result(stack) -> None:
    from flows.pipeline import PipelineResult

    with get_client(sync_client=True) as client:
        run = client.create_flow_run(watched, state=Completed())
    result: dict[str, Any] = PipelineResult(
        mlflow_run_id="abc123", fingerprint="f", rows=10, labelled_rows=10, set_aside=0, problem="classification",
        metric="roc_auc", candidates={"lightning": 0.91234, "sklearn": 0.9}, best="lightning", model_name="churn",
        version="4", promoted=False, reason="The champion is better by 0.01.", predictions=[1, 0],
    ).model_dump(mode="json")  # fmt: skip
    outcome = WatchOutcome(run, 12.0, True, result)
    tracking = f"http://127.0.0.1:{free_port()}"  # nothing answers: the run link goes without experiment
    data = summary_data(outcome, "ml-pipeline/local", "http://ui:4200", tracking)
    assert data["url"] == f"http://ui:4200/runs/flow-run/{run.id}" and data["state"] == "Completed"
    assert data["links"] == {
        "mlflow_run": f"{tracking}/#/runs/abc123",
        "model": f"{tracking}/#/models/churn/versions/4",
    }
    lines = summary_lines(data)
    assert "  candidates (roc_auc on the test split): lightning 0.9123, sklearn 0.9000" in lines
    assert "  best       : lightning -> churn version 4" in lines
    assert "  decision   : not promoted: The champion is better by 0.01." in lines
