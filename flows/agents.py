"""Batch agent coordination: one stored coordination graph over a file of inputs, chunk by chunk."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.futures import PrefectFuture, wait
from pydantic import BaseModel, Field

from aicml.agents.batch import batch_fingerprint, read_payloads
from aicml.agents.settings import AgentSettings
from aicml.stack.overrides import resolve_params
from tasks.agents import ChunkResult, coordinate_chunk, load_coordination
from tasks.context import settings


class AgentBatchParams(BaseModel):
    """Parameters of `agent-batch`; Prefect builds the deployment form from these."""

    coordination: str = Field(description="Name of the coordination graph stored in agent_db.")
    source: str = Field(description="JSON-lines file (or JSON array) of payload objects, one per input.")
    database_url: str | None = Field(
        default=None, description="agent_db URL; default AIC_AGENTS_DATABASE_URL, the k8s env, or SQLite."
    )
    output_dir: str | None = Field(
        default=None, description="Where replies go; default `<AIC_HOME>/agents/batches`."
    )
    chunk_size: int = Field(default=500, ge=1, le=100_000, description="Inputs per task.")
    concurrency: int = Field(default=32, ge=1, le=1024, description="Coordinations in flight per task.")
    timeout_ms: float | None = Field(default=None, gt=0, description="Deadline of each coordination.")


class AgentBatchResult(BaseModel):
    """Where the replies are, and how the coordinations ended."""

    fingerprint: str
    rows: int
    outcomes: dict[str, int]
    parts: list[str]


@flow(name="agent-batch", log_prints=False, persist_result=True)
def agent_batch(params: AgentBatchParams, overrides: dict[str, Any] | None = None) -> AgentBatchResult:
    """Load the graph, split the inputs into chunks, coordinate each chunk in a task, write JSON lines.

    Args:
        params: The batch's parameters (a deployment fills them from its preset).
        overrides: Fields of `params` to change for this run, by dotted path, e.g.
            {"chunk_size": 100} or {"source": "data/tickets.jsonl"}; every other field keeps its value.
            The result is validated as a whole: a key that names no field, or a value of the wrong
            type, fails the run with an error naming it.
    """
    params = resolve_params(params, overrides, AgentBatchParams)
    logger = get_run_logger()
    database_url = params.database_url or AgentSettings().resolved_database_url()
    coordination = load_coordination(database_url=database_url, name=params.coordination)
    payloads = read_payloads(params.source)
    fingerprint = batch_fingerprint(coordination, payloads)
    out = Path(params.output_dir) if params.output_dir else settings().root / "agents" / "batches"
    out = out / f"{coordination.name}-{fingerprint}"
    starts = range(0, len(payloads), params.chunk_size)

    def submit(start: int, refresh: bool = False) -> PrefectFuture[ChunkResult]:
        task = coordinate_chunk.with_options(refresh_cache=True) if refresh else coordinate_chunk
        return task.submit(
            database_url=database_url,
            coordination=coordination,
            payloads=payloads[start : start + params.chunk_size],
            out_path=str(out / f"part-{start // params.chunk_size:05d}.jsonl"),
            id_prefix=fingerprint,
            offset=start,
            concurrency=params.concurrency,
            timeout_ms=params.timeout_ms,
        )

    futures = [submit(start) for start in starts]
    # Let every chunk finish before raising for one that failed: their results persist for a resume.
    wait(futures)
    results = [f.result() for f in futures]
    # A chunk whose cached result points at a file that is gone is coordinated again.
    for i, start in enumerate(starts):
        if not Path(results[i].path).is_file():
            logger.warning("Chunk at %d: %s is missing; coordinating it again", start, results[i].path)
            results[i] = submit(start, refresh=True).result()
    outcomes: Counter[str] = Counter()
    for r in results:
        outcomes.update(r.outcomes)
    logger.info("agent-batch %s: %d inputs -> %s %s", coordination.name, len(payloads), out, dict(outcomes))
    return AgentBatchResult(
        fingerprint=fingerprint, rows=len(payloads), outcomes=dict(outcomes), parts=[r.path for r in results]
    )
