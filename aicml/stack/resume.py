"""Resume a failed or crashed deployment run: a new run of the same deployment with the same parameters.

The stages that completed with the same inputs, code and data come back from persisted results
(their task runs end `Cached`); only the failed stage and what depends on it run again.
"""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

from aicml.errors import ConfigurationError
from aicml.retry import reporting_unreachable

RESUMABLE = {"FAILED", "CRASHED", "CANCELLED"}


async def _prepare(flow_run_id: UUID) -> tuple[str, dict[str, Any]]:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    async with get_client() as client:
        try:
            run = await client.read_flow_run(flow_run_id)
        except ObjectNotFound as exc:
            raise ConfigurationError(f"No flow run {flow_run_id} on this Prefect server.") from exc
        state = run.state.type.value if run.state is not None else "UNKNOWN"
        if state not in RESUMABLE:
            raise ConfigurationError(
                f"Flow run {run.name!r} ({flow_run_id}) is {state}; only failed, crashed or cancelled runs resume."
            )
        if run.deployment_id is None:
            raise ConfigurationError(
                f"Flow run {run.name!r} did not come from a deployment; run its flow again."
            )
        deployment = await client.read_deployment(run.deployment_id)
        flow = await client.read_flow(deployment.flow_id)
        return f"{flow.name}/{deployment.name}", dict(run.parameters)


def resume_flow_run(flow_run_id: UUID, timeout: float = 3600) -> Any:
    """Start the resumed run, wait for it, and return it (its `state` says how it ended); ``timeout`` 0
    returns the new run as soon as it is created."""
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL

    # Prefect's client retries a server it has reached (aicml/retry.py); one it never reached, or one
    # that stays down, is reported by name and address.
    with reporting_unreachable("Prefect", PREFECT_API_URL.value() or "(no PREFECT_API_URL)", "resuming"):
        name, parameters = asyncio.run(_prepare(flow_run_id))
        return run_deployment(name, parameters=parameters, timeout=timeout, tags=[f"resumes:{flow_run_id}"])
