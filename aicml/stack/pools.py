"""Create work pools through the Prefect API (idempotently)."""

from __future__ import annotations

import sys
from typing import Any

from aicml.errors import StackError


def process_base_job_template() -> dict[str, Any]:
    """Prefect's process template with the flow-run command `aicml.stack.engine` (waits for the API first)."""
    from prefect.workers.process import ProcessWorker

    template: dict[str, Any] = ProcessWorker.get_default_base_job_template()
    template["variables"]["properties"]["command"]["default"] = f"{sys.executable} -m aicml.stack.engine"
    return template


def ensure_process_pool(api_url: str, name: str, concurrency: int | None = None) -> None:
    """Create process work pool ``name`` unless it exists (API auth from the current Prefect settings)."""
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.settings import PREFECT_API_AUTH_STRING

    template = process_base_job_template()
    with SyncPrefectClient(api_url, auth_string=PREFECT_API_AUTH_STRING.value()) as client:
        try:
            pool = client.read_work_pool(name)
            if pool.base_job_template != template:  # a pool made before the engine wrapper, or by Prefect
                client.update_work_pool(name, WorkPoolUpdate(base_job_template=template))
            return
        except ObjectNotFound:
            pass
        try:
            client.create_work_pool(
                WorkPoolCreate(
                    name=name, type="process", concurrency_limit=concurrency, base_job_template=template
                )
            )
        except ObjectAlreadyExists:
            return
        except Exception as exc:  # the API answers with httpx errors for anything else
            raise StackError(f"Cannot create work pool {name!r} at {api_url}: {exc}") from exc
