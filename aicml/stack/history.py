"""Success rate of the last N runs of each deployment, for `aicml status` (the target is 95%)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

TERMINAL_OK = {"COMPLETED"}
TERMINAL_BAD = {"FAILED", "CRASHED"}


@dataclass(frozen=True)
class DeploymentHealth:
    deployment: str
    runs: int
    succeeded: int
    failed: int

    @property
    def success_rate(self) -> float | None:
        finished = self.succeeded + self.failed
        return self.succeeded / finished if finished else None


async def _health(last: int) -> list[DeploymentHealth]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    out = []
    async with get_client() as client:
        deployments = await client.read_deployments()
        flows = {f.id: f.name for f in await client.read_flows()}
        for deployment in deployments:
            runs = await client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
                sort=FlowRunSort.START_TIME_DESC,
                limit=last,
            )
            states = [r.state.type.value for r in runs if r.state is not None]
            out.append(
                DeploymentHealth(
                    deployment=f"{flows.get(deployment.flow_id, '?')}/{deployment.name}",
                    runs=len(runs),
                    succeeded=sum(s in TERMINAL_OK for s in states),
                    failed=sum(s in TERMINAL_BAD for s in states),
                )
            )
    return sorted(out, key=lambda h: h.deployment)


def deployment_health(api_url: str, last: int = 20) -> list[DeploymentHealth]:
    """Per deployment at ``api_url``: of its last ``last`` runs, how many completed, failed or crashed."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        return asyncio.run(_health(last))
