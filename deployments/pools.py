"""Create or update the work pools from the base job templates kept in this package (`aicml pools apply`)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aicml.stack.pools import process_base_job_template
from deployments.templates import POOLS, base_job_template


@dataclass(frozen=True)
class PoolSpec:
    name: str
    type: str
    concurrency: int | None


def pool_specs(local_pool: str = "local", local_concurrency: int = 4) -> list[PoolSpec]:
    return [
        PoolSpec(local_pool, "process", local_concurrency),
        *(PoolSpec(p, "kubernetes", None) for p in POOLS),
    ]


async def _apply(specs: list[PoolSpec]) -> list[tuple[str, str]]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound

    done = []
    async with get_client() as client:
        for spec in specs:
            template = (
                base_job_template(spec.name)  # type: ignore[arg-type]
                if spec.type == "kubernetes"
                else process_base_job_template()
            )
            try:
                await client.read_work_pool(spec.name)
            except ObjectNotFound:
                create = WorkPoolCreate(name=spec.name, type=spec.type, concurrency_limit=spec.concurrency)
                if template is not None:
                    create = WorkPoolCreate(
                        name=spec.name,
                        type=spec.type,
                        base_job_template=template,
                        concurrency_limit=spec.concurrency,
                    )
                await client.create_work_pool(create)
                done.append((spec.name, "created"))
                continue
            update = WorkPoolUpdate(concurrency_limit=spec.concurrency)
            if template is not None:
                update = WorkPoolUpdate(base_job_template=template, concurrency_limit=spec.concurrency)
            await client.update_work_pool(spec.name, update)
            done.append((spec.name, "updated"))
    return done


def apply_pools(api_url: str, local_pool: str = "local", local_concurrency: int = 4) -> list[tuple[str, str]]:
    """Create missing pools and bring existing ones to the templates here; returns (pool, what happened)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        return asyncio.run(_apply(pool_specs(local_pool, local_concurrency)))
