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


_registered: dict[int, list[str]] = {}


def local_deployments(stack: object) -> list[str]:
    """prefect.yaml's deployments on pool `local`, registered on ``stack`` once per session.

    `prefect deploy` of all of them takes 15-30 s here and a dozen tests need them; each test still gets
    them all, as prefect.yaml has them: they are registered again when any of them is gone from the server.
    """
    from pathlib import Path

    from aicml.stack.deploy import register_deployments, registered_deployments

    names = _registered.get(id(stack))
    if names is None or not all(registered_deployments(names).values()):
        names = _registered[id(stack)] = register_deployments(
            stack,  # type: ignore[arg-type]
            Path(__file__).resolve().parents[1],
            "local",
        )
        asyncio.run(_drop_retrain_triggers())
    return names


async def _drop_retrain_triggers() -> None:
    """Delete the `retrain-model` trigger (on the model events) the registration brought: every monitor run of
    later tests would start a retrain and a pipeline on the shared worker. The retrain loop's own test
    registers it again."""
    async with get_client() as client:
        for automation in await client.read_automations():
            if "aicml.model." in automation.trigger.model_dump_json():
                await client.delete_automation(automation.id)
