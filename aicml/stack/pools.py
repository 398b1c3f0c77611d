"""Create work pools through the Prefect API (idempotently)."""

from __future__ import annotations

from aicml.errors import StackError


def ensure_process_pool(api_url: str, name: str, concurrency: int | None = None) -> None:
    """Create process work pool ``name`` unless it exists (API auth from the current Prefect settings)."""
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.settings import PREFECT_API_AUTH_STRING

    with SyncPrefectClient(api_url, auth_string=PREFECT_API_AUTH_STRING.value()) as client:
        try:
            client.read_work_pool(name)
            return
        except ObjectNotFound:
            pass
        try:
            client.create_work_pool(WorkPoolCreate(name=name, type="process", concurrency_limit=concurrency))
        except ObjectAlreadyExists:
            return
        except Exception as exc:  # the API answers with httpx errors for anything else
            raise StackError(f"Cannot create work pool {name!r} at {api_url}: {exc}") from exc
