"""Read what a flow run did from the Prefect API (test helper)."""

from __future__ import annotations

import asyncio
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId


def task_run_states(flow_run_id: UUID) -> dict[str, str]:
    """``{task run name: state name}`` for every task run of ``flow_run_id``."""

    async def read() -> dict[str, str]:
        async with get_client() as client:
            runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
        return {run.name: str(run.state_name) for run in runs}

    return asyncio.run(read())
