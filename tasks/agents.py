"""Agent tasks: load a coordination graph from agent_db and run it over a chunk of inputs (batch work).

Coarse on purpose: one task per chunk of hundreds of inputs, never per request. The request/response
path is the router behind ``aicml agents serve``; it never goes through a flow run.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE
from pydantic import BaseModel

from aicml.agents.batch import coordinate_many, write_replies
from aicml.agents.graph import Coordination
from aicml.agents.service import AgentService
from aicml.usage.tasks import metered
from tasks.policies import fail_if_injected, retry_unless_aic_error


class ChunkResult(BaseModel):
    """Where a chunk's replies were written and how they ended."""

    path: str
    rows: int
    outcomes: dict[str, int]


@metered
@task(name="load-coordination", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_unless_aic_error,
      cache_policy=NO_CACHE, timeout_seconds=120)  # fmt: skip
def load_coordination(database_url: str, name: str) -> Coordination:
    """The stored graph ``name`` from agent_db."""
    service = AgentService.from_url(database_url)
    try:
        return service.store.graph(name)
    finally:
        service.close()


# A chunk's result is persisted under a key from its inputs (graph, payloads, where it writes) and this
# code: a resumed or re-run batch skips the chunks that finished and runs only the others.
CHUNK_CACHE = TASK_SOURCE + INPUTS - "database_url" - "concurrency"


@metered
@task(name="coordinate-chunk", task_run_name="coordinate-chunk-at-{offset}", retries=1, retry_delay_seconds=[5],
      retry_condition_fn=retry_unless_aic_error, cache_policy=CHUNK_CACHE, persist_result=True,
      timeout_seconds=3600)  # fmt: skip
def coordinate_chunk(
    database_url: str,
    coordination: Coordination,
    payloads: list[dict[str, Any]],
    out_path: str,
    id_prefix: str,
    offset: int,
    concurrency: int = 32,
    timeout_ms: float | None = None,
) -> ChunkResult:
    """Run ``coordination`` over ``payloads`` and write the replies to ``out_path`` (atomic, idempotent).

    The chunk has its own service: its connections are opened and closed here."""
    fail_if_injected(f"coordinate-chunk-at-{offset}")
    service = AgentService.from_url(database_url)
    try:
        replies = asyncio.run(
            coordinate_many(
                service.router,
                coordination,
                payloads,
                id_prefix=id_prefix,
                offset=offset,
                concurrency=concurrency,
                timeout_ms=timeout_ms,
            )
        )
    finally:
        service.close()
    result = ChunkResult(path=out_path, rows=len(replies), outcomes=write_replies(replies, Path(out_path)))
    get_run_logger().info("Chunk at %d: %d rows -> %s %s", offset, result.rows, out_path, result.outcomes)
    return result
