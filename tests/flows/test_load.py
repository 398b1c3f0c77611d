"""Twenty pipeline runs submitted at once to the local stack on PostgreSQL, pool concurrency 4.

All complete, exactly twenty flow runs exist (idempotency keys: submitting the same keys again creates
none), and the Prefect server's log shows no database-lock or connection-pool errors.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterTags,
)

from tests.runs import local_deployments
from tests.testdata import regression_csv

REPO = Path(__file__).resolve().parents[2]
RUNS = 20
SERVER_ERRORS = re.compile(
    r"database is locked|QueuePool limit|TimeoutError|too many connections|deadlock", re.I
)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # it waits up to 1500 s for the runs: above the suite's global timeout
def test_twenty_runs_at_once_all_complete_exactly_once(stack, tmp_path: Path) -> None:
    local_deployments(stack)
    csv = regression_csv(tmp_path / "load.csv", rows=300)
    batch = f"load-{uuid.uuid4().hex[:6]}"
    log = stack.log_dir / "prefect-server.log"
    log_offset = log.stat().st_size

    async def submit() -> list[str]:
        async with get_client() as client:
            deployment = await client.read_deployment_by_name("ml-pipeline/local")
            ids = []
            for i in range(RUNS):
                params = {"params": {"source": str(csv), "target": "y", "model_name": f"{batch}-{i:02d}",
                                     "trainer": {"max_epochs": 1, "hidden": [8], "baseline": False,
                                                 "progress_bar": False}}}  # fmt: skip
                run = await client.create_flow_run_from_deployment(
                    deployment.id, parameters=params, idempotency_key=f"{batch}-{i}", tags=[batch]
                )
                ids.append(str(run.id))
            return ids

    async def states() -> tuple[dict[str, str], int]:
        async with get_client() as client:
            deployment = await client.read_deployment_by_name("ml-pipeline/local")
            runs = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[batch])),
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
                limit=200,
            )
        return {str(r.id): str(r.state_name) for r in runs}, len(runs)

    first = asyncio.run(submit())
    again = asyncio.run(submit())
    assert len(set(first)) == RUNS and again == first, "the same idempotency keys create no new runs"

    deadline = time.monotonic() + 1500
    finished: dict[str, str] = {}
    while time.monotonic() < deadline:
        current, count = asyncio.run(states())
        assert count == RUNS
        finished = {k: v for k, v in current.items() if v in ("Completed", "Failed", "Crashed", "Cancelled")}
        if len(finished) == RUNS:
            break
        time.sleep(10)
    assert sorted(finished.values()) == ["Completed"] * RUNS, finished
    server_log = log.read_text(errors="replace")[log_offset:]
    assert not SERVER_ERRORS.findall(server_log), SERVER_ERRORS.findall(server_log)[:5]
