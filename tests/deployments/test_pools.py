"""`aicml pools apply` creates the pools from deployments/ and brings them back to the templates when run again."""

from __future__ import annotations

import asyncio

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolUpdate

from deployments.pools import apply_pools
from deployments.templates import base_job_template


def _pools() -> dict[str, object]:
    async def read() -> dict[str, object]:
        async with get_client() as client:
            return {p.name: p for p in await client.read_work_pools()}

    return asyncio.run(read())


def test_apply_creates_then_updates_the_pools(stack) -> None:
    first = dict(apply_pools(stack.settings.prefect_url, "local", 4))
    assert first["k8s-cpu"] in ("created", "updated") and first["k8s-gpu"] in ("created", "updated")
    pools = _pools()
    assert pools["k8s-gpu"].type == "kubernetes"
    assert pools["k8s-gpu"].base_job_template == base_job_template("k8s-gpu")
    assert pools["local"].concurrency_limit == 4

    async def drift() -> None:
        async with get_client() as client:
            await client.update_work_pool(
                "k8s-gpu", WorkPoolUpdate(base_job_template=base_job_template("k8s-cpu"))
            )

    asyncio.run(drift())
    assert dict(apply_pools(stack.settings.prefect_url, "local", 4))["k8s-gpu"] == "updated"
    assert _pools()["k8s-gpu"].base_job_template == base_job_template("k8s-gpu")
