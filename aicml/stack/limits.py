"""Task concurrency limits by tag, created with the stack: scarce slots are never oversubscribed.

`training-slot` matches the namespace quota of 4 GPUs: at most four training tasks run at once,
however many pipelines run.
"""

from __future__ import annotations

import asyncio

DEFAULT_LIMITS = {"training-slot": 4}


async def _ensure(limits: dict[str, int]) -> None:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        for tag, limit in limits.items():
            await client.create_concurrency_limit(tag=tag, concurrency_limit=limit)  # upsert by tag


def ensure_concurrency_limits(api_url: str, limits: dict[str, int] | None = None) -> None:
    """Create or update one task concurrency limit per tag on the Prefect server at ``api_url``."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        asyncio.run(_ensure(limits or DEFAULT_LIMITS))
