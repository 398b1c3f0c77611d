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
            template = _template_for(spec)
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


def _template_for(spec: PoolSpec) -> dict[str, Any]:
    if spec.type == "kubernetes":
        return base_job_template(spec.name)  # type: ignore[arg-type]
    return process_base_job_template()


def _differences(template: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Which parts of a base job template differ: job_configuration keys and variables, by name."""
    changes = []
    for part in ("job_configuration",):
        want, have = template.get(part) or {}, current.get(part) or {}
        changes += [
            f"{part}.{key}" for key in sorted(set(want) | set(have)) if want.get(key) != have.get(key)
        ]
    want_vars = (template.get("variables") or {}).get("properties") or {}
    have_vars = (current.get("variables") or {}).get("properties") or {}
    for key in sorted(set(want_vars) | set(have_vars)):
        if key not in have_vars:
            changes.append(f"variable {key} (added)")
        elif key not in want_vars:
            changes.append(f"variable {key} (removed)")
        elif want_vars[key] != have_vars[key]:
            changes.append(f"variable {key}")
    if not changes and template != current:
        changes.append("base_job_template")
    return changes


@dataclass(frozen=True)
class PoolChange:
    """What `aicml pools apply` would do to one pool: ``create``, ``update`` (with ``changes``) or ``unchanged``."""

    name: str
    type: str
    action: str
    changes: tuple[str, ...] = ()


async def _plan(specs: list[PoolSpec]) -> list[PoolChange]:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    out = []
    async with get_client() as client:
        for spec in specs:
            template = _template_for(spec)
            try:
                pool = await client.read_work_pool(spec.name)
            except ObjectNotFound:
                out.append(PoolChange(spec.name, spec.type, "create"))
                continue
            changes = _differences(template, pool.base_job_template)
            if pool.concurrency_limit != spec.concurrency:
                changes.append(f"concurrency_limit {pool.concurrency_limit} -> {spec.concurrency}")
            if pool.type != spec.type:
                changes.append(f"type {pool.type} (Prefect cannot change a pool's type; delete it first)")
            out.append(PoolChange(spec.name, spec.type, "update" if changes else "unchanged", tuple(changes)))
    return out


def plan_pools(api_url: str, local_pool: str = "local", local_concurrency: int = 4) -> list[PoolChange]:
    """What `apply_pools` would do to each pool, read from the server; writes nothing."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        return asyncio.run(_plan(pool_specs(local_pool, local_concurrency)))
