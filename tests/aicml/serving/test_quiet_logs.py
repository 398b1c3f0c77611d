"""No MLflow download progress bars where a model is loaded: in the model server's log (one "loaded model"
line instead) and in a flow run through the local stack's worker, unless the user asks for them."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.deployments import run_deployment

from aicml.compat import PROGRESS_BAR_ENV
from tests.serving_support import register_sklearn, start_server, stop_server

REPO = Path(__file__).resolve().parents[3]
PROGRESS = ("Downloading artifacts", "%|")


def has_bar(text: str) -> bool:
    return any(bar in text for bar in PROGRESS)


@pytest.fixture(scope="module")
def stamped(stack: Any) -> tuple[str, str]:
    """A model registered the pipeline's way (digest stamped): (name, version)."""
    import mlflow

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    mlflow.set_registry_uri(os.environ["MLFLOW_TRACKING_URI"])
    version, _ = register_sklearn("quiet-logs", flip=False)
    return "quiet-logs", version


@pytest.mark.parametrize("asked", [None, "true"])
def test_the_model_server_logs_one_line_per_load(
    stamped: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, asked: str | None
) -> None:
    name, version = stamped
    if asked is None:
        monkeypatch.delenv(PROGRESS_BAR_ENV, raising=False)
    else:  # the user's explicit value wins, and shows that the check below can see a bar
        monkeypatch.setenv(PROGRESS_BAR_ENV, asked)
    server = start_server(f"models:/{name}/{version}", tmp_path)
    stop_server(server)
    log = server.log.read_text()
    assert f"loaded model {name} v{version} (" in log, log[-2000:]
    assert has_bar(log) is (asked == "true"), log[-2000:]


def _flow_run_logs(flow_run_id: UUID) -> list[str]:
    async def read() -> list[str]:
        async with get_client() as client:
            logs = await client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
            )
        return [entry.message for entry in logs]

    return asyncio.run(read())


def test_a_flow_run_through_the_worker_draws_no_bars(stack: Any, stamped: tuple[str, str]) -> None:
    from prefect import Flow

    name, version = stamped
    source: Any = Flow.from_source(
        source=str(REPO), entrypoint="tests/aicml/serving/quiet_load_flow.py:load_registered_model"
    )
    source.deploy(
        name="quiet-logs",
        work_pool_name=stack.settings.work_pool,
        build=False,
        push=False,
        print_next_steps=False,
    )
    worker_log = stack.log_dir / "worker.log"
    outputs = {}
    for asked in (None, "true"):
        start = worker_log.stat().st_size
        env = {} if asked is None else {PROGRESS_BAR_ENV: asked}
        run = run_deployment(
            "load-registered-model/quiet-logs",
            parameters={"model_uri": f"models:/{name}/{version}"},
            job_variables={"env": env},
            timeout=300,
        )
        assert run.state is not None and run.state.is_completed(), run.state
        messages = _flow_run_logs(run.id)
        assert any(f"loaded models:/{name}/{version}" in m for m in messages), messages
        with open(worker_log, errors="replace") as handle:
            handle.seek(start)
            outputs[asked] = handle.read() + "\n".join(messages)
    assert not has_bar(outputs[None]), outputs[None][-3000:]
    # The same run with the bar asked for shows it where the check looks: the check can fail.
    assert has_bar(outputs["true"]), outputs["true"][-3000:]
