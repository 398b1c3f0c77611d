"""The Kubernetes work pools (`k8s-gpu`, `k8s-cpu`): their base job templates, kept as JSON in the project's
``deployments/`` folder, and `aicml pools apply`, which creates or updates every pool from them.

Create a pool from one by hand with
``prefect work-pool create k8s-gpu --type kubernetes --base-job-template deployments/k8s_gpu.json``
(or ``--overwrite`` to update it). Every variable is referenced in ``job_configuration``; Prefect
silently drops a variable that is not.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from aicml.stack.pools import process_base_job_template
from aicml.stack.prefect_yaml import DEPLOYMENTS_DIR

Pool = Literal["k8s-gpu", "k8s-cpu"]
POOLS: tuple[Pool, ...] = ("k8s-gpu", "k8s-cpu")
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def template_path(pool: Pool, directory: Path = DEPLOYMENTS_DIR) -> Path:
    return directory / f"{pool.replace('-', '_')}.json"


def base_job_template(pool: Pool, directory: Path = DEPLOYMENTS_DIR) -> dict[str, Any]:
    """The base job template of ``pool`` (``job_configuration`` + ``variables``), freshly loaded."""
    if pool not in POOLS:
        raise ValueError(f"No job template for pool {pool!r}; known pools are {', '.join(POOLS)}.")
    template: dict[str, Any] = json.loads(template_path(pool, directory).read_text())
    return template


def referenced_variables(template: dict[str, Any]) -> set[str]:
    """Names used as ``{{ name }}`` anywhere in the template's ``job_configuration``."""
    return set(_PLACEHOLDER.findall(json.dumps(template["job_configuration"])))


def unreferenced_variables(template: dict[str, Any]) -> set[str]:
    """Variables that ``job_configuration`` never uses (Prefect would drop them without a word)."""
    return set(template["variables"]["properties"]) - referenced_variables(template)


# --- `aicml pools apply` ------------------------------------------------------------------------------


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
                await client.create_work_pool(
                    WorkPoolCreate(
                        name=spec.name,
                        type=spec.type,
                        base_job_template=template,
                        concurrency_limit=spec.concurrency,
                    )
                )
                done.append((spec.name, "created"))
                continue
            await client.update_work_pool(
                spec.name, WorkPoolUpdate(base_job_template=template, concurrency_limit=spec.concurrency)
            )
            done.append((spec.name, "updated"))
    return done


def apply_pools(api_url: str, local_pool: str = "local", local_concurrency: int = 4) -> list[tuple[str, str]]:
    """Create missing pools and bring existing ones to the templates; returns (pool, what happened)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        return asyncio.run(_apply(pool_specs(local_pool, local_concurrency)))
