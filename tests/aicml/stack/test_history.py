"""`aicml status` reports each deployment's success rate over its last runs."""

from __future__ import annotations

import asyncio
import uuid

from prefect import flow
from prefect.client.orchestration import get_client
from prefect.states import Completed, Crashed, Failed
from typer.testing import CliRunner

from aicml.cli import app
from aicml.stack.history import deployment_health


@flow(name="aic-test-history")
def history_flow() -> None:
    return None


def test_success_rate_per_deployment(stack) -> None:
    name = f"hist-{uuid.uuid4().hex[:6]}"

    async def seed_runs() -> None:
        async with get_client() as client:
            flow_id = await client.create_flow(history_flow)
            deployment_id = await client.create_deployment(flow_id=flow_id, name=name)
            for state in (Completed(), Completed(), Completed(), Failed(), Crashed()):
                await client.create_flow_run_from_deployment(deployment_id, state=state)

    asyncio.run(seed_runs())
    health = {h.deployment: h for h in deployment_health(stack.settings.prefect_url, last=20)}
    mine = health[f"aic-test-history/{name}"]
    assert (mine.runs, mine.succeeded, mine.failed) == (5, 3, 2)
    assert mine.success_rate == 0.6
    result = CliRunner().invoke(app, ["status", "--last", "20"])
    assert result.exit_code == 0, result.output
    assert f"aic-test-history/{name}" in result.output and "60% success" in result.output
